//! The frame codec's tests: both decoders, the encoder, and that no input makes them panic.

use super::text::{decode_canonical, decode_general};
use super::*;
use crate::proto::message::ReplyStatus;
use proptest::prelude::*;

fn text(s: &'static str) -> Result<Inbound, DecodeError> {
    decode_text(&Bytes::from_static(s.as_bytes()))
}

fn message(inbound: Inbound) -> Message {
    match inbound {
        Inbound::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn reply(inbound: Inbound) -> ReplyMessage {
    match inbound {
        Inbound::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Whether `part` lies inside `whole`'s memory.
fn within(whole: &[u8], part: &[u8]) -> bool {
    let range = whole.as_ptr_range();
    range.contains(&part.as_ptr())
}

#[test]
fn small_payloads_are_copied_out_of_the_frame_and_big_ones_are_slices() {
    for (len, sliced) in [
        (10, false),
        (COPY_LIMIT - 20, false),
        (COPY_LIMIT + 1, true),
    ] {
        let body = format!(r#"{{"b":"{}"}}"#, "x".repeat(len));
        for text in [
            format!(r#"[null,null,"t","e",{body}]"#),
            format!(r#"["1","2","t","phx_reply",{{"response":{body},"status":"ok"}}]"#),
            // Not canonical (spaces): the general decoder.
            format!(r#"[null, null, "t", "e", {body}]"#),
        ] {
            let frame = Bytes::from(text);
            let payload = match decode_text(&frame).unwrap() {
                Inbound::Message(m) => m.payload,
                Inbound::Reply(r) => r.reply.response().clone(),
            };
            assert_eq!(payload.as_json(), Some(body.as_str()));
            assert_eq!(within(&frame, payload.as_bytes()), sliced, "{len} bytes");
        }
        let mut binary = vec![KIND_BROADCAST, 1, 1];
        binary.extend_from_slice(b"te");
        binary.extend_from_slice(body.as_bytes());
        let frame = Bytes::from(binary);
        let payload = message(decode_binary(&frame).unwrap()).payload;
        assert_eq!(payload.as_binary().map(|b| b.len()), Some(body.len()));
        assert_eq!(
            within(&frame, payload.as_bytes()),
            sliced,
            "binary, {len} bytes"
        );
    }
}

#[test]
fn decodes_every_ref_type() {
    let m = message(text(r#"["2",null,"echo:1","pushed",{"p":1}]"#).unwrap());
    assert_eq!(m.join_ref, Some(Ref::new(2)));
    assert_eq!(m.msg_ref, None);
    assert_eq!(m.payload.as_json(), Some(r#"{"p":1}"#));
    let m = message(text(r#"[5,6,"t","e",null]"#).unwrap());
    assert_eq!(
        (m.join_ref, m.msg_ref),
        (Some(Ref::new(5)), Some(Ref::new(6)))
    );
    let m = message(text(r#"[null,null,"t","e",[1,2]]"#).unwrap());
    assert!(m.is_broadcast());
    let m = message(text(r#"["x","",  "t", "e" , "s"]"#).unwrap());
    assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
    assert_eq!(m.payload.as_json(), Some(r#""s""#));
}

#[test]
fn rejects_bad_refs_and_shapes() {
    for bad in [
        r#"[-1,null,"t","e",{}]"#,
        r#"[1.5,null,"t","e",{}]"#,
        r#"[{},null,"t","e",{}]"#,
        r#"[null,null,"t","e"]"#,
        r#"[null,null,"t","e",{},1]"#,
        r#"[null,null,1,"e",{}]"#,
        r#"{"topic":"t"}"#,
        r#"[null,null,"t","e",{}"#,
        "",
    ] {
        assert!(matches!(text(bad), Err(DecodeError::Json(_))), "{bad}");
    }
}

#[test]
fn decodes_replies_in_one_pass_with_key_order_free() {
    let r = reply(
        text(r#"[null,"14","nope:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#)
            .unwrap(),
    );
    assert_eq!(r.join_ref, None);
    assert_eq!(r.msg_ref, Some(Ref::new(14)));
    assert_eq!(r.reply.status(), &ReplyStatus::Error);
    assert_eq!(r.reply.reason().as_deref(), Some("unmatched topic"));
    let r =
        reply(text(r#"[null,"1","phoenix","phx_reply",{"status":"ok","response":{}}]"#).unwrap());
    assert!(r.reply.is_ok());
    let r = reply(text(r#"[null,"1","t","phx_reply",{"status":"ok"}]"#).unwrap());
    assert_eq!(r.reply.response(), &Payload::null());
    for bad in [
        r#"[null,"1","t","phx_reply",{"response":{}}]"#,
        r#"[null,"1","t","phx_reply",[]]"#,
        r#"[null,"1","t","phx_reply",{"status":1}]"#,
    ] {
        assert!(matches!(text(bad), Err(DecodeError::Reply(_))), "{bad}");
    }
}

#[test]
fn escaped_topics_and_events_decode() {
    let m = message(text(r#"[null,null,"a\"b","\u00e9v",{}]"#).unwrap());
    assert_eq!(m.topic, "a\"b");
    assert_eq!(m.event, "év");
}

#[test]
fn encodes_text_frames_as_phoenix_expects() {
    let out = encode(
        None,
        Some(&Ref::new(1)),
        "phoenix",
        "heartbeat",
        &Payload::empty(),
    )
    .unwrap();
    assert_eq!(
        out,
        OutFrame::Text(r#"[null,"1","phoenix","heartbeat",{}]"#.into())
    );
    let out = encode(
        Some(&Ref::new(2)),
        Some(&Ref::new(2)),
        "a\"b",
        "e\n",
        &Payload::null(),
    )
    .unwrap();
    assert_eq!(out, OutFrame::Text(r#"["2","2","a\"b","e\n",null]"#.into()));
}

#[test]
fn binary_push_matches_the_wire_capture() {
    // >> 00 01 02 06 04 "2" "11" "echo:1" "echo" 01 02 ff
    let out = encode(
        Some(&Ref::new(2)),
        Some(&Ref::new(11)),
        "echo:1",
        "echo",
        &Payload::binary(vec![1u8, 2, 0xff]),
    )
    .unwrap();
    let mut expected = vec![0u8, 1, 2, 6, 4];
    expected.extend_from_slice(b"211echo:1echo");
    expected.extend_from_slice(&[1, 2, 0xff]);
    assert_eq!(out.as_bytes(), &expected[..]);
    let long = "t".repeat(256);
    assert_eq!(
        encode(None, None, &long, "e", &Payload::binary(vec![])),
        Err(EncodeError::FieldTooLong {
            field: "topic",
            len: 256
        })
    );
    assert!(check_binary_fields(&long, "e").is_err());
    assert!(check_binary_fields("t", "e").is_ok());
}

#[test]
fn decodes_the_three_server_binary_kinds() {
    // << 01 01 02 06 02 "2" "11" "echo:1" "ok" 01 02 ff
    let mut frame = vec![1u8, 1, 2, 6, 2];
    frame.extend_from_slice(b"211echo:1ok");
    frame.extend_from_slice(&[1, 2, 0xff]);
    let r = reply(decode_binary(&Bytes::from(frame)).unwrap());
    assert_eq!(
        (r.join_ref, r.msg_ref),
        (Some(Ref::new(2)), Some(Ref::new(11)))
    );
    assert_eq!(r.topic, "echo:1");
    assert!(r.reply.is_ok());
    assert_eq!(r.reply.response().as_bytes(), &[1, 2, 0xff]);

    let mut frame = vec![0u8, 1, 6, 13];
    frame.extend_from_slice(b"2echo:1pushed_binaryhi");
    let m = message(decode_binary(&Bytes::from(frame)).unwrap());
    assert_eq!(m.join_ref, Some(Ref::new(2)));
    assert_eq!(m.event, "pushed_binary");
    assert_eq!(m.payload.as_binary().map(|b| &b[..]), Some(&b"hi"[..]));

    let mut frame = vec![2u8, 1, 1];
    frame.extend_from_slice(b"te");
    let m = message(decode_binary(&Bytes::from(frame)).unwrap());
    assert!(m.is_broadcast());
    assert!(m.payload.as_binary().is_some_and(|b| b.is_empty()));

    let mut frame = vec![0u8, 0, 1, 1];
    frame.extend_from_slice(b"te");
    assert_eq!(
        message(decode_binary(&Bytes::from(frame)).unwrap()).join_ref,
        None
    );
}

#[test]
fn binary_errors() {
    let d = |v: Vec<u8>| decode_binary(&Bytes::from(v));
    assert_eq!(d(vec![]), Err(DecodeError::EmptyBinary));
    assert_eq!(d(vec![9, 0, 0]), Err(DecodeError::UnknownKind(9)));
    assert_eq!(d(vec![2, 5]), Err(DecodeError::Truncated));
    assert_eq!(d(vec![2, 5, 0, b'a']), Err(DecodeError::Truncated));
    assert_eq!(d(vec![2, 1, 0, 0xff]), Err(DecodeError::NotUtf8("topic")));
}

fn same(a: &FrameView<'_>, b: &FrameView<'_>) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn the_canonical_path_takes_phoenix_frames_and_leaves_the_rest() {
    for canonical in [
        r#"[null,"1","phoenix","phx_reply",{"response":{},"status":"ok"}]"#,
        r#"["2","3","echo:1","phx_reply",{"response":{"a":[1,"x"]},"status":"error"}]"#,
        r#"[2,3,"echo:1","new_msg",{"body":"é"}]"#,
        r#"[null,null,"t","e",null]"#,
    ] {
        let frame = Bytes::from_static(canonical.as_bytes());
        let fast = decode_canonical(&frame).expect(canonical);
        assert!(same(&fast, &decode_general(&frame).unwrap()), "{canonical}");
        let known = decode_text_view(&frame, Some(canonical)).expect(canonical);
        assert!(same(&fast, &known), "{canonical}");
    }
    for other in [
        r#"[ null,"1","t","e",{}]"#,
        r#"[null,"1","t\u0041","e",{}]"#,
        r#"[null,"x","t","e",{}]"#,
        r#"[null,-1,"t","e",{}]"#,
        r#"[null,"1","t","phx_reply",{"status":"ok","response":{}}]"#,
        r#"[null,"1","t","phx_reply",{"response":1,"x":2,"status":"ok"}]"#,
        r#"[null,"1","t","e",{]"#,
        r#"[null,"1","t","e",{}] "#,
        r#"[null,"99999999999999999999","t","e",{}]"#,
    ] {
        let frame = Bytes::from_static(other.as_bytes());
        assert!(decode_canonical(&frame).is_none(), "{other}");
    }
}

#[test]
fn refs_read_back_as_written_and_payloads_that_to_value_refuses_are_refused() {
    // A leading zero is not a number: `"007"` is a text ref, and never matches ref 7.
    let m = message(text(r#"["007","0","t","e",{}]"#).unwrap());
    assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
    assert_eq!(m.join_ref.map(|r| r.to_string()).as_deref(), Some("007"));
    assert_eq!(m.msg_ref, Some(Ref::new(0)));
    let r = reply(text(r#"[null,"01","t","phx_reply",{"response":{},"status":"ok"}]"#).unwrap());
    assert_eq!(r.msg_ref.as_ref().and_then(Ref::as_u64), None);
    let mut binary = vec![0u8, 2, 1, 1];
    binary.extend_from_slice(b"07te");
    let m = message(decode_binary(&Bytes::from(binary)).unwrap());
    assert_eq!(m.join_ref.as_ref().and_then(Ref::as_u64), None);
    // Unquoted, it is not JSON.
    assert!(matches!(
        text(r#"[007,null,"t","e",{}]"#),
        Err(DecodeError::Json(_))
    ));
    // A lone surrogate escape is no character: `to_value` could not read it back.
    for bad in [
        r#"[null,null,"t","e","\ud800"]"#,
        r#"[null,null,"t","e",{"a":["\udc00"]}]"#,
        r#"[null,null,"t","e",{"\ud800x":1}]"#,
    ] {
        let error = text(bad).unwrap_err();
        assert!(
            matches!(&error, DecodeError::Json(e) if e.contains("surrogate")),
            "{bad}: {error}"
        );
    }
    assert!(matches!(
        text(r#"[null,"1","t","phx_reply",{"response":"\ud800","status":"ok"}]"#),
        Err(DecodeError::Reply(_))
    ));
    let m = message(text(r#"[null,null,"t","e","\ud83d\ude00"]"#).unwrap());
    assert_eq!(m.payload.to_value().unwrap(), "😀");
}

proptest! {
    /// Whatever the decoder accepts, its refs are written back as they were read and its
    /// payload reads back with `to_value`.
    #[test]
    fn decoded_refs_round_trip_and_payloads_read_back(
        join in "(null|\"[0-9]{1,3}\"|[0-9]{1,3})", r in "(null|\"0*[0-9]{1,3}\"|0*[0-9]{1,3})",
        reply in any::<bool>(),
        body in "(\\{|\\}|\\[|\\]|\"a\"|:|,|1|\"\\\\u[dD][0-9a-fA-F]{3}\"|\"\\\\ud83d\\\\ude00\")*",
    ) {
        let text = if reply {
            format!(r#"[{join},{r},"t","phx_reply",{{"response":{body},"status":"ok"}}]"#)
        } else {
            format!(r#"[{join},{r},"t","ev",{body}]"#)
        };
        let Ok(inbound) = decode_text(&Bytes::from(text.clone())) else {
            return Ok(());
        };
        let (join_ref, msg_ref, payload) = match inbound {
            Inbound::Message(m) => (m.join_ref, m.msg_ref, m.payload),
            Inbound::Reply(r) => (r.join_ref, r.msg_ref, r.reply.into_response()),
        };
        let written = |v: Option<Ref>| v.map_or("null".to_owned(), |r| r.to_string());
        prop_assert_eq!(written(join_ref), join.trim_matches('"'), "{}", text);
        prop_assert_eq!(written(msg_ref), r.trim_matches('"'), "{}", text);
        prop_assert!(payload.to_value().is_ok(), "{}", text);
    }

    #[test]
    fn both_paths_agree_on_every_frame_the_canonical_one_takes(
        join in proptest::option::of(0u64..1000), r in proptest::option::of(0u64..1000),
        quoted in any::<bool>(), topic in "[a-z:\\\\\"é]{0,8}", reply in any::<bool>(),
        status in "(ok|error|[a-z\\\\\"]{0,4})", body in "(\\{|\\}|\\[|\\]|\"a\"|:|,|1|null|\"é\\\\n\"| |\n)*",
    ) {
        let refs = |v: Option<u64>| v.map_or("null".to_owned(), |n| if quoted { format!("\"{n}\"") } else { n.to_string() });
        let text = if reply {
            format!(r#"[{},{},"{topic}","phx_reply",{{"response":{body},"status":"{status}"}}]"#, refs(join), refs(r))
        } else {
            format!(r#"[{},{},"{topic}","ev",{body}]"#, refs(join), refs(r))
        };
        let known = crate::transport::Utf8Bytes::from(text);
        let frame = Bytes::from(known.clone());
        if let Some(fast) = decode_canonical(&frame) {
            let general = decode_general(&frame);
            prop_assert!(general.as_ref().is_ok_and(|g| same(&fast, g)), "{:?} vs {:?}", fast, general);
        }
        // A frame whose text is known decodes as one that is checked.
        let checked = decode_text_view(&frame, None);
        let unchecked = decode_text_view(&frame, Some(known.as_str()));
        match (&checked, &unchecked) {
            (Ok(a), Ok(b)) => prop_assert!(same(a, b), "{:?} vs {:?}", a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "{:?} vs {:?}", checked, unchecked),
        }
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let bytes = Bytes::from(bytes);
        let _ = decode_text(&bytes);
        let _ = decode_binary(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_near_valid_frames(
        prefix in "\\[(null|\"[0-9]{0,3}\"|[0-9]{1,3}|-1),(null|\"[0-9a-z]{0,3}\"|[0-9]{1,3}),\"[a-z:\\\\\"]{0,6}\",\"(phx_reply|ev)\",",
        tail in "(\\{|\\}|\\[|\\]|\"status\"|\"response\"|:|,|\"ok\"|1|null|\\\\u00){0,8}",
    ) {
        let bytes = Bytes::from(format!("{prefix}{tail}"));
        let _ = decode_text(&bytes);
    }

    #[test]
    fn binary_kinds_never_panic(kind in 0u8..3, lens in proptest::collection::vec(any::<u8>(), 0..5),
                                body in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut frame = vec![kind];
        frame.extend(lens);
        frame.extend(body);
        let _ = decode_binary(&Bytes::from(frame));
    }

    #[test]
    fn text_encode_decode_round_trip(join in proptest::option::of(any::<u64>()), r in proptest::option::of(any::<u64>()),
                                     topic in ".{0,20}", event in "[^\u{0}]{0,12}", n in any::<i64>()) {
        prop_assume!(event != Event::REPLY);
        let payload = Payload::json(&serde_json::json!({"n": n, "s": topic})).unwrap();
        let join = join.map(Ref::new);
        let r = r.map(Ref::new);
        let out = encode(join.as_ref(), r.as_ref(), &topic, &event, &payload).unwrap();
        let OutFrame::Text(s) = out else { panic!("expected text") };
        let m = message(decode_text(&Bytes::from(s)).unwrap());
        prop_assert_eq!(m.join_ref, join);
        prop_assert_eq!(m.msg_ref, r);
        prop_assert_eq!(m.topic.as_str(), topic.as_str());
        prop_assert_eq!(m.event.as_str(), event.as_str());
        prop_assert_eq!(m.payload.to_value().unwrap(), payload.to_value().unwrap());
    }
}

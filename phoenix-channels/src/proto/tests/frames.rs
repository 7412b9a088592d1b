//! Inbound frames: malformed ones, binary ones, and the tap.

use super::*;

#[test]
fn malformed_frames_are_reported_and_change_nothing() {
    let mut h = Harness::new();
    h.joined(A, "t");
    h.server("not json");
    h.core.handle_binary(h.now, Bytes::from_static(&[7, 0]));
    let out = h.take();
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Malformed(_)))
            .count(),
        2
    );
    assert_eq!(h.core.channel_state(A), Some(ChannelState::Joined));
}

#[test]
fn binary_replies_and_pushes_reach_the_channel() {
    let mut h = Harness::new();
    h.joined(A, "echo:1");
    h.core.push(
        h.now,
        A,
        PushRequest::new("echo".into(), Payload::binary(vec![1u8, 2, 255]), ms(1000)),
        Some(1),
    );
    let out = h.take();
    let Some(Output::Transmit(OutFrame::Binary(frame))) = out.first() else {
        panic!("{out:?}")
    };
    let mut expected = vec![0u8, 1, 1, 6, 4];
    expected.extend_from_slice(b"12echo:1echo");
    expected.extend_from_slice(&[1, 2, 255]);
    assert_eq!(&frame[..], &expected[..]);
    let mut reply = vec![1u8, 1, 1, 6, 2];
    reply.extend_from_slice(b"12echo:1ok");
    reply.extend_from_slice(&[1, 2, 255]);
    h.core.handle_binary(h.now, Bytes::from(reply));
    let done = h.done();
    assert_eq!(
        done[0]
            .1
            .as_ref()
            .unwrap()
            .response()
            .as_binary()
            .map(|b| b.to_vec()),
        Some(vec![1, 2, 255])
    );
    let mut push = vec![0u8, 1, 6, 13];
    push.extend_from_slice(b"1echo:1pushed_binaryhi");
    h.core.handle_binary(h.now, Bytes::from(push));
    let events = h.channel_events(A);
    assert!(
        matches!(&events[..], [ChannelEvent::Message(m)] if m.payload.as_binary().is_some_and(|b| &b[..] == b"hi"))
    );
}

#[test]
fn the_tap_sees_every_decoded_frame() {
    let mut h = Harness::new();
    h.core.set_tap(true);
    h.server(r#"[null,null,"nobody","hello",{}]"#);
    h.server(&ok_reply(1, 77, "nobody", "{}"));
    let taps = h
        .take()
        .into_iter()
        .filter(|o| matches!(o, Output::Tap(_)))
        .count();
    assert_eq!(taps, 2);
}

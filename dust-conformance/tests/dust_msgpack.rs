//! The Dust store channel over MessagePack (vsn 3.0.0): the wire, and the value semantics
//! measured on the real server (bins, integer and boolean keys, timestamps, invalid UTF-8).

mod common;

use common::dust::{Dust, StoreClient, dust, sync_url};
use common::msgpack::{self, frame, get, json, map};
use common::{Client, refused_status};
use rmpv::Value as Mp;
use serde_json::json;

const TOPIC: &str = "store:acme/app";

/// A raw MessagePack store client.
struct MpStore {
    c: Client,
    join_ref: String,
    next: u64,
}

impl MpStore {
    async fn joined(d: &Dust, device: &str, last_seq: u64) -> (MpStore, Vec<Vec<Mp>>) {
        let c = Client::connect(&msgpack::sync_url(&d.server, "dust_tok_dev", device)).await;
        let mut s = MpStore {
            c,
            join_ref: "1".into(),
            next: 1,
        };
        s.c.send_mp(frame(
            Mp::from("1"),
            Mp::from("1"),
            TOPIC,
            "phx_join",
            map(&[("last_store_seq", Mp::from(last_seq))]),
        ))
        .await;
        let reply = s.c.recv_mp().await;
        assert_eq!(json(get(&reply[4], "status")), "ok", "{}", json(&reply[4]));
        let mut pushed = Vec::new();
        loop {
            let f = s.c.recv_mp().await;
            if f[3] == Mp::from("catch_up_complete") {
                return (s, pushed);
            }
            pushed.push(f);
        }
    }

    async fn push(&mut self, event: &str, payload: Mp) -> String {
        self.next += 1;
        let r = self.next.to_string();
        self.c
            .send_mp(frame(
                Mp::from(self.join_ref.as_str()),
                Mp::from(r.as_str()),
                TOPIC,
                event,
                payload,
            ))
            .await;
        r
    }

    /// The next frame: a live event `[nil, nil, topic, "event", payload]`; its payload.
    async fn event(&mut self) -> Mp {
        let f = self.c.recv_mp().await;
        assert_eq!(
            (&f[0], &f[1], &f[3]),
            (&Mp::Nil, &Mp::Nil, &Mp::from("event"))
        );
        f[4].clone()
    }

    /// The next frame: the reply to `r`; its `{status, response}`.
    async fn reply_to(&mut self, r: &str) -> Mp {
        let f = self.c.recv_mp().await;
        assert_eq!((&f[1], &f[3]), (&Mp::from(r), &Mp::from("phx_reply")));
        f[4].clone()
    }

    async fn set(&mut self, key: &str, value: Mp, op_id: &str) -> (Mp, Mp) {
        let r = self
            .push(
                "write",
                map(&[
                    ("op", Mp::from("set")),
                    ("path", Mp::from(key)),
                    ("path_segments", Mp::Array(vec![Mp::from(key)])),
                    ("value", value),
                    ("client_op_id", Mp::from(op_id)),
                ]),
            )
            .await;
        let event = self.event().await;
        (event, self.reply_to(&r).await)
    }
}

/// A timestamp ext in the 64-bit form.
fn timestamp64(seconds: u64, nanos: u64) -> Mp {
    Mp::Ext(-1, ((nanos << 34) | seconds).to_be_bytes().to_vec())
}

#[tokio::test]
async fn only_3_0_0_selects_messagepack_and_2_0_5_is_json() {
    let d = dust().await;
    let query = "&token=dust_tok_dev&device_id=d&capver=3";
    for vsn in ["3.0.1", "3.1.0", "2.1.0"] {
        let url = format!("{}/websocket?vsn={vsn}{query}", d.server.url("/ws/sync"));
        assert_eq!(refused_status(&url).await, 403, "vsn {vsn}");
    }
    let url = sync_url(&d.server, "dust_tok_dev", "d").replace("vsn=2.0.0", "vsn=2.0.5");
    let mut json_client = StoreClient::from_client(Client::connect(&url).await, TOPIC);
    assert_eq!(json_client.join(json!(0)).await["store_seq"], 0);
}

#[tokio::test]
async fn join_write_event_and_catch_up_travel_as_messagepack() {
    let d = dust().await;
    let (mut a, pushed) = MpStore::joined(&d, "dev_a", 0).await;
    assert!(pushed.is_empty());
    let (event, reply) = a.set("k", map(&[("t", Mp::from(1))]), "op_1").await;
    assert_eq!(
        json(&event),
        json!({"store_seq": 1, "op": "set", "path": "k", "path_segments": ["k"],
               "value": {"t": 1}, "device_id": "dev_a", "client_op_id": "op_1"})
    );
    assert_eq!(
        json(&reply),
        json!({"status": "ok", "response": {"store_seq": 1}})
    );
    a.set("n", Mp::from(2), "op_2").await;
    let (_b, pushed) = MpStore::joined(&d, "dev_b", 1).await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(json(get(&pushed[0][4], "value")), json!(2));
    assert_eq!(json(get(&pushed[0][4], "store_seq")), json!(2));
}

#[tokio::test]
async fn bins_are_strings_and_invalid_utf8_is_refused_without_a_seq() {
    let d = dust().await;
    let (mut a, _) = MpStore::joined(&d, "dev_a", 0).await;
    let (event, _) = a.set("b", Mp::Binary(b"hi".to_vec()), "1").await;
    assert_eq!(*get(&event, "value"), Mp::from("hi"));
    let r = a
        .push(
            "write",
            map(&[
                ("op", Mp::from("set")),
                ("path", Mp::from("x")),
                ("value", Mp::Binary(vec![b'a', 0xff])),
                ("client_op_id", Mp::from("2")),
            ]),
        )
        .await;
    let reply = a.reply_to(&r).await;
    assert_eq!(json(get(&reply, "status")), "error");
    assert_eq!(
        json(get(get(&reply, "response"), "reason")),
        json!("%Jason.EncodeError{message: \"invalid byte 0xFF in <<97, 255>>\"}")
    );
    let (_, reply) = a.set("y", Mp::from(1), "3").await;
    assert_eq!(json(get(&reply, "response")), json!({"store_seq": 2}));
}

#[tokio::test]
async fn integer_and_boolean_keys_live_as_sent_strings_for_json_and_in_catch_up() {
    let d = dust().await;
    let (mut a, _) = MpStore::joined(&d, "dev_a", 0).await;
    let mut j = StoreClient::connect(&d.server, "dust_tok_dev", "dev_j", TOPIC).await;
    j.join_caught_up(json!(0)).await;
    let value = Mp::Map(vec![
        (Mp::from(1), Mp::from("one")),
        (Mp::Boolean(true), Mp::from(2)),
    ]);
    let (event, _) = a.set("m", value.clone(), "1").await;
    assert_eq!(*get(&event, "value"), value);
    assert_eq!(j.event().await["value"], json!({"1": "one", "true": 2}));
    // The op is stored as JSON: every catch-up has string keys.
    let (_c, pushed) = MpStore::joined(&d, "dev_c", 0).await;
    assert_eq!(
        *get(&pushed[0][4], "value"),
        Mp::Map(vec![
            (Mp::from("1"), Mp::from("one")),
            (Mp::from("true"), Mp::from(2)),
        ])
    );
}

#[tokio::test]
async fn timestamps_are_datetimes_truncated_to_microseconds() {
    let d = dust().await;
    let (mut a, _) = MpStore::joined(&d, "dev_a", 0).await;
    let mut j = StoreClient::connect(&d.server, "dust_tok_dev", "dev_j", TOPIC).await;
    j.join_caught_up(json!(0)).await;
    let (event, _) = a
        .set("t", timestamp64(1_700_000_000, 123_456_789), "1")
        .await;
    assert_eq!(
        *get(&event, "value"),
        timestamp64(1_700_000_000, 123_456_000)
    );
    let iso = "2023-11-14T22:13:20.123456Z";
    assert_eq!(j.event().await["value"], iso);
    // Stored in its `datetime` envelope: the op log keeps it as the writer saw it.
    let ops = common::within("ops", d.control.ops("acme/app"))
        .await
        .unwrap();
    assert_eq!(ops[0].value, json!({"_typed": iso, "_type": "datetime"}));
    // A JSON catch-up gets the ISO-8601 text.
    let mut late = StoreClient::connect(&d.server, "dust_tok_dev", "dev_l", TOPIC).await;
    let (events, _) = late.join_caught_up(json!(0)).await;
    assert_eq!(events[0][4]["value"], iso);
    // A MessagePack catch-up gets a timestamp back (the stored envelope unwraps to a DateTime);
    // nested in a map, a timestamp is the ISO-8601 text in the op, as Jason wrote it.
    a.set("n", map(&[("at", timestamp64(1_700_000_000, 5_000))]), "2")
        .await;
    let (_c, pushed) = MpStore::joined(&d, "dev_m", 0).await;
    assert_eq!(
        *get(&pushed[0][4], "value"),
        timestamp64(1_700_000_000, 123_456_000)
    );
    assert_eq!(
        json(get(&pushed[1][4], "value")),
        json!({"at": "2023-11-14T22:13:20.000005Z"})
    );
}

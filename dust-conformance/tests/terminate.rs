//! `Channel::terminate`: called exactly once, with the right reason, however a joined channel
//! ends (leave, stop, crash, panic, the crash and close controls, a duplicate join, the
//! connection closed by either side or dropped, the server stopping), and never for a refused
//! join.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use common::{Client, ok_reply, reply, server_with, within};
use dust_conformance::channel::{Channel, ChannelContext, Handled, TerminateReason};
use dust_conformance::{ConnectDecision, Payload, Server, ServerConfig, SocketConfig};
use serde_json::{Value, json};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Joined(u64),
    Terminated(u64, TerminateReason),
}

/// Records its join and its terminate; on terminate it also pushes `terminating` to its client
/// and broadcasts `bye` to the topic.
struct Recorder {
    id: u64,
    events: mpsc::UnboundedSender<Event>,
}

#[async_trait]
impl Channel for Recorder {
    async fn join(&mut self, _params: Payload, ctx: &ChannelContext) -> Result<Value, Value> {
        if ctx.topic() == "term:refuse" {
            return Err(json!({"reason": "refused"}));
        }
        let _ = self.events.send(Event::Joined(self.id));
        Ok(json!({"id": self.id}))
    }

    async fn handle_in(&mut self, event: &str, _payload: Payload, ctx: &ChannelContext) -> Handled {
        match event {
            "stop" => Handled::Stop(None),
            "crash" => Handled::Crash,
            "panic" => panic!("handle_in blew up"),
            "hang" => {
                // Tells the client the callback runs, then never returns.
                let _ = ctx.push("hanging", json!({}));
                std::future::pending().await
            }
            _ => Handled::NoReply,
        }
    }

    async fn terminate(&mut self, reason: TerminateReason, ctx: &ChannelContext) {
        let _ = self.events.send(Event::Terminated(self.id, reason));
        let _ = ctx.push("terminating", json!({"id": self.id}));
        ctx.broadcast("bye", json!({"id": self.id}));
        if ctx.topic() == "term:panic_in_terminate" {
            panic!("terminate blew up");
        }
    }
}

struct Harness {
    server: Server,
    events: mpsc::UnboundedReceiver<Event>,
    seen: Vec<Event>,
}

impl Harness {
    async fn start() -> Harness {
        let (tx, events) = mpsc::unbounded_channel();
        let ids = Arc::new(AtomicU64::new(1));
        let socket = SocketConfig::new(|_| ConnectDecision::Accept(Default::default())).channel(
            "term:*",
            move |_topic| {
                Box::new(Recorder {
                    id: ids.fetch_add(1, Ordering::SeqCst),
                    events: tx.clone(),
                })
            },
        );
        let server = server_with(ServerConfig::empty().socket("/term", socket)).await;
        Harness {
            server,
            events,
            seen: Vec::new(),
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.server.websocket_url("/term")).await
    }

    async fn next(&mut self) -> Event {
        let event = within("a channel event", self.events.recv())
            .await
            .expect("log closed");
        self.seen.push(event.clone());
        event
    }

    /// Joins and returns the channel's id.
    async fn join(&mut self, c: &mut Client, join_ref: &str, topic: &str) -> u64 {
        let r = c.join(join_ref, topic, json!({})).await;
        let id = r[4]["response"]["id"].as_u64().expect("an id");
        assert_eq!(
            r,
            ok_reply(json!(join_ref), json!(join_ref), topic, json!({"id": id}))
        );
        assert_eq!(self.next().await, Event::Joined(id));
        id
    }

    /// Closes the clients' TCP connections and stops the server (every channel still joined
    /// terminates with `SocketClosed`), then checks that every joined channel terminated
    /// exactly once.
    async fn finish(mut self, clients: impl IntoIterator<Item = Client>) -> Vec<Event> {
        drop(clients.into_iter().collect::<Vec<_>>());
        within("shutdown", self.server.shutdown()).await;
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
        let mut terminated: BTreeMap<u64, Vec<TerminateReason>> = BTreeMap::new();
        for event in &self.seen {
            match event {
                Event::Joined(id) => {
                    terminated.entry(*id).or_default();
                }
                Event::Terminated(id, reason) => {
                    let reasons = terminated.get_mut(id).expect("terminated before joined");
                    reasons.push(*reason);
                }
            }
        }
        for (id, reasons) in &terminated {
            assert_eq!(reasons.len(), 1, "channel {id} terminated {reasons:?}");
        }
        self.seen
    }
}

fn push(join_ref: &str, topic: &str, event: &str, payload: Value) -> Value {
    json!([join_ref, null, topic, event, payload])
}

fn closed(join_ref: &str, topic: &str, event: &str) -> Value {
    json!([join_ref, join_ref, topic, event, {}])
}

#[tokio::test]
async fn leave_stop_crash_and_panic_terminate_once_before_the_close() {
    let mut h = Harness::start().await;
    let mut c = h.client().await;
    let cases = [
        (
            "term:leave",
            "phx_leave",
            TerminateReason::Left,
            "phx_close",
        ),
        ("term:stop", "stop", TerminateReason::Stopped, "phx_close"),
        ("term:crash", "crash", TerminateReason::Crashed, "phx_error"),
        ("term:panic", "panic", TerminateReason::Crashed, "phx_error"),
    ];
    for (n, (topic, event, reason, end)) in cases.into_iter().enumerate() {
        let join_ref = (n + 1).to_string();
        let id = h.join(&mut c, &join_ref, topic).await;
        c.send_json(json!([join_ref, "9", topic, event, {}])).await;
        if event == "phx_leave" {
            assert_eq!(
                c.recv_json().await,
                ok_reply(json!(join_ref), json!("9"), topic, json!({}))
            );
        }
        // What terminate pushes goes out before the connection's phx_close / phx_error.
        assert_eq!(
            c.recv_json().await,
            push(&join_ref, topic, "terminating", json!({"id": id}))
        );
        assert_eq!(c.recv_json().await, closed(&join_ref, topic, end));
        assert_eq!(h.next().await, Event::Terminated(id, reason));
    }
    h.finish([c]).await;
}

#[tokio::test]
async fn crash_and_close_controls_cancel_a_running_callback_then_terminate() {
    let mut h = Harness::start().await;
    let control = h.server.control();
    let mut c = h.client().await;
    let crashed = h.join(&mut c, "1", "term:ctl_crash").await;
    c.send_json(json!(["1", "2", "term:ctl_crash", "hang", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        push("1", "term:ctl_crash", "hanging", json!({}))
    );
    assert_eq!(control.crash_channel("term:ctl_crash"), 1);
    assert_eq!(
        h.next().await,
        Event::Terminated(crashed, TerminateReason::Crashed)
    );
    assert_eq!(
        c.recv_json().await,
        push("1", "term:ctl_crash", "terminating", json!({"id": crashed}))
    );
    assert_eq!(
        c.recv_json().await,
        closed("1", "term:ctl_crash", "phx_error")
    );

    let closed_id = h.join(&mut c, "3", "term:ctl_close").await;
    assert_eq!(control.close_channel("term:ctl_close"), 1);
    assert_eq!(
        h.next().await,
        Event::Terminated(closed_id, TerminateReason::Stopped)
    );
    assert_eq!(
        c.recv_json().await,
        push(
            "3",
            "term:ctl_close",
            "terminating",
            json!({"id": closed_id})
        )
    );
    assert_eq!(
        c.recv_json().await,
        closed("3", "term:ctl_close", "phx_close")
    );
    h.finish([c]).await;
}

#[tokio::test]
async fn a_duplicate_join_terminates_the_old_channel_before_the_new_join() {
    let mut h = Harness::start().await;
    let mut c = h.client().await;
    let old = h.join(&mut c, "1", "term:dup").await;
    c.send_json(json!(["2", "2", "term:dup", "phx_join", {}]))
        .await;
    assert_eq!(
        h.next().await,
        Event::Terminated(old, TerminateReason::DuplicateJoin)
    );
    let Event::Joined(new) = h.next().await else {
        panic!("expected the new join");
    };
    // The old channel's push, then (as Phoenix does) the new reply and the old phx_close.
    assert_eq!(
        c.recv_json().await,
        push("1", "term:dup", "terminating", json!({"id": old}))
    );
    assert_eq!(
        c.recv_json().await,
        ok_reply(json!("2"), json!("2"), "term:dup", json!({"id": new}))
    );
    assert_eq!(c.recv_json().await, closed("1", "term:dup", "phx_close"));
    let seen = h.finish([c]).await;
    assert!(seen.contains(&Event::Terminated(new, TerminateReason::SocketClosed)));
}

#[tokio::test]
async fn every_way_a_connection_ends_terminates_its_channels_and_sends_nothing_more() {
    let mut h = Harness::start().await;
    let control = h.server.control();
    for way in ["client close", "server close", "drop"] {
        let mut c = h.client().await;
        let a = h.join(&mut c, "1", "term:a").await;
        let b = h.join(&mut c, "2", "term:b").await;
        let id = control.connections()[0].id;
        match way {
            "client close" => {
                within("close", c.ws.close(None)).await.unwrap();
                while let Some(Ok(_)) =
                    within("close", futures_util::StreamExt::next(&mut c.ws)).await
                {
                }
            }
            "server close" => {
                control.close_connection(id, 1000).unwrap();
                // The close frame comes next: terminate's pushes were not sent.
                assert_eq!(c.recv_close().await, 1000, "{way}");
            }
            _ => {
                control.drop_connection(id).unwrap();
                c.expect_dropped().await;
            }
        }
        // A connection leaves the registry only after its channels terminated.
        within(
            "deregistered",
            control.wait_for_stats(|s| s.open_connections == 0),
        )
        .await;
        let mut ended = vec![
            h.events.try_recv().expect("terminated"),
            h.events.try_recv().expect("terminated"),
        ];
        h.seen.extend(ended.iter().cloned());
        ended.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            ended,
            [
                Event::Terminated(a, TerminateReason::SocketClosed),
                Event::Terminated(b, TerminateReason::SocketClosed)
            ],
            "{way}"
        );
    }
    h.finish([]).await;
}

#[tokio::test]
async fn a_broadcast_from_terminate_reaches_the_other_joiners_only() {
    let mut h = Harness::start().await;
    let mut a = h.client().await;
    let mut b = h.client().await;
    let id_a = h.join(&mut a, "1", "term:room").await;
    h.join(&mut b, "7", "term:room").await;
    a.send_json(json!(["1", "2", "term:room", "phx_leave", {}]))
        .await;
    assert_eq!(
        b.recv_json().await,
        json!([null, null, "term:room", "bye", {"id": id_a}])
    );
    assert_eq!(
        a.recv_json().await,
        ok_reply(json!("1"), json!("2"), "term:room", json!({}))
    );
    assert_eq!(
        a.recv_json().await,
        push("1", "term:room", "terminating", json!({"id": id_a}))
    );
    assert_eq!(a.recv_json().await, closed("1", "term:room", "phx_close"));
    // Nothing else reached `a`: the next frame answers this heartbeat.
    a.send(r#"[null,"3","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        a.recv_json().await,
        ok_reply(Value::Null, json!("3"), "phoenix", json!({}))
    );
    h.finish([a, b]).await;
}

#[tokio::test]
async fn a_refused_join_never_terminates_and_a_panicking_terminate_still_closes() {
    let mut h = Harness::start().await;
    let mut c = h.client().await;
    assert_eq!(
        c.join("1", "term:refuse", json!({})).await,
        reply(
            json!("1"),
            json!("1"),
            "term:refuse",
            "error",
            json!({"reason": "refused"})
        )
    );
    let id = h.join(&mut c, "2", "term:panic_in_terminate").await;
    c.send_json(json!(["2", "3", "term:panic_in_terminate", "stop", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        push(
            "2",
            "term:panic_in_terminate",
            "terminating",
            json!({"id": id})
        )
    );
    assert_eq!(
        c.recv_json().await,
        closed("2", "term:panic_in_terminate", "phx_close")
    );
    assert_eq!(
        h.next().await,
        Event::Terminated(id, TerminateReason::Stopped)
    );
    c.send(r#"[null,"4","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        c.recv_json().await,
        ok_reply(Value::Null, json!("4"), "phoenix", json!({}))
    );
    // Only the joined channel is in the log: the refused one never made a channel.
    assert_eq!(h.finish([c]).await.len(), 2);
}

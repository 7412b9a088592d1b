//! A lone request is written by the handle itself while the socket task is idle (no hop to the
//! task), and anything queued before it keeps it behind, so call order holds. The driver is
//! awaited inline (`SocketBuilder::build`) so that the tests decide when it runs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{joined, within};
use futures_util::StreamExt as _;
use serde_json::json;

#[tokio::test(start_paused = true)]
async fn a_lone_push_is_written_while_the_socket_task_does_not_run() {
    let (_socket, mut driver, channel, _messages, mut conn) = joined().await;
    // The driver is not polled from here until the reply: the push writes its own frame.
    let push = channel.push("echo", json!({"n": 1}));
    let frame = conn.recv().await.unwrap();
    assert_eq!(frame[2], "room:1");
    assert_eq!(frame[3], "echo");
    assert_eq!(frame[4], json!({"n": 1}));
    conn.reply(&frame, "ok", json!({"n": 1})).await;
    let reply = tokio::select! {
        reply = push => reply.unwrap(),
        () = &mut driver => panic!("the driver ended"),
    };
    assert_eq!(reply.response().to_value().unwrap(), json!({"n": 1}));
}

#[tokio::test(start_paused = true)]
async fn a_push_behind_queued_commands_waits_for_the_socket_task() {
    let (socket, mut driver, channel, _messages, mut conn) = joined().await;
    // A command the task has not taken yet: the push must not overtake it.
    let (other, _messages) = socket.channel("room:2").stream();
    let join = other.join();
    let push = channel.push("echo", json!({"n": 2}));
    let early = tokio::time::timeout(Duration::from_secs(1), conn.ws.next()).await;
    assert!(
        early.is_err(),
        "a frame went out before the task ran: {early:?}"
    );
    // The task runs: the join first, then the push.
    let serve = async {
        let first = conn.recv().await.unwrap();
        assert_eq!(
            (&first[2], &first[3]),
            (&json!("room:2"), &json!("phx_join"))
        );
        let second = conn.recv().await.unwrap();
        assert_eq!((&second[2], &second[3]), (&json!("room:1"), &json!("echo")));
        conn.reply(&first, "ok", json!({})).await;
        conn.reply(&second, "ok", json!({"n": 2})).await;
        within("join", join).await.unwrap();
        within("push", push).await.unwrap()
    };
    let reply = tokio::select! {
        reply = serve => reply,
        () = &mut driver => panic!("the driver ended"),
    };
    assert_eq!(reply.response().to_value().unwrap(), json!({"n": 2}));
}

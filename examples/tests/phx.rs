//! The `phx` tool against the embedded conformance server, driven in-process: commands in,
//! JSON lines out.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Interactive, find};
use dust_conformance::ServerConfig;
use examples::phx::{Options, run};
use futures_util::StreamExt;
use phoenix_channels::Socket;
use serde_json::{Value, json};

fn options(url: String, extra: &[&str]) -> Options {
    let mut args = vec!["--url".to_owned(), url, "--timeout-ms".into(), "500".into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Options::parse(args).unwrap()
}

/// Starts `phx`, driven one command at a time.
fn phx(url: String, extra: &[&str]) -> Interactive {
    let options = options(url, extra);
    Interactive::start(|input, output| run(options, input, output))
}

#[tokio::test]
async fn a_script_runs_and_every_event_is_reported() {
    let server = dust_conformance::start(ServerConfig::default())
        .await
        .unwrap();
    let mut tool = phx(server.socket_url(), &[]);
    for command in [
        json!({"cmd": "join", "topic": "echo:1", "params": {"a": 1}}),
        json!({"cmd": "push", "topic": "echo:1", "event": "echo", "payload": {"hello": "world"}, "id": 1}),
        json!({"cmd": "push", "topic": "echo:1", "event": "error_reply", "payload": {"e": 1}, "id": "two"}),
        json!({"cmd": "push", "topic": "echo:1", "event": "noreply", "payload": {}, "id": 3}),
        json!({"cmd": "push", "topic": "echo:1", "event": "echo", "binary_base64": "AQL/", "id": 4}),
        json!({"cmd": "cast", "topic": "echo:1", "event": "push_binary", "payload": {}}),
        json!({"cmd": "push", "topic": "echo:1", "event": "broadcast", "payload": {"b": 1}, "id": 5}),
        json!("this is not json"),
        json!({"cmd": "push", "topic": "nope", "event": "e", "id": 6}),
        json!({"cmd": "fly"}),
    ] {
        match command.as_str() {
            Some(text) => tool.send_text(text).await,
            None => tool.send(command).await,
        }
    }
    // Server pushes and broadcasts have no reply to wait for at the end of the input: wait
    // for them here.
    tool.wait_for(
        &json!({"type": "message", "topic": "echo:1", "event": "pushed_binary", "payload": {"binary_base64": "aGk="}}),
    )
    .await;
    tool.wait_for(
        &json!({"type": "message", "topic": "echo:1", "event": "broadcasted", "payload": {"b": 1}}),
    )
    .await;
    let lines = tool.finish().await;
    assert_eq!(
        lines[0],
        json!({"type": "status", "status": "connecting", "attempt": 1})
    );
    find(&lines, &json!({"type": "status", "status": "connected"}));
    find(
        &lines,
        &json!({"type": "joined", "topic": "echo:1", "response": {"joined": "echo:1", "params": {"a": 1}}}),
    );
    find(
        &lines,
        &json!({"type": "reply", "id": 1, "status": "ok", "response": {"hello": "world"}}),
    );
    find(
        &lines,
        &json!({"type": "reply", "id": "two", "status": "error", "response": {"e": 1}}),
    );
    find(
        &lines,
        &json!({"type": "push_error", "id": 3, "error": "timeout"}),
    );
    find(
        &lines,
        &json!({"type": "reply", "id": 4, "status": "ok", "response": {"binary_base64": "AQL/"}}),
    );
    find(
        &lines,
        &json!({"type": "channel", "topic": "echo:1", "state": "joined"}),
    );
    let errors: Vec<&Value> = lines.iter().filter(|l| l["type"] == "error").collect();
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // At the end of input: leave, then disconnect.
    find(
        &lines,
        &json!({"type": "channel", "topic": "echo:1", "state": "closed"}),
    );
    assert_eq!(
        lines.last().unwrap(),
        &json!({"type": "status", "status": "disconnected"})
    );
}

#[tokio::test]
async fn a_refused_connect_reports_its_http_status() {
    let server = dust_conformance::start(ServerConfig::default())
        .await
        .unwrap();
    let mut tool = phx(server.socket_url(), &["--param", "token=bad"]);
    tool.wait_for(&json!({"type": "status", "status": "disconnected", "http_status": 403}))
        .await;
    tool.finish().await;
}

#[tokio::test]
async fn crash_and_reconnect_show_up_as_status_and_channel_lines() {
    let server = dust_conformance::start(ServerConfig::default())
        .await
        .unwrap();
    let mut tool = phx(server.socket_url(), &["--heartbeat-ms", "1000"]);
    tool.send(json!({"cmd": "join", "topic": "echo:1"})).await;
    tool.wait_for(&json!({"type": "joined", "topic": "echo:1"}))
        .await;
    tool.send(json!({"cmd": "push", "topic": "echo:1", "event": "crash", "id": "c"}))
        .await;
    tool.wait_for(&json!({"type": "push_error", "id": "c", "error": "channel_errored"}))
        .await;
    tool.wait_for(&json!({"type": "channel", "topic": "echo:1", "state": "errored"}))
        .await;
    // Rejoined after the crash.
    tool.wait_for_nth(&json!({"type": "joined", "topic": "echo:1"}), 2)
        .await;
    tool.send(json!({"cmd": "cast", "topic": "echo:1", "event": "disconnect_me"}))
        .await;
    tool.wait_for(&json!({"type": "status", "status": "disconnected", "close_code": 1000}))
        .await;
    tool.wait_for(&json!({"type": "status", "status": "reconnecting"}))
        .await;
    // Rejoined after the reconnect.
    tool.wait_for_nth(&json!({"type": "joined", "topic": "echo:1"}), 3)
        .await;
    tool.send(json!({"cmd": "push", "topic": "echo:1", "event": "echo", "payload": {"after": true}, "id": "e"}))
        .await;
    let lines = tool.finish().await;
    find(
        &lines,
        &json!({"type": "reply", "id": "e", "status": "ok", "response": {"after": true}}),
    );
    let joins = lines.iter().filter(|l| l["type"] == "joined").count();
    assert_eq!(
        joins, 3,
        "joined, rejoined after the crash, rejoined after the reconnect"
    );
}

/// When stdout is slower than the inbound events, the output queue stays within
/// `--output-buffer` and the lines that do not fit are reported as dropped, never lost silently.
#[tokio::test]
async fn a_blocked_stdout_keeps_the_output_bounded_and_reports_drops() {
    const FLOOD: usize = 1000;
    const BOUND: usize = 4096;
    const PIPE: usize = 512;
    let server = dust_conformance::start(ServerConfig::default())
        .await
        .unwrap();
    let options = Options::parse([
        "--url".to_owned(),
        server.socket_url(),
        "--output-buffer".into(),
        BOUND.to_string(),
    ])
    .unwrap();
    let mut commands = vec![json!({"cmd": "join", "topic": "echo:1"})];
    commands.extend((0..FLOOD).map(|i| {
        json!({"cmd": "push", "topic": "echo:1", "event": "broadcast", "payload": {"n": i, "pad": "x".repeat(64)}, "id": i})
    }));
    // Another client on the topic: once it has had every broadcast, the tool has had them (or
    // nearly) too, and its output is released.
    let observer = Socket::builder(server.socket_url()).connect().unwrap();
    let (channel, mut messages) = observer.channel("echo:1").stream();
    channel.join().await.unwrap();
    let observed = async move {
        let mut seen = 0;
        while seen < FLOOD {
            match messages.next().await {
                Some(Ok(m)) if m.event.as_str() == "broadcasted" => seen += 1,
                Some(Ok(_)) => {}
                Some(Err(lagged)) => seen += lagged.0 as usize,
                None => panic!("the observer's channel ended"),
            }
        }
    };
    let text = common::script_with_blocked_output(
        &commands,
        PIPE,
        |input, output| run(options, input, output),
        observed,
    )
    .await;
    let (lines, dropped) = common::check_bounded_output(&text, PIPE, BOUND);
    let seen = lines
        .iter()
        .filter(|l| (l["type"] == "message" && l["event"] == "broadcasted") || l["type"] == "reply")
        .count();
    assert!(seen < 2 * FLOOD, "nothing was dropped: {seen} lines");
    assert!(
        seen as u64 + dropped >= 2 * FLOOD as u64,
        "{seen} broadcasts and replies written and {dropped} lines reported dropped: some were \
         lost silently"
    );
    // The tool still ends the way it always does.
    assert_eq!(
        lines.last().unwrap(),
        &json!({"type": "status", "status": "disconnected"})
    );
}

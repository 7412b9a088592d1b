//! A tour of `phoenix-channels` against an embedded Phoenix server emulation (`dust-conformance`):
//! join, push and reply, broadcasts, binary payloads, a crash and a dropped connection survived.
//!
//! ```text
//! cargo run -p examples --example phoenix_quickstart
//! ```

#![allow(clippy::print_stdout)]

use std::time::Duration;

use futures_util::StreamExt;
use phoenix_channels::backoff::ReconnectSchedule;
use phoenix_channels::{ChannelState, Payload, PushError, Socket};
use serde_json::json;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    examples::init_logging();
    let bounded = Duration::from_secs(10);

    // 1. A Phoenix server on a free loopback port, with an `echo:*` channel and fault controls.
    let server = dust_conformance::start(dust_conformance::ServerConfig::default()).await?;
    let control = server.control();
    println!("server:     {}", server.socket_url());

    // 2. A socket (it connects, heartbeats and reconnects by itself) and two channels.
    let socket = Socket::builder(server.socket_url())
        .param("user", "ada")
        .reconnect_policy(ReconnectSchedule::default().with_jitter(0.2, 42))
        .connect()?;
    let (room, mut messages) = socket
        .channel("echo:lobby")
        .params(json!({"nick": "ada"}))
        .stream();
    let joined = tokio::time::timeout(bounded, room.join()).await??;
    println!("joined:     {}", joined.as_json().unwrap_or("?"));

    // 3. Request / reply.
    let reply =
        tokio::time::timeout(bounded, room.push("echo", json!({"hello": "world"}))).await??;
    println!(
        "reply:      {} {}",
        reply.status(),
        reply.response().as_json().unwrap_or("?")
    );

    // 4. A broadcast reaches every joiner (here, a second socket's channel and ours).
    let (second, mut second_messages) = {
        let peer = Socket::builder(server.socket_url()).connect()?;
        let (channel, stream) = peer.channel("echo:lobby").stream();
        tokio::time::timeout(bounded, channel.join()).await??;
        (channel, stream)
    };
    tokio::time::timeout(bounded, second.push("broadcast", json!({"body": "hi all"}))).await??;
    for stream in [&mut messages, &mut second_messages] {
        if let Ok(Some(Ok(message))) = tokio::time::timeout(bounded, stream.next()).await {
            println!(
                "broadcast:  {} {}",
                message.event,
                message.payload.as_json().unwrap_or("?")
            );
        }
    }

    // 5. Binary payloads, both ways.
    let reply = tokio::time::timeout(
        bounded,
        room.push_payload("echo", Payload::binary(vec![1u8, 2, 255])),
    )
    .await??;
    println!(
        "binary:     {:?}",
        reply.response().as_binary().map(|b| b.to_vec())
    );

    // 6. The server's channel crashes: pushes in flight fail at once, the channel rejoins.
    let crash = tokio::time::timeout(bounded, room.push("crash", json!({}))).await?;
    println!("crash:      push -> {:?}", crash.err());
    let mut state = room.state_watch();
    tokio::time::timeout(bounded, state.wait_for(|s| *s == ChannelState::Joined)).await??;
    println!("rejoined:   {}", room.state());

    // 7. The connection drops: pushes in flight fail with Disconnected, pushes made meanwhile
    //    wait, the socket reconnects and the channel rejoins, then they go out.
    let slow = room.push("slow", json!({"ms": 1000}));
    // The server reads a socket's frames in order, and answers `slow` late without holding up
    // what follows: once this echo is answered, the server has the slow push in hand.
    tokio::time::timeout(bounded, room.push("echo", json!({}))).await??;
    control.drop_all();
    let lost = tokio::time::timeout(bounded, slow).await?;
    assert_eq!(lost.as_ref().err(), Some(&PushError::Disconnected));
    println!("dropped:    in-flight push -> {:?}", lost.err());
    let queued = room.push("echo", json!({"sent": "while reconnecting"}));
    let reply = tokio::time::timeout(bounded, queued).await??;
    println!(
        "reconnected: queued push -> {}",
        reply.response().as_json().unwrap_or("?")
    );

    // 8. Leave and disconnect.
    tokio::time::timeout(bounded, room.leave()).await?;
    socket.disconnect().await;
    println!("done:       {:?}", socket.status());
    server.shutdown().await;
    Ok(())
}

//! No reply binding ever leaks: many pushes that time out, through the real driver, leave the
//! heap where it was. Measured with dhat's heap statistics (this test binary's allocator).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{fake_server, within};
use phoenix_channels::{Payload, PushError, Socket};
use serde_json::json;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[tokio::test(start_paused = true)]
async fn timed_out_pushes_leave_memory_flat() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let (connector, mut server) = fake_server();
    let socket = Socket::builder("ws://phoenix.test/socket")
        .connector(connector)
        .connect()
        .unwrap();
    let (channel, _messages) = socket.channel("room:1").stream();
    let mut conn = server.accept().await;
    drop(channel.join());
    conn.accept_join("room:1", json!({})).await;
    // The server reads everything and answers only heartbeats.
    tokio::spawn(async move { while conn.recv_skipping_heartbeats().await.is_some() {} });

    let round = |n: usize| {
        let channel = channel.clone();
        async move {
            let pushes: Vec<_> = (0..n)
                .map(|_| {
                    channel.push_with_timeout(
                        "noreply",
                        Payload::empty(),
                        Duration::from_millis(50),
                    )
                })
                .collect();
            for push in pushes {
                assert_eq!(within("push", push).await.unwrap_err(), PushError::Timeout);
            }
        }
    };
    // Warm up: buffers and tables reach their working size.
    for _ in 0..20 {
        round(1_000).await;
    }
    let warm = dhat::HeapStats::get();
    for _ in 0..100 {
        round(1_000).await;
    }
    let after = dhat::HeapStats::get();
    // 100,000 more timed-out pushes. A leak of anything per push would add 100,000 live blocks
    // (or bytes); a buffer that grows once to its working size adds one block at most.
    assert!(
        after.curr_blocks <= warm.curr_blocks + 4,
        "live blocks grew from {} to {} over 100,000 timed-out pushes",
        warm.curr_blocks,
        after.curr_blocks
    );
    assert!(
        after.curr_bytes <= warm.curr_bytes + 512 * 1024,
        "heap grew from {} to {} bytes over 100,000 timed-out pushes",
        warm.curr_bytes,
        after.curr_bytes
    );
}

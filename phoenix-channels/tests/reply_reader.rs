//! While the socket task is idle, a lone push's own task reads the reply from the connection
//! (no hop to the socket task), delivers whatever else came with it, and never holds the
//! connection's reads back: a push that is dropped, or left unpolled, hands them to the task.
//! A reply that came is taken at the first poll, however many others the task took before.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use common::{joined, within};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::json;

/// A broadcast of `event` on `room:1`.
fn broadcast(event: &str) -> serde_json::Value {
    json!([null, null, "room:1", event, {"n": 0}])
}

#[tokio::test(start_paused = true)]
async fn a_lone_push_reads_its_reply_while_the_socket_task_does_not_run() {
    let (_socket, _driver, channel, _messages, mut conn) = joined().await;
    // The driver is never polled again: the push writes its frame and, awaited, reads its
    // reply.
    let mut push = channel.push("echo", json!({"n": 1}));
    assert!((&mut push).now_or_never().is_none());
    let frame = conn.recv().await.unwrap();
    conn.reply(&frame, "ok", json!({"n": 1})).await;
    let reply = within("reply", push).await.unwrap();
    assert_eq!(reply.response().to_value().unwrap(), json!({"n": 1}));
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_comes_before_the_push_is_polled_is_read_by_it() {
    let (_socket, _driver, channel, _messages, mut conn) = joined().await;
    // Written by the handle, answered before the push is first polled; the socket task
    // never runs again.
    let push = channel.push("echo", json!({"n": 5}));
    let frame = conn.recv().await.unwrap();
    conn.reply(&frame, "ok", json!({"n": 5})).await;
    let reply = within("reply", push).await.unwrap();
    assert_eq!(reply.response().to_value().unwrap(), json!({"n": 5}));
}

#[tokio::test(start_paused = true)]
async fn what_arrives_with_the_reply_reaches_its_channel() {
    let (_socket, _driver, channel, mut messages, mut conn) = joined().await;
    let mut push = channel.push("echo", json!({"n": 2}));
    assert!((&mut push).now_or_never().is_none());
    let frame = conn.recv().await.unwrap();
    conn.send(broadcast("before")).await;
    conn.reply(&frame, "ok", json!({"n": 2})).await;
    within("reply", push).await.unwrap();
    let message = messages.next().now_or_never().flatten().unwrap().unwrap();
    assert_eq!(message.event.as_str(), "before");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_push_hands_the_read_to_the_socket_task() {
    let (_socket, driver, channel, mut messages, mut conn) = joined().await;
    let driver = tokio::spawn(driver);
    tokio::task::yield_now().await;
    let mut push = channel.push("echo", json!({"n": 3}));
    // Polled once: it takes the connection's readiness.
    assert!((&mut push).now_or_never().is_none());
    conn.recv().await.unwrap();
    conn.send(broadcast("meanwhile")).await;
    drop(push);
    // Well before the task's own check on a waiting push.
    let message = tokio::time::timeout(Duration::from_millis(5), messages.next())
        .await
        .expect("the socket task did not read after the push was dropped");
    assert_eq!(message.unwrap().unwrap().event.as_str(), "meanwhile");
    driver.abort();
}

#[tokio::test(start_paused = true)]
async fn an_unpolled_push_holds_reads_back_for_a_moment_at_most() {
    let (_socket, driver, channel, mut messages, mut conn) = joined().await;
    let driver = tokio::spawn(driver);
    tokio::task::yield_now().await;
    let mut push = channel.push("echo", json!({"n": 4}));
    assert!((&mut push).now_or_never().is_none());
    conn.recv().await.unwrap();
    conn.send(broadcast("meanwhile")).await;
    // The push is kept but not polled (its task awaits the messages instead).
    let message = tokio::time::timeout(Duration::from_secs(1), messages.next())
        .await
        .expect("the connection was not read while the push went unpolled");
    assert_eq!(message.unwrap().unwrap().event.as_str(), "meanwhile");
    drop(push);
    driver.abort();
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Wake for Counter {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_push_that_reads_its_reply_is_woken_once_for_it() {
    let (_socket, _driver, channel, _messages, mut conn) = joined().await;
    let counter = Arc::new(Counter::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    let mut push = channel.push("echo", json!({"n": 6}));
    assert!(Pin::new(&mut push).poll(&mut cx).is_pending());
    let frame = conn.recv().await.unwrap();
    conn.reply(&frame, "ok", json!({"n": 6})).await;
    // The connection's readiness wakes the push, which reads its reply when polled.
    within("the readiness", async {
        while counter.0.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let Poll::Ready(reply) = Pin::new(&mut push).poll(&mut cx) else {
        panic!("the push did not read its reply when woken");
    };
    assert_eq!(
        reply.unwrap().response().to_value().unwrap(),
        json!({"n": 6})
    );
    // Delivering the reply it read itself did not wake it again: a spurious wake-up costs
    // the task's runtime a whole turn per round trip.
    assert_eq!(counter.0.load(Ordering::SeqCst), 1);
}

/// Once the server has answered every one of `futures`, sends a broadcast on `room:1` and
/// waits for it (frames are read in order: once it is out, every answer before it was read),
/// then awaits all of `futures` at once; how many succeeded (each must).
async fn await_all_after_the_answers<T, E: std::fmt::Debug>(
    conn: &mut common::Conn,
    messages: &mut phoenix_channels::Messages,
    futures: Vec<impl std::future::Future<Output = Result<T, E>>>,
) -> usize {
    conn.send(broadcast("after")).await;
    within("the broadcast", messages.next())
        .await
        .unwrap()
        .unwrap();
    let mut in_flight: FuturesUnordered<_> = futures.into_iter().collect();
    let mut answered = 0;
    while let Some(answer) = within("an answer", in_flight.next()).await {
        answer.unwrap();
        answered += 1;
    }
    answered
}

#[tokio::test(start_paused = true)]
async fn replies_that_came_are_taken_at_the_first_poll_past_tokio_s_budget() {
    const PUSHES: usize = 400;
    let (_socket, driver, channel, mut messages, mut conn) = joined().await;
    let driver = tokio::spawn(driver);
    let polls = Arc::new(AtomicUsize::new(0));
    let mut pushes = Vec::new();
    for n in 0..PUSHES {
        let mut push = channel.push("echo", json!({ "n": n }));
        let polls = polls.clone();
        pushes.push(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            Pin::new(&mut push).poll(cx)
        }));
    }
    for _ in 0..PUSHES {
        let frame = conn.recv().await.unwrap();
        conn.reply(&frame, "ok", frame[4].clone()).await;
    }
    assert_eq!(
        await_all_after_the_answers(&mut conn, &mut messages, pushes).await,
        PUSHES
    );
    // Each push polled once: none refused by the budget (128 a turn) and polled again.
    assert_eq!(polls.load(Ordering::SeqCst), PUSHES);
    driver.abort();
}

#[tokio::test(start_paused = true)]
async fn join_replies_that_came_are_taken_at_the_first_poll_past_tokio_s_budget() {
    const JOINS: usize = 400;
    let (socket, driver, _channel, mut messages, mut conn) = joined().await;
    let driver = tokio::spawn(driver);
    let polls = Arc::new(AtomicUsize::new(0));
    let mut joins = Vec::new();
    let mut channels = Vec::new();
    for n in 0..JOINS {
        let (channel, messages) = socket.channel(format!("room:join{n}")).stream();
        let mut join = Box::pin(channel.join());
        let polls = polls.clone();
        joins.push(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            join.as_mut().poll(cx)
        }));
        channels.push((channel, messages));
    }
    for _ in 0..JOINS {
        let frame = conn.recv().await.unwrap();
        assert_eq!(frame[3], "phx_join");
        conn.reply(&frame, "ok", json!({})).await;
    }
    assert_eq!(
        await_all_after_the_answers(&mut conn, &mut messages, joins).await,
        JOINS
    );
    // Each join polled once: none refused by the budget (128 a turn) and polled again.
    assert_eq!(polls.load(Ordering::SeqCst), JOINS);
    driver.abort();
}

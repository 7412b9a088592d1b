//! Reliability of the outbox and the store worker: issue order, the replica after a catch-up
//! under live traffic, writes that crash the channel, and the in-flight window.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::pin::Pin;

use common::*;
use dust_connection::{MemoryEngine, WriteAck, WriteError, WriteRequest};
use futures_util::FutureExt as _;
use futures_util::future::join_all;
use serde_json::json;

type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<WriteAck, WriteError>> + Send + 'a>>;

/// Polls each future once, in order (as a CLI that fires writes does), then awaits them all.
async fn poll_once_then_await(
    mut futures: Vec<WriteFuture<'_>>,
) -> Vec<Result<WriteAck, WriteError>> {
    let mut early = Vec::new();
    for future in &mut futures {
        early.push((&mut *future).now_or_never());
    }
    let pending = futures
        .into_iter()
        .zip(&early)
        .filter(|(_, early)| early.is_none())
        .map(|(future, _)| future);
    let mut rest = within("writes", join_all(pending)).await.into_iter();
    early
        .into_iter()
        .map(|early| early.or_else(|| rest.next()).expect("one answer per write"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_polled_once_then_awaited_land_in_the_order_they_were_issued() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server).engine(engine.clone()).connect().unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let mut issued = Vec::new();
    let mut futures: Vec<WriteFuture<'_>> = Vec::new();
    for i in 0..5000 {
        let request = WriteRequest::set(["k", &(i % 100).to_string()], json!(i));
        issued.push(request.client_op_id.to_string());
        futures.push(Box::pin(app.write(request)));
    }
    let results = poll_once_then_await(futures).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

#[tokio::test]
async fn a_file_write_then_a_set_land_in_call_order_even_polled_in_reverse() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let dir = std::env::temp_dir().join(format!("dust-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.txt");
    std::fs::write(&file, b"hello").unwrap();

    let put = WriteRequest::put_file_from(["files", "a"], &file);
    let set = WriteRequest::set(["after"], json!(1));
    let issued = vec![put.client_op_id.to_string(), set.client_op_id.to_string()];
    let put = app.write(put);
    let set = app.write(set);
    // The set is polled first: it still waits for the file write made before it.
    let (set, put) = within("writes", async { tokio::join!(set, put) }).await;
    assert!(put.is_ok() && set.is_ok(), "{put:?} {set:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_dropped_or_invalid_write_never_holds_up_the_writes_made_after_it() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = connect(&server, &engine).await;
    let app = connection.store(STORE).unwrap();
    let dropped = app.set(["dropped"], json!(1));
    let invalid = app.write(WriteRequest::put_file_from(["f"], "/definitely/not/here"));
    let kept = WriteRequest::set(["kept"], json!(2));
    let issued = vec![kept.client_op_id.to_string()];
    let kept = app.write(kept);
    drop(dropped);
    let (kept, invalid) = within("writes", async { tokio::join!(kept, invalid) }).await;
    assert!(kept.is_ok(), "{kept:?}");
    assert!(
        matches!(invalid, Err(WriteError::Invalid(_))),
        "{invalid:?}"
    );
    assert_applied_once_in_order(&server, STORE, &issued).await;
    assert_eq!(
        logged_ids(&server, STORE).await.len(),
        1,
        "the dropped write never left"
    );
}

#[tokio::test]
async fn with_a_full_outbox_writes_polled_out_of_order_still_go_out_in_call_order() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let connection = builder(&server)
        .engine(engine.clone())
        .outbox_capacity(1)
        .connect()
        .unwrap();
    wait_joined(&connection, STORE).await;
    let app = connection.store(STORE).unwrap();
    let requests: Vec<WriteRequest> = (0..20)
        .map(|i| WriteRequest::set(["n"], json!(i)))
        .collect();
    let issued: Vec<String> = requests
        .iter()
        .map(|r| r.client_op_id.to_string())
        .collect();
    let mut futures: Vec<WriteFuture<'_>> = requests
        .into_iter()
        .map(|r| Box::pin(app.write(r)) as WriteFuture<'_>)
        .collect();
    futures.reverse();
    let results = poll_once_then_await(futures).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_applied_once_in_order(&server, STORE, &issued).await;
}

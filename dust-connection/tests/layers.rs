//! The write-path layers in isolation, against `tower-test` mocks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use dust_connection::layer::{RetryRateLimited, TelemetryLayer, ValidateLayer};
use dust_connection::{EncodedWrite, RejectReason, Rejection, WriteAck, WriteError, WriteRequest};
use serde_json::json;
use tower::retry::RetryLayer;
use tower::{Layer, ServiceExt};
use tower_test::mock;

/// tower-test's mocks fail with boxed errors; ours are typed.
fn typed(error: tower::BoxError) -> WriteError {
    match error.downcast::<WriteError>() {
        Ok(error) => *error,
        Err(other) => panic!("unexpected mock error: {other}"),
    }
}

fn rate_limited(retry_after_ms: u64) -> WriteError {
    WriteError::Rejected(Rejection::from_payload(
        &json!({"reason": "rate_limited", "retry_after_ms": retry_after_ms}),
    ))
}

#[tokio::test]
async fn validation_encodes_for_the_inner_service_and_stops_bad_writes() {
    let (inner, mut handle) = mock::pair::<EncodedWrite, WriteAck>();
    let service = ValidateLayer::default().layer(inner.map_err(typed));

    let write = WriteRequest::set(["a"], 1).with_client_op_id("op_1");
    let call = tokio::spawn(service.clone().oneshot(write));
    let (encoded, reply) = handle.next_request().await.unwrap();
    assert_eq!(encoded.event, "write");
    assert_eq!(
        encoded.params.as_json(),
        Some(r#"{"client_op_id":"op_1","op":"set","path":"a","path_segments":["a"],"value":1}"#)
    );
    reply.send_response(WriteAck::from_reply(json!({"store_seq": 9})));
    assert_eq!(call.await.unwrap().unwrap().store_seq(), Some(9));

    handle.allow(1);
    let bad = service.oneshot(WriteRequest::merge(["a"], 1)).await;
    assert!(
        matches!(bad, Err(WriteError::Invalid(ref r)) if r.reason == RejectReason::MergeRequiresMapValue)
    );
    let reached = tokio::time::timeout(Duration::from_millis(20), handle.next_request()).await;
    assert!(
        !matches!(reached, Ok(Some(_))),
        "an invalid write never reaches the outbox"
    );
}

#[tokio::test]
async fn validation_passes_the_inner_readiness_through() {
    let (inner, mut handle) = mock::pair::<EncodedWrite, WriteAck>();
    let mut service = ValidateLayer::default().layer(inner.map_err(typed));
    handle.allow(0);
    assert!(
        futures_util::FutureExt::now_or_never(service.ready()).is_none(),
        "not ready while the inner one is full"
    );
    handle.allow(1);
    assert!(service.ready().await.is_ok());
}

#[tokio::test]
async fn telemetry_passes_requests_and_outcomes_through() {
    let (inner, mut handle) = mock::pair::<WriteRequest, WriteAck>();
    let service = TelemetryLayer::new("acme/app").layer(inner.map_err(typed));
    let call =
        tokio::spawn(service.oneshot(WriteRequest::increment(["n"], 1).with_client_op_id("op_t")));
    let (request, reply) = handle.next_request().await.unwrap();
    assert_eq!(request.client_op_id.as_str(), "op_t");
    reply.send_error(rate_limited(5));
    assert!(matches!(call.await.unwrap(), Err(WriteError::Rejected(_))));
}

#[tokio::test(start_paused = true)]
async fn rate_limited_writes_are_retried_after_retry_after_ms_with_the_same_op_id() {
    let (inner, mut handle) = mock::pair::<WriteRequest, WriteAck>();
    let service = RetryLayer::new(RetryRateLimited::new(2)).layer(inner.map_err(typed));
    let started = tokio::time::Instant::now();
    let call = tokio::spawn(service.oneshot(WriteRequest::set(["k"], 1).with_client_op_id("op_r")));

    let (first, reply) = handle.next_request().await.unwrap();
    reply.send_error(rate_limited(250));
    let (second, reply) = handle.next_request().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    assert_eq!(
        first.client_op_id, second.client_op_id,
        "a retry resends the same write"
    );
    reply.send_response(WriteAck::from_reply(json!({"store_seq": 3})));
    assert_eq!(call.await.unwrap().unwrap().store_seq(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_after_the_limit_and_other_rejections_are_final() {
    let (inner, mut handle) = mock::pair::<WriteRequest, WriteAck>();
    let service = RetryLayer::new(RetryRateLimited::new(1)).layer(inner.map_err(typed));
    let call = tokio::spawn(service.clone().oneshot(WriteRequest::set(["k"], 1)));
    for _ in 0..2 {
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(rate_limited(10));
    }
    assert!(
        matches!(call.await.unwrap(), Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::RateLimited)
    );

    let call = tokio::spawn(service.oneshot(WriteRequest::set(["k"], 1)));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_error(WriteError::Rejected(Rejection::from_payload(
        &json!({"reason": "conflict"}),
    )));
    assert!(
        matches!(call.await.unwrap(), Err(WriteError::Rejected(ref r)) if r.reason == RejectReason::Conflict)
    );
}

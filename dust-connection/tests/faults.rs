//! The outbox under faults: every accepted `client_op_id` is applied exactly once, in issue
//! order, checked against the server's op log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

include!("suites/faults.rs");

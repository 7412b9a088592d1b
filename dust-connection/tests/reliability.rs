//! Reliability of the outbox and the store worker: issue order, the replica after a catch-up
//! under live traffic, writes that crash the channel, and the in-flight window.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

include!("suites/reliability.rs");

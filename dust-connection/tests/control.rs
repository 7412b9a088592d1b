//! The store channel's control calls against the emulated Dust server: path and store
//! rollbacks (their typed replies and rejections, and what the replica sees) and `status`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

include!("suites/control.rs");

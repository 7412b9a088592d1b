//! Parity with the seed against the Dust emulation: the connect URL, joins and capabilities,
//! every op and its ack, every rejection, leases and fences, catch-up and snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

include!("suites/writes.rs");

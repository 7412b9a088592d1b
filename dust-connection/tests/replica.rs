//! The local replica equals what the server holds: random sequences of every op written
//! through a `DustConnection` to the emulation, then the writer's live engine, a device
//! joining from 0 and a device joining after a compaction (snapshot) all hold exactly what the
//! server's entries hold. And acks answered from events carry only what the reply would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

include!("suites/replica.rs");

//! The `reliability` suite (`tests/suites/reliability.rs`) over MessagePack (`vsn=3.0.0`): every
//! assertion of the JSON run holds in this format too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this run of the suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::MessagePack;

mod common;

include!("suites/reliability.rs");

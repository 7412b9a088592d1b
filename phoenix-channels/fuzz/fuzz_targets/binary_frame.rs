//! Fuzzes `phoenix_channels::frame::decode_binary` (binary frames of kinds 0, 1 and 2); see
//! `check_binary_frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| phoenix_channels_fuzz::check_binary_frame(data));

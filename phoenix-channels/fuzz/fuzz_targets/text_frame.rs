//! Fuzzes `phoenix_channels::frame::decode_text` (V2 JSON text frames); see `check_text_frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| phoenix_channels_fuzz::check_text_frame(data));

//! Fuzzes `phoenix_channels::frame::decode_binary_with(Serializer::MessagePack, ..)` (vsn
//! 3.0.0 binary frames: MessagePack arrays and header frames) and MessagePack payloads; see
//! `check_msgpack_frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| phoenix_channels_fuzz::check_msgpack_frame(data));

//! The frame parser of the emulation (text and binary frames, V1 and V2) and the reply
//! encoding of what it decoded: no input may panic. `data[0]` picks the case (see
//! `dust_conformance::fuzz_decode`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dust_conformance::fuzz_decode(data);
});

//! Replays the fuzz target's corpus (`fuzz/corpus/decode_frame`) through the same entry point
//! on stable: no input panics, and the valid seeds decode.

use std::path::Path;

#[test]
fn every_corpus_input_decodes_or_is_refused_without_panicking() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode_frame");
    let mut replayed = 0;
    let mut decoded = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        if dust_conformance::fuzz_decode(&data) {
            decoded.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        replayed += 1;
    }
    assert!(replayed >= 10, "only {replayed} corpus files");
    for valid in [
        "v2_join",
        "v1_object",
        "bin_push",
        "v2_heartbeat",
        "msgpack_push",
        "msgpack_header_push",
        "msgpack_text",
    ] {
        assert!(decoded.iter().any(|d| d == valid), "{valid} did not decode");
    }
    for malformed in [
        "v2_short_array",
        "bin_truncated",
        "bin_wrong_kind",
        "v1_missing_key",
        "msgpack_trailing",
    ] {
        assert!(
            !decoded.iter().any(|d| d == malformed),
            "{malformed} decoded"
        );
    }
}

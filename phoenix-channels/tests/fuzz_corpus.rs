//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the checks the fuzz
//! targets run (`fuzz/src/lib.rs`): no input panics a decoder or breaks an invariant there (a
//! decoded frame re-encodes and decodes to the same message, the fast and the general text
//! decoders agree, a decoded payload reads as JSON or binary). Runs on stable, in CI.

#![allow(clippy::panic, clippy::unwrap_used)]

#[allow(unreachable_pub, dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the corpus of {target} has only {} files",
        files.len()
    );
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!("{}: {message}", file.display());
        }
    }
}

#[test]
fn the_text_frame_corpus_decodes_without_breaking_an_invariant() {
    replay("text_frame", checks::check_text_frame);
}

#[test]
fn the_binary_frame_corpus_decodes_without_breaking_an_invariant() {
    replay("binary_frame", checks::check_binary_frame);
}

#[test]
fn the_msgpack_frame_corpus_decodes_without_breaking_an_invariant() {
    replay("msgpack_frame", checks::check_msgpack_frame);
}

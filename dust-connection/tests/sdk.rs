//! The SDK surface over the local replica: Dust's globs (the shared vectors), reads that never
//! touch the network, and bounded subscriptions with lag reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

mod glob {
    use std::path::PathBuf;

    use dust_connection::{Glob, GlobError};
    use serde_json::Value;

    fn vectors(name: &str) -> Vec<Value> {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/dust-fixtures")
            .join(name);
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the test vectors live in the shared reference directory next to the \
                 workspace (shared/reference/dust-fixtures/{name})",
                file.display()
            )
        });
        serde_json::from_str(&text).unwrap()
    }

    fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_glob_vectors_hold() {
        let vectors = vectors("glob_vectors.json");
        assert!(vectors.len() >= 20, "{} vectors", vectors.len());
        for vector in vectors {
            let rendered = vector["pattern_rendered"].as_str().unwrap();
            if vector["valid"] == Value::Bool(false) {
                let error = Glob::parse(rendered).unwrap_err();
                assert_eq!(error.reason(), vector["error"], "{vector}");
                continue;
            }
            let parsed = Glob::parse(rendered).unwrap_or_else(|e| panic!("{vector}: {e}"));
            let from_segments = Glob::from_segments(strings(&vector["pattern_segments"])).unwrap();
            assert_eq!(parsed, from_segments, "{vector}");
            assert_eq!(parsed.as_str(), rendered, "{vector}");
            let path = strings(&vector["path"]);
            assert_eq!(
                parsed.matches_segments(&path),
                vector["match"].as_bool().unwrap(),
                "{vector}"
            );
        }
    }

    /// Every valid path of the path vectors is a glob matching itself (a literal `*` segment
    /// of a path is a wildcard in a glob, so it matches too), and the invalid ones fail with
    /// the same reason.
    #[test]
    fn path_vectors_are_globs_matching_themselves() {
        for vector in vectors("path_vectors.json") {
            let rendered = vector["rendered"].as_str().unwrap();
            if vector["valid"] == Value::Bool(false) {
                assert_eq!(
                    Glob::parse(rendered).unwrap_err().reason(),
                    vector["error"],
                    "{vector}"
                );
                continue;
            }
            let glob = Glob::parse(rendered).unwrap();
            assert!(
                glob.matches_segments(strings(&vector["segments"])),
                "{vector}"
            );
            assert!(glob.matches_rendered(rendered), "{vector}");
        }
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        assert_eq!(Glob::parse("a/**/z"), Err(GlobError::WildcardManyNotTail));
        assert_eq!(Glob::parse("a~2"), Err(GlobError::InvalidEscape));
        assert_eq!(
            Glob::from_segments(Vec::<String>::new()),
            Err(GlobError::EmptyPath)
        );
        assert_eq!("**".parse::<Glob>().unwrap(), Glob::all());
    }
}

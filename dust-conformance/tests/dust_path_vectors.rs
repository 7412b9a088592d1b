//! The project's path test vectors (`../shared/reference/dust-fixtures/path_vectors.json`)
//! against the emulation's path code, and through the wire.

mod common;

use std::path::PathBuf;

use common::dust::{StoreClient, dust};
use dust_conformance::dust::path;
use serde_json::{Value, json};

fn vectors() -> Vec<Value> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/dust-fixtures/path_vectors.json");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|error| {
        panic!(
            "the Dust path test vectors are missing: cannot read {} ({error}). They live in the \
             shared reference directory next to the workspace (shared/reference/dust-fixtures/path_vectors.json).",
            file.display()
        )
    });
    let vectors: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not a JSON list: {error}", file.display()));
    assert!(vectors.len() >= 20, "suspiciously few path vectors");
    vectors
}

#[test]
fn path_vectors_against_the_path_code() {
    for v in vectors() {
        let rendered = v["rendered"].as_str().expect("every vector has `rendered`");
        if v["valid"] == true {
            let segments: Vec<String> = serde_json::from_value(v["segments"].clone()).unwrap();
            assert_eq!(path::render(&segments).as_deref(), Ok(rendered), "{v}");
            assert_eq!(
                path::parse_rendered(rendered).as_ref(),
                Ok(&segments),
                "{v}"
            );
            assert_eq!(
                path::from_segments(&v["segments"]).as_ref(),
                Ok(&segments),
                "{v}"
            );
        } else {
            let error = path::parse_rendered(rendered).expect_err("an invalid vector");
            assert_eq!(error.reason(), v["error"], "{v}");
        }
    }
}

#[tokio::test]
async fn path_vectors_through_writes() {
    let d = dust().await;
    let mut c = StoreClient::dev(&d.server, "store:acme/paths").await;
    c.join_caught_up(json!(0)).await;
    for (i, v) in vectors().into_iter().enumerate() {
        let op_id = i.to_string();
        if v["valid"] == true {
            // By segments, then by the rendered string: the same path both ways.
            let (event, _) = c
                .write_ok(json!({"op": "set", "path_segments": v["segments"], "value": i, "client_op_id": op_id}))
                .await;
            assert_eq!(
                (&event["path"], &event["path_segments"]),
                (&v["rendered"], &v["segments"])
            );
            let (event, _) = c
                .write_ok(
                    json!({"op": "set", "path": v["rendered"], "value": i, "client_op_id": op_id}),
                )
                .await;
            assert_eq!(event["path_segments"], v["segments"], "{v}");
        } else {
            let response = c
                .write_err(
                    json!({"op": "set", "path": v["rendered"], "value": i, "client_op_id": op_id}),
                )
                .await;
            assert_eq!(response, json!({"reason": v["error"]}), "{v}");
        }
    }
}

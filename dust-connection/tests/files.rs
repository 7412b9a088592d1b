//! File refs: a `put_file` read back from the replica as a [`FileRef`] and its content fetched
//! over `GET /api/files/:hash` from the in-process emulation (whole and streamed), every
//! refusal as a typed error (401, 403, 429 with its rate headers), and, against a scripted
//! HTTP peer, 404, a body over the size limit, a content that does not match its hash, and a
//! download that stalls past the timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this test binary speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

use std::time::Duration;

use common::{STORE, TOKEN, connect, server, server_with, wait_engine, within};
use dust_conformance::dust::{DustConfig, RateLimit, TokenConfig};
use dust_connection::{DustConnection, FileError, FileRef, FileRefError, MemoryEngine, Replica};
use futures_util::StreamExt as _;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// sha256("hello")
const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// Content of many chunks' worth, not valid UTF-8.
fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// Uploads `bytes` at `docs/<name>` and waits until the replica holds its file ref.
async fn upload(dust: &DustConnection, engine: &MemoryEngine, name: &str, bytes: &[u8]) -> FileRef {
    let store = dust.store(STORE).unwrap();
    within(
        "put_file",
        store.put_file(
            ["docs", name],
            bytes.to_vec(),
            Some(format!("{name}.bin")),
            Some("application/x-test".into()),
        ),
    )
    .await
    .unwrap();
    let replica = engine.replica(STORE);
    let path = format!("docs/{name}");
    wait_engine(engine, "the file ref in the replica", || {
        replica.file_ref(path.as_str()).unwrap().is_some()
    })
    .await;
    replica.file_ref(path.as_str()).unwrap().unwrap()
}

#[tokio::test]
async fn a_put_file_reads_back_as_a_file_ref_whose_content_is_fetched_whole_and_streamed() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let dust = connect(&server, &engine).await;
    let bytes = content(300 << 10);
    let file = upload(&dust, &engine, "big", &bytes).await;
    assert_eq!(file.size, bytes.len() as u64);
    assert_eq!(file.content_type, "application/x-test");
    assert_eq!(file.filename.as_deref(), Some("big.bin"));
    assert!(file.sha256_hex().is_some(), "{file:?}");
    // The entry's form and the value's form agree.
    let entry = engine.replica(STORE).entry("docs/big").unwrap().unwrap();
    assert_eq!(FileRef::try_from(&entry).unwrap(), file);

    let fetched = within("fetch", dust.files().fetch(&file)).await.unwrap();
    assert_eq!(fetched.len(), bytes.len());
    assert!(fetched[..] == bytes[..], "the content differs");

    let mut body = within("open", dust.files().open(&file)).await.unwrap();
    let mut streamed = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = within("a chunk", body.next()).await {
        streamed.extend_from_slice(&chunk.unwrap());
        chunks += 1;
    }
    assert!(streamed == bytes, "the streamed content differs");
    assert!(chunks > 1, "300 KiB came in {chunks} chunk(s)");
    assert_eq!(body.received(), bytes.len() as u64);
}

#[tokio::test]
async fn a_value_that_is_not_a_file_ref_is_a_clear_error() {
    let server = server().await;
    let engine = MemoryEngine::new();
    let dust = connect(&server, &engine).await;
    let store = dust.store(STORE).unwrap();
    within("set", store.set(["docs", "text"], "hello"))
        .await
        .unwrap();
    within("set", store.set(["docs", "map"], json!({"a": 1})))
        .await
        .unwrap();
    let replica: Replica = engine.replica(STORE);
    wait_engine(&engine, "the writes", || {
        replica.get("docs/map/a").unwrap().is_some()
    })
    .await;
    assert_eq!(
        replica.file_ref("docs/text"),
        Err(FileRefError::NotAFile("string".into()))
    );
    assert_eq!(
        replica.file_ref("docs/map"),
        Err(FileRefError::NotAFile("map".into()))
    );
    assert_eq!(replica.file_ref("docs/none"), Ok(None));
    assert!(matches!(
        replica.file_ref("bad//path"),
        Err(FileRefError::Path(_))
    ));
    assert_eq!(
        FileRef::from_value(&json!({"_type": "file", "size": 1})),
        Err(FileRefError::Malformed("hash"))
    );
}

#[tokio::test]
async fn refusals_are_typed_errors() {
    let server = server_with(
        DustConfig::new()
            .token(TokenConfig::new(TOKEN))
            .api_read_limit(RateLimit::new(3, Duration::from_secs(30))),
    )
    .await;
    let engine = MemoryEngine::new();
    let dust = connect(&server, &engine).await;
    let file = upload(&dust, &engine, "a", b"hello").await;
    assert_eq!(file.hash, HELLO);

    // 401: an unknown token (a connection that never connects: downloads need no socket).
    let stranger = common::builder(&server)
        .token("dust_tok_unknown")
        .manual()
        .connect()
        .unwrap();
    let refused = within("401", stranger.files().fetch(&file)).await;
    assert!(
        matches!(refused, Err(FileError::Unauthorized)),
        "{refused:?}"
    );

    // 403: a hash no store references.
    let other = FileRef::from_value(&json!({
        "_type": "file", "size": 1,
        "hash": format!("sha256:{}", "ab".repeat(32)),
    }))
    .unwrap();
    let refused = within("403", dust.files().fetch(&other)).await;
    assert!(matches!(refused, Err(FileError::Forbidden)), "{refused:?}");

    // 429 once the read limit (3 per 30 s: the 403 above counted) is used up.
    assert_eq!(
        &within("fetch", dust.files().fetch(&file)).await.unwrap()[..],
        b"hello"
    );
    let _ = within("fetch", dust.files().fetch(&file)).await.unwrap();
    match within("429", dust.files().fetch(&file)).await {
        Err(FileError::RateLimited {
            retry_after,
            limit,
            remaining,
            reset,
        }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
            assert_eq!((limit, remaining), (Some(3), Some(0)));
            assert_eq!(reset, Some(Duration::from_secs(30)));
        }
        other => panic!("expected 429, got {other:?}"),
    }

    // A ref bigger than the limit is refused before any request.
    let small = dust.files().max_size(4);
    let refused = within("too large", small.fetch(&file)).await;
    assert!(
        matches!(refused, Err(FileError::TooLarge { limit: 4 })),
        "{refused:?}"
    );
    // A ref whose hash cannot be checked is refused before any request.
    let md5 = FileRef::from_value(&json!({"_type": "file", "size": 5, "hash": "md5:abc"})).unwrap();
    let refused = within("md5", dust.files().fetch(&md5)).await;
    assert!(
        matches!(refused, Err(FileError::UnsupportedHash(_))),
        "{refused:?}"
    );
}

/// A scripted HTTP peer: answers every request with `response`, then closes (or keeps the
/// connection open without a word more when `stall`). Returns its address and the request
/// heads it read.
async fn peer(
    response: Vec<u8>,
    stall: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(&response).await;
                if stall {
                    // Hold the connection open until the client gives up on it.
                    let _ = stream.read(&mut buf).await;
                }
            });
        }
    });
    (addr, received)
}

/// A connection to `addr` that never connects its socket (the peer speaks no WebSocket).
fn unconnected(addr: std::net::SocketAddr) -> DustConnection {
    DustConnection::builder(format!("ws://{addr}/ws/sync"))
        .token(TOKEN)
        .store(STORE)
        .manual()
        .connect()
        .unwrap()
}

fn hello() -> FileRef {
    FileRef::from_value(&json!({"_type": "file", "size": 5, "hash": HELLO})).unwrap()
}

#[tokio::test]
async fn the_request_carries_the_bearer_token_and_a_404_is_not_found() {
    let (addr, mut heads) = peer(
        b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"error\":\"not_found\"}".to_vec(),
        false,
    )
    .await;
    let refused = within("404", unconnected(addr).files().fetch(&hello())).await;
    assert!(matches!(refused, Err(FileError::NotFound)), "{refused:?}");
    let head = heads.recv().await.unwrap().to_ascii_lowercase();
    assert!(
        head.starts_with(&format!("get /api/files/{HELLO} http/1.1\r\n")),
        "{head}"
    );
    assert!(
        head.contains(&format!("authorization: bearer {TOKEN}\r\n")),
        "{head}"
    );
    assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
}

#[tokio::test]
async fn content_that_does_not_match_its_hash_is_refused() {
    let (addr, _heads) = peer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhellp".to_vec(),
        false,
    )
    .await;
    let refused = within("mismatch", unconnected(addr).files().fetch(&hello())).await;
    assert!(
        matches!(refused, Err(FileError::Mismatch { .. })),
        "{refused:?}"
    );
    // An announced length other than the ref's size is refused before the body.
    let (addr, _heads) = peer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
        false,
    )
    .await;
    let refused = within("length", unconnected(addr).files().fetch(&hello())).await;
    assert!(
        matches!(refused, Err(FileError::Mismatch { .. })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_ends_the_download_without_holding_it() {
    // No content-length: the body runs until the peer closes, and is counted as it comes.
    let mut response = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
    response.extend(content(64 << 10));
    let (addr, _heads) = peer(response, false).await;
    let file = FileRef::from_value(&json!({
        "_type": "file", "size": 1000, "hash": format!("sha256:{}", "00".repeat(32)),
    }))
    .unwrap();
    let files = unconnected(addr).files().max_size(1000);
    let mut body = within("open", files.open(&file)).await.unwrap();
    let mut last = None;
    while let Some(item) = within("a chunk", body.next()).await {
        last = Some(item);
    }
    assert!(
        matches!(last, Some(Err(FileError::TooLarge { limit: 1000 }))),
        "{last:?}"
    );
    // Counted as it came: the limit was crossed by what arrived, not by a header.
    assert!(body.received() > 1000, "{}", body.received());

    // Announced over the limit: refused before the body.
    let (addr, _heads) = peer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n".to_vec(),
        true,
    )
    .await;
    let refused = within(
        "announced",
        unconnected(addr).files().max_size(1000).fetch(&file),
    )
    .await;
    assert!(
        matches!(refused, Err(FileError::TooLarge { limit: 1000 })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_download_that_stalls_ends_at_the_timeout() {
    // The head and two bytes, then nothing.
    let (addr, _heads) = peer(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhe".to_vec(),
        true,
    )
    .await;
    let files = unconnected(addr)
        .files()
        .timeout(Duration::from_millis(300));
    let refused = within("timeout", files.fetch(&hello())).await;
    assert!(
        matches!(refused, Err(FileError::Timeout(t)) if t == Duration::from_millis(300)),
        "{refused:?}"
    );
    // A peer that never answers: the head is bounded by the same timeout.
    let (addr, _heads) = peer(Vec::new(), true).await;
    let refused = within(
        "timeout",
        unconnected(addr)
            .files()
            .timeout(Duration::from_millis(300))
            .fetch(&hello()),
    )
    .await;
    assert!(matches!(refused, Err(FileError::Timeout(_))), "{refused:?}");
}

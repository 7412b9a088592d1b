//! `GET /api/files/:hash` beside the WebSocket endpoint: the content of a `put_file` served
//! to a bearer of a store that references it, and every refusal of the real server's
//! `FileController` and `:api_auth` pipeline (401, 403, 404, 429 and the rate headers), also
//! after a restart from the state file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::dust::{Dust, StoreClient, dust_with, write};
use dust_conformance::dust::{DustConfig, RateLimit, StoreAccess, TokenConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOPIC: &str = "store:acme/files";
/// sha256("hello")
const HELLO: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// An HTTP answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// `GET path` over a plain TCP connection, with this bearer token if any.
async fn get(d: &Dust, path: &str, token: Option<&str>) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(d.server.local_addr())
        .await
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    common::within("the answer", stream.read_to_end(&mut raw))
        .await
        .unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            (n.to_ascii_lowercase(), v.to_owned())
        })
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn put(path: &str, content: &str, filename: Option<&str>, op_id: &str) -> Value {
    json!({
        "path": path,
        "content": content,
        "filename": filename,
        "content_type": "text/plain",
        "client_op_id": op_id,
    })
}

/// Uploads "hello" at `docs/a` of acme/files.
async fn upload_hello(d: &Dust) -> StoreClient {
    let mut c = StoreClient::dev(&d.server, TOPIC).await;
    c.join_caught_up(json!(0)).await;
    let r = c
        .push(
            "put_file",
            put("docs/a", "aGVsbG8=", Some("hello.txt"), "1"),
        )
        .await;
    c.event().await;
    assert_eq!(c.reply_to(&r).await["response"]["hash"], HELLO);
    c
}

#[tokio::test]
async fn the_content_of_a_put_file_is_served_to_a_bearer_of_its_store() {
    let d = dust_with(DustConfig::new()).await;
    let _c = upload_hello(&d).await;
    let path = format!("/api/files/{HELLO}");
    let answer = get(&d, &path, Some("dust_tok_dev")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"hello");
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(
        answer.header("content-disposition"),
        Some("inline; filename=\"hello.txt\"")
    );
    assert_eq!(answer.header("x-ratelimit-limit"), Some("1000"));
    assert_eq!(answer.header("x-ratelimit-remaining"), Some("999"));
    assert_eq!(answer.header("x-ratelimit-reset"), Some("60"));
    // The hash percent-encoded, as a URL library may send it.
    let encoded = get(&d, &path.replace(':', "%3A"), Some("dust_tok_dev")).await;
    assert_eq!((encoded.status, &encoded.body[..]), (200, &b"hello"[..]));
    assert_eq!(encoded.header("x-ratelimit-remaining"), Some("998"));
}

#[tokio::test]
async fn downloads_are_refused_as_the_real_server_refuses_them() {
    let d = dust_with(
        DustConfig::new()
            .token(TokenConfig::new("dust_tok_nofiles").scopes(["entries:read"]))
            .token(
                TokenConfig::new("dust_tok_elsewhere")
                    .access(StoreAccess::Selected(vec!["acme/other".into()])),
            ),
    )
    .await;
    let mut c = upload_hello(&d).await;
    let path = format!("/api/files/{HELLO}");
    let refused = |answer: &Answer, status: u16, error: &str| {
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.json(), json!({ "error": error }));
    };
    let anonymous = get(&d, &path, None).await;
    refused(&anonymous, 401, "unauthorized");
    assert_eq!(anonymous.header("x-ratelimit-limit"), None);
    refused(
        &get(&d, &path, Some("dust_tok_unknown")).await,
        401,
        "unauthorized",
    );
    // A token without files:read, and one that does not reach the store.
    let no_scope = get(&d, &path, Some("dust_tok_nofiles")).await;
    refused(&no_scope, 403, "forbidden");
    assert_eq!(no_scope.header("x-ratelimit-remaining"), Some("999"));
    refused(
        &get(&d, &path, Some("dust_tok_elsewhere")).await,
        403,
        "forbidden",
    );
    // A hash nothing references now: the entry was overwritten.
    c.write_ok(write("set", &["docs", "a"], json!(1), "2"))
        .await;
    refused(
        &get(&d, &path, Some("dust_tok_dev")).await,
        403,
        "forbidden",
    );
    // Referenced again: served again (the blob was kept).
    let r = c
        .push("put_file", put("docs/b", "aGVsbG8=", None, "3"))
        .await;
    c.event().await;
    assert_eq!(c.reply_to(&r).await["status"], "ok");
    let again = get(&d, &path, Some("dust_tok_dev")).await;
    assert_eq!((again.status, &again.body[..]), (200, &b"hello"[..]));
    // The first upload's filename stays the blob's.
    assert_eq!(
        again.header("content-disposition"),
        Some("inline; filename=\"hello.txt\"")
    );
}

#[tokio::test]
async fn reads_over_the_token_s_limit_get_429_with_retry_after() {
    let d = dust_with(DustConfig::new().api_read_limit(RateLimit::new(2, Duration::from_secs(30))))
        .await;
    let _c = upload_hello(&d).await;
    let path = format!("/api/files/{HELLO}");
    assert_eq!(get(&d, &path, Some("dust_tok_dev")).await.status, 200);
    let second = get(&d, &path, Some("dust_tok_dev")).await;
    assert_eq!(second.header("x-ratelimit-remaining"), Some("0"));
    let over = get(&d, &path, Some("dust_tok_dev")).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.json(), json!({"error": "rate_limited"}));
    assert_eq!(over.header("retry-after"), Some("30"));
    assert_eq!(over.header("x-ratelimit-remaining"), Some("0"));
    // The next window (the tests' clock is manual).
    d.clock.advance(Duration::from_secs(30));
    assert_eq!(get(&d, &path, Some("dust_tok_dev")).await.status, 200);
}

#[tokio::test]
async fn file_contents_survive_a_restart_from_the_state_file() {
    let dir = std::env::temp_dir().join(format!("dust-conformance-files-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.jsonl");
    let d = dust_with(DustConfig::new().state_file(&state)).await;
    let c = upload_hello(&d).await;
    drop(c);
    common::within("shutdown", d.server.shutdown()).await;
    let d2 = dust_with(DustConfig::new().state_file(&state)).await;
    let answer = get(&d2, &format!("/api/files/{HELLO}"), Some("dust_tok_dev")).await;
    assert_eq!((answer.status, &answer.body[..]), (200, &b"hello"[..]));
    assert_eq!(answer.header("content-type"), Some("text/plain"));
}

//! `GET /api/files/:hash`: the real server's `DustWeb.FileController.show` behind its
//! `:api_auth` pipeline (`ApiTokenAuth`, then `ApiRateLimit`'s read bucket).
//!
//! - no `Authorization: Bearer <token>` of a known token → 401 `{"error":"unauthorized"}`;
//! - over the token's read limit → 429 `{"error":"rate_limited"}` with `retry-after`;
//! - a token without `files:read`, or no store the token reaches holds a `file` entry with
//!   that hash now → 403 `{"error":"forbidden"}`;
//! - a blob whose content is gone → 404 `{"error":"not_found"}`;
//! - else 200 with the raw bytes, the blob's `content-type` and, when it has a filename,
//!   `content-disposition: inline; filename="…"`.
//!
//! Every answer after the token check carries `x-ratelimit-limit`, `-remaining` and `-reset`.

use bytes::Bytes;
use serde_json::{Value, json};

use super::state::DustShared;
use crate::shared::lock;

/// The path prefix this module serves.
pub(crate) const PREFIX: &str = "/api/files/";

/// An HTTP answer.
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
}

impl HttpAnswer {
    fn json(status: u16, error: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8".into())],
            body: Bytes::from(json!({ "error": error }).to_string()),
        }
    }

    fn with(mut self, headers: Vec<(&'static str, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    /// The whole HTTP/1.1 response, ending the connection.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            _ => "Error",
        };
        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Answers `GET {PREFIX}{hash}` (the hash percent-decoded) with the request's
/// `Authorization` header.
pub(crate) async fn serve(
    dust: &DustShared,
    hash: &str,
    authorization: Option<&str>,
) -> HttpAnswer {
    let Some(token) = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|raw| dust.tokens.get(raw))
        .cloned()
    else {
        return HttpAnswer::json(401, "unauthorized");
    };
    let limit = dust.api_read_limit;
    let window_s = limit.window.as_secs();
    let rate = match dust.check_api_read(&token.token) {
        Ok(count) => vec![
            ("x-ratelimit-limit", limit.max.to_string()),
            (
                "x-ratelimit-remaining",
                limit.max.saturating_sub(count).to_string(),
            ),
            ("x-ratelimit-reset", window_s.to_string()),
        ],
        Err(retry_ms) => {
            let retry = (retry_ms / 1000).to_string();
            return HttpAnswer::json(429, "rate_limited").with(vec![
                ("x-ratelimit-limit", limit.max.to_string()),
                ("x-ratelimit-remaining", "0".into()),
                ("x-ratelimit-reset", retry.clone()),
                ("retry-after", retry),
            ]);
        }
    };
    if !token.scopes.contains("files:read") || !referenced(dust, &token, hash).await {
        return HttpAnswer::json(403, "forbidden").with(rate);
    }
    let Some(file) = lock(&dust.files).get(hash).cloned() else {
        return HttpAnswer::json(404, "not_found").with(rate);
    };
    let mut headers = vec![("content-type", file.content_type)];
    if let Some(name) = file.filename {
        headers.push((
            "content-disposition",
            format!("inline; filename=\"{name}\""),
        ));
    }
    headers.extend(rate);
    HttpAnswer {
        status: 200,
        headers,
        body: file.content,
    }
}

/// Whether a store the token reaches holds a `file` entry with this hash now
/// (`find_accessible_store(token, &Sync.has_file_ref?(&1.id, hash))`).
async fn referenced(dust: &DustShared, token: &super::TokenConfig, hash: &str) -> bool {
    for store in dust.all() {
        if !DustShared::token_reaches(token, &store.org, &store.full_name()) {
            continue;
        }
        let data = store.data.lock().await;
        if data
            .entries
            .values()
            .any(|e| e.kind == "file" && e.value.get("hash").and_then(Value::as_str) == Some(hash))
        {
            return true;
        }
    }
    false
}

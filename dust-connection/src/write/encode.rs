//! Validation and wire encoding of writes: what the validation stage of the stack does.
//!
//! The params are byte-compatible with the Elixir seed: an object with its keys in sorted order
//! (as Jason writes small maps), `value` always present (`null` where unused), `if_absent` only
//! when true, and `path_segments` alongside the rendered `path`.

use std::collections::BTreeMap;

use base64::Engine as _;
use phoenix_channels::Payload;

use crate::format::Format;
use serde_json::{Value, json};

use super::op::{ClientOpId, FileContent, WriteOp, WriteRequest};
use super::path::{Path, PathError};
use super::reply::{RejectReason, Rejection};
use crate::layer::outbox_internal::Order;

/// A write checked and encoded for the wire, ready for the outbox.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EncodedWrite {
    /// The push event: `write`, or `put_file`.
    pub event: &'static str,
    /// The push payload.
    pub params: Payload,
    /// The idempotency key.
    pub client_op_id: ClientOpId,
    /// The op's name.
    pub op: &'static str,
    /// The path.
    pub path: Path,
    /// Its place in the store's issue order, taken when the write was made.
    pub(crate) order: Order,
}

fn invalid(reason: RejectReason, message: impl Into<String>) -> Rejection {
    let mut payload = serde_json::Map::new();
    payload.insert("reason".into(), Value::from(reason.as_str()));
    payload.insert("message".into(), Value::from(message.into()));
    Rejection { reason, payload }
}

fn path_invalid(error: PathError, what: &str) -> Rejection {
    invalid(
        RejectReason::parse(error.reason()),
        format!("{what}: {}", error.reason()),
    )
}

fn with_op(mut rejection: Rejection, op: &str) -> Rejection {
    rejection.payload.insert("op".into(), Value::from(op));
    rejection
}

/// A value that the server stores as several leaves (a map that is not a typed envelope).
fn is_multi_leaf(value: &Value) -> bool {
    match value {
        Value::Object(map) => !matches!(
            map.get("_type").and_then(Value::as_str),
            Some("file" | "lease")
        ),
        _ => false,
    }
}

fn segments_value(path: &Path) -> Value {
    Value::from(path.segments().to_vec())
}

/// Checks a write the way the server would, and encodes it. Fails, before anything is queued,
/// with the rejection the server would have sent.
/// The payload is encoded once, in `format`.
pub(crate) async fn encode(
    mut request: WriteRequest,
    format: Format,
) -> Result<EncodedWrite, Rejection> {
    // The write's place in its store's issue order goes along (a failed write gives it up).
    let order = std::mem::take(&mut request.order);
    let mut encoded = encode_checked(request, format).await?;
    encoded.order = order;
    Ok(encoded)
}

async fn encode_checked(request: WriteRequest, format: Format) -> Result<EncodedWrite, Rejection> {
    let WriteRequest {
        op,
        if_match,
        if_absent,
        fence,
        client_op_id,
        order: _,
    } = request;
    let name = op.name();
    let path = Path::new(op.path().to_vec()).map_err(|e| path_invalid(e, "path"))?;

    if if_match.is_some() {
        if !matches!(op, WriteOp::Set { .. } | WriteOp::Delete { .. }) {
            return Err(with_op(
                invalid(
                    RejectReason::IfMatchUnsupportedOp,
                    "if_match is for set and delete",
                ),
                name,
            ));
        }
        if let WriteOp::Set { value, .. } = &op
            && is_multi_leaf(value)
        {
            return Err(invalid(
                RejectReason::IfMatchMultiLeaf,
                "if_match needs a single-leaf value",
            ));
        }
    }
    if if_absent {
        if if_match.is_some() {
            return Err(invalid(
                RejectReason::InvalidPrecondition,
                "if_absent cannot go with if_match",
            ));
        }
        match &op {
            WriteOp::Set { value, .. } if is_multi_leaf(value) => {
                return Err(invalid(
                    RejectReason::IfAbsentMultiLeaf,
                    "if_absent needs a single-leaf value",
                ));
            }
            WriteOp::Set { .. } => {}
            _ => {
                return Err(with_op(
                    invalid(RejectReason::IfAbsentUnsupportedOp, "if_absent is for set"),
                    name,
                ));
            }
        }
    }

    let mut params: BTreeMap<&'static str, Value> = BTreeMap::new();
    params.insert("client_op_id", Value::from(client_op_id.as_str()));
    params.insert("path", Value::from(path.render()));
    params.insert("path_segments", segments_value(&path));

    if let WriteOp::PutFile {
        content,
        filename,
        content_type,
        ..
    } = op
    {
        let (bytes, default_name) = match content {
            FileContent::Bytes(bytes) => (bytes.to_vec(), None),
            FileContent::File(source) => {
                let bytes = tokio::fs::read(&source).await.map_err(|e| {
                    invalid(
                        RejectReason::Other("file_unreadable".into()),
                        format!("{}: {e}", source.display()),
                    )
                })?;
                let name = source.file_name().map(|n| n.to_string_lossy().into_owned());
                (bytes, name)
            }
        };
        params.insert(
            "content",
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)),
        );
        params.insert(
            "filename",
            filename.or(default_name).map_or(Value::Null, Value::from),
        );
        params.insert(
            "content_type",
            Value::from(content_type.unwrap_or_else(|| "application/octet-stream".to_owned())),
        );
        return finish(format, "put_file", params, client_op_id, "put_file", path);
    }

    let value = match op {
        WriteOp::Set { value, .. } => value,
        WriteOp::Delete { .. } => Value::Null,
        WriteOp::Merge { value, .. } => {
            if !value.is_object() {
                return Err(invalid(
                    RejectReason::MergeRequiresMapValue,
                    "merge needs a map",
                ));
            }
            value
        }
        WriteOp::Increment { by, .. } => {
            if !by.is_number() {
                return Err(invalid(
                    RejectReason::IncrementRequiresNumberValue,
                    "increment needs a number",
                ));
            }
            by
        }
        WriteOp::Add { member, .. } => {
            if member.is_null() {
                return Err(invalid(
                    RejectReason::AddRequiresValue,
                    "add needs a member",
                ));
            }
            member
        }
        WriteOp::Remove { member, .. } => {
            if member.is_null() {
                return Err(invalid(
                    RejectReason::RemoveRequiresValue,
                    "remove needs a member",
                ));
            }
            member
        }
        WriteOp::Lease { ttl_ms, holder, .. } => {
            params.insert("ttl_ms", Value::from(ttl_ms));
            if let Some(holder) = holder {
                params.insert("holder", Value::from(holder));
            }
            Value::Null
        }
        WriteOp::Renew { token, ttl_ms, .. } => {
            params.insert("ttl_ms", Value::from(ttl_ms));
            params.insert("token", Value::from(token));
            Value::Null
        }
        WriteOp::Release { token, .. } => {
            params.insert("token", Value::from(token));
            Value::Null
        }
        WriteOp::PutFile { .. } => Value::Null,
    };
    params.insert("op", Value::from(name));
    params.insert("value", value);
    if let Some(revision) = if_match {
        params.insert("if_match", Value::from(revision));
    }
    if if_absent {
        params.insert("if_absent", Value::Bool(true));
    }
    if let Some(fence) = fence {
        let key = Path::new(fence.key).map_err(|e| path_invalid(e, "fence key"))?;
        params.insert("fence", json!({"key": key.render(), "token": fence.token}));
    }
    finish(format, "write", params, client_op_id, name, path)
}

fn finish(
    format: Format,
    event: &'static str,
    params: BTreeMap<&'static str, Value>,
    client_op_id: ClientOpId,
    op: &'static str,
    path: Path,
) -> Result<EncodedWrite, Rejection> {
    let params = format
        .payload(&params)
        .map_err(|e| invalid(RejectReason::Other("unencodable".into()), e.to_string()))?;
    Ok(EncodedWrite {
        event,
        params,
        client_op_id,
        op,
        path,
        order: Order::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::op::Fence;

    async fn encode(request: WriteRequest) -> Result<EncodedWrite, Rejection> {
        super::encode(request, Format::Json).await
    }

    #[tokio::test]
    async fn a_messagepack_write_carries_the_same_params() {
        let request = || {
            WriteRequest::merge(
                ["users", "a/b"],
                json!({"n": 1.5, "tags": ["x"], "m": null}),
            )
            .fence(Fence::new(["locks", "k"], 9))
            .with_client_op_id("op_x")
        };
        let json = encode(request()).await.unwrap();
        let mp = super::encode(request(), Format::MessagePack).await.unwrap();
        assert!(mp.params.is_msgpack());
        assert_eq!(
            mp.params.to_value().unwrap(),
            json.params.to_value().unwrap()
        );
        let file = super::encode(
            WriteRequest::put_file(["f"], &b"\xff\x00bytes"[..]).with_client_op_id("op_f"),
            Format::MessagePack,
        )
        .await
        .unwrap();
        // The content stays base64 text: a MessagePack `bin` would reach the server as a
        // string, and one that is not UTF-8 would be refused.
        let params = file.params.to_value().unwrap();
        assert_eq!(params["content"], "/wBieXRlcw==");
    }

    async fn wire(request: WriteRequest) -> String {
        encode(request)
            .await
            .unwrap()
            .params
            .as_json()
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn params_match_the_seed_byte_for_byte() {
        let set = WriteRequest::set(["users", "a/b"], json!({"n": 1})).with_client_op_id("op_x");
        assert_eq!(
            wire(set).await,
            r#"{"client_op_id":"op_x","op":"set","path":"users/a~1b","path_segments":["users","a/b"],"value":{"n":1}}"#
        );
        let delete = WriteRequest::delete(["k"])
            .if_match(4)
            .with_client_op_id("op_y");
        assert_eq!(
            wire(delete).await,
            r#"{"client_op_id":"op_y","if_match":4,"op":"delete","path":"k","path_segments":["k"],"value":null}"#
        );
        let fenced = WriteRequest::set(["k"], 1)
            .if_absent()
            .fence(Fence::new(["locks", "k"], 9))
            .with_client_op_id("op_z");
        assert_eq!(
            wire(fenced).await,
            r#"{"client_op_id":"op_z","fence":{"key":"locks/k","token":9},"if_absent":true,"op":"set","path":"k","path_segments":["k"],"value":1}"#
        );
        let lease = WriteRequest::lease(["locks", "k"], 30_000, Some("w1".into()))
            .with_client_op_id("op_l");
        assert_eq!(
            wire(lease).await,
            r#"{"client_op_id":"op_l","holder":"w1","op":"lease","path":"locks/k","path_segments":["locks","k"],"ttl_ms":30000,"value":null}"#
        );
        let file = WriteRequest::put_file(["f"], b"hi".to_vec()).with_client_op_id("op_f");
        assert_eq!(
            wire(file).await,
            r#"{"client_op_id":"op_f","content":"aGk=","content_type":"application/octet-stream","filename":null,"path":"f","path_segments":["f"]}"#
        );
    }

    #[tokio::test]
    async fn bad_writes_fail_with_the_server_s_reasons() {
        let reason = |r: Result<EncodedWrite, Rejection>| r.unwrap_err().reason;
        assert_eq!(
            reason(encode(WriteRequest::set(Vec::<String>::new(), 1)).await),
            RejectReason::EmptyPath
        );
        assert_eq!(
            reason(encode(WriteRequest::set(["a", ""], 1)).await),
            RejectReason::EmptySegment
        );
        assert_eq!(
            reason(encode(WriteRequest::merge(["a"], 1)).await),
            RejectReason::MergeRequiresMapValue
        );
        assert_eq!(
            reason(encode(WriteRequest::increment(["a"], "x")).await),
            RejectReason::IncrementRequiresNumberValue
        );
        assert_eq!(
            reason(encode(WriteRequest::add(["a"], Value::Null)).await),
            RejectReason::AddRequiresValue
        );
        assert_eq!(
            reason(encode(WriteRequest::remove(["a"], Value::Null)).await),
            RejectReason::RemoveRequiresValue
        );
        let unsupported = encode(WriteRequest::increment(["a"], 1).if_match(1))
            .await
            .unwrap_err();
        assert_eq!(
            (unsupported.reason, unsupported.payload["op"].clone()),
            (RejectReason::IfMatchUnsupportedOp, json!("increment"))
        );
        assert_eq!(
            reason(encode(WriteRequest::set(["a"], json!({"x": 1})).if_match(1)).await),
            RejectReason::IfMatchMultiLeaf
        );
        assert_eq!(
            reason(encode(WriteRequest::set(["a"], json!({"x": 1})).if_absent()).await),
            RejectReason::IfAbsentMultiLeaf
        );
        assert_eq!(
            reason(encode(WriteRequest::delete(["a"]).if_absent()).await),
            RejectReason::IfAbsentUnsupportedOp
        );
        assert_eq!(
            reason(encode(WriteRequest::set(["a"], 1).if_absent().if_match(2)).await),
            RejectReason::InvalidPrecondition
        );
        assert_eq!(
            reason(
                encode(WriteRequest::set(["a"], 1).fence(Fence::new(Vec::<String>::new(), 1)))
                    .await
            ),
            RejectReason::EmptyPath
        );
        let missing = encode(WriteRequest::put_file_from(["a"], "/definitely/not/here"))
            .await
            .unwrap_err();
        assert_eq!(missing.reason.as_str(), "file_unreadable");
    }
}

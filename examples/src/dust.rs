//! `dust`: a scriptable Dust client that reads JSON commands on stdin and writes JSON events on
//! stdout, one per line. See the README for the formats.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use base64::Engine as _;
use dust_connection::{
    ControlError, Database, DeviceId, DustConnection, Fence, Format, MemoryEngine, Notice, Order,
    Paging, QueuedWrite, Replica, Store, SubscribeOptions, SyncedStore, WriteAck, WriteError,
    WriteOp, WriteRequest,
};
use futures_util::FutureExt as _;
use futures_util::StreamExt;
use futures_util::stream::{FuturesUnordered, SelectAll};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite};

use crate::{DEFAULT_OUTPUT_BUFFER, JsonLines, parse_output_buffer};

/// The options of the `dust` command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The Dust socket, e.g. `ws://localhost:7755/ws/sync`.
    pub url: String,
    /// The token.
    pub token: String,
    /// The stores.
    pub stores: Vec<String>,
    /// The device id (default: a new one).
    pub device_id: Option<String>,
    /// The heartbeat interval.
    pub heartbeat: Option<Duration>,
    /// A PEM file of root certificates to trust for `wss://` (`--ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// The bound of the output queue, in bytes (`--output-buffer`, default
    /// [`DEFAULT_OUTPUT_BUFFER`]): lines that do not fit are dropped and reported.
    pub output_buffer: usize,
    /// The wire format (`--format json|msgpack`, default `json`: `vsn=2.0.0`; `msgpack` is
    /// `vsn=3.0.0`).
    pub format: Format,
    /// The durable cache and outbox (`--db PATH`): writes are on disk before `queued` is
    /// printed and survive a crash; the replica is read from the file at start.
    pub db: Option<std::path::PathBuf>,
}

/// The usage text.
pub const USAGE: &str = "usage: dust --url ws://HOST:PORT/ws/sync --token T --store S [--store S2]... [--device-id D] [--heartbeat-ms N] [--ca-file PATH] [--output-buffer BYTES] [--format json|msgpack] [--db PATH]";

impl Options {
    /// Parses the command-line arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let (mut url, mut token, mut stores, mut device_id, mut heartbeat) =
            (None, None, Vec::new(), None, None);
        let mut ca_file = None;
        let mut output_buffer = DEFAULT_OUTPUT_BUFFER;
        let mut format = Format::Json;
        let mut db = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--output-buffer" {
                output_buffer = parse_output_buffer(args.next())?;
                continue;
            }
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--url" => url = Some(value("--url")?),
                "--token" => token = Some(value("--token")?),
                "--store" => stores.push(value("--store")?),
                "--device-id" => device_id = Some(value("--device-id")?),
                "--ca-file" => ca_file = Some(value("--ca-file")?.into()),
                "--db" => db = Some(value("--db")?.into()),
                "--format" => {
                    format = match value("--format")?.as_str() {
                        "json" => Format::Json,
                        "msgpack" => Format::MessagePack,
                        other => {
                            return Err(format!(
                                "--format needs `json` or `msgpack`, not `{other}`"
                            ));
                        }
                    }
                }
                "--heartbeat-ms" => {
                    let ms = value("--heartbeat-ms")?;
                    let ms: u64 = ms.parse().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        format!("--heartbeat-ms: `{ms}` is not a positive number")
                    })?;
                    heartbeat = Some(Duration::from_millis(ms));
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            }
        }
        let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
        let token = token.ok_or_else(|| format!("--token is required\n{USAGE}"))?;
        if stores.is_empty() {
            return Err(format!("at least one --store is required\n{USAGE}"));
        }
        Ok(Self {
            url,
            token,
            stores,
            device_id,
            heartbeat,
            ca_file,
            output_buffer,
            format,
            db,
        })
    }
}

fn segments(value: Option<&Value>, name: &str) -> Result<Vec<String>, String> {
    let list = value
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{name}` must be a list of strings"))?;
    list.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{name}` must be a list of strings"))
        })
        .collect()
}

fn number(command: &Value, name: &str) -> Result<Option<u64>, String> {
    match command.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a non-negative integer")),
    }
}

/// The write a `write` or `put_file` command asks for.
fn request(command: &Value) -> Result<WriteRequest, String> {
    let path = segments(command.get("path"), "path")?;
    let value = command.get("value").cloned().unwrap_or(Value::Null);
    let cmd = command
        .get("cmd")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut request = if cmd == "put_file" {
        let content = command
            .get("content_base64")
            .and_then(Value::as_str)
            .ok_or("`content_base64` is required")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| format!("`content_base64`: {e}"))?;
        let text = |name: &str| command.get(name).and_then(Value::as_str).map(str::to_owned);
        WriteRequest::put_file(path, bytes).file_meta(text("filename"), text("content_type"))
    } else {
        let op = command
            .get("op")
            .and_then(Value::as_str)
            .ok_or("`op` is required")?;
        let ttl = number(command, "ttl_ms")?.unwrap_or(30_000);
        let holder = command
            .get("holder")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let token =
            || number(command, "token")?.ok_or_else(|| format!("`token` is required for {op}"));
        let op = match op {
            "set" => WriteOp::Set { path, value },
            "delete" => WriteOp::Delete { path },
            "merge" => WriteOp::Merge { path, value },
            "increment" => WriteOp::Increment { path, by: value },
            "add" => WriteOp::Add {
                path,
                member: value,
            },
            "remove" => WriteOp::Remove {
                path,
                member: value,
            },
            "lease" => WriteOp::Lease {
                path,
                ttl_ms: ttl,
                holder,
            },
            "renew" => WriteOp::Renew {
                path,
                token: token()?,
                ttl_ms: ttl,
            },
            "release" => WriteOp::Release {
                path,
                token: token()?,
            },
            other => return Err(format!("unknown op `{other}`")),
        };
        WriteRequest::new(op)
    };
    if let Some(revision) = number(command, "if_match")? {
        request = request.if_match(revision);
    }
    if command.get("if_absent").and_then(Value::as_bool) == Some(true) {
        request = request.if_absent();
    }
    if let Some(fence) = command.get("fence").filter(|f| !f.is_null()) {
        let key = segments(fence.get("key"), "fence.key")?;
        let token = fence
            .get("token")
            .and_then(Value::as_u64)
            .ok_or("`fence.token` must be an integer")?;
        request = request.fence(Fence::new(key, token));
    }
    Ok(request)
}

/// The store a command names (`"store"`), with its name.
fn command_store<'a, T>(
    stores: &'a HashMap<String, T>,
    command: &Value,
) -> Result<(String, &'a T), String> {
    let name = command
        .get("store")
        .and_then(Value::as_str)
        .unwrap_or_default();
    stores
        .get(name)
        .map(|store| (name.to_owned(), store))
        .ok_or_else(|| format!("unknown store `{name}`"))
}

/// A `get` command: the value at `path` from the local replica (`null` when absent, a map
/// for a subtree), with the entry's type and revision when it is a leaf.
fn read_get(replica: &Replica, command: &Value) -> Result<Value, String> {
    let path = segments(command.get("path"), "path")?;
    let value = replica.get(path.clone()).map_err(|e| e.to_string())?;
    let mut answer = json!({"path": path, "value": value});
    if let Some(entry) = replica.entry(path).map_err(|e| e.to_string())? {
        answer["kind"] = json!(entry.kind);
        answer["revision"] = json!(entry.revision);
        answer["pending"] = json!(entry.pending);
    }
    Ok(answer)
}

/// An `enum` command: one page of the entries matching `pattern` (`limit`, `order`
/// `asc|desc`, `after` a cursor).
fn read_enum(replica: &Replica, command: &Value) -> Result<Value, String> {
    let pattern = command
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or("`pattern` (a glob) is required")?;
    let mut paging = Paging::new();
    if let Some(limit) = number(command, "limit")? {
        paging = paging.limit(usize::try_from(limit).map_err(|e| e.to_string())?);
    }
    paging = match command.get("order").and_then(Value::as_str) {
        None | Some("asc") => paging.order(Order::Asc),
        Some("desc") => paging.order(Order::Desc),
        Some(other) => return Err(format!("`order` is asc or desc, not `{other}`")),
    };
    if let Some(after) = command.get("after").and_then(Value::as_str) {
        paging = paging.after(after);
    }
    let page = replica
        .enumerate(pattern, paging)
        .map_err(|e| e.to_string())?;
    let entries: Vec<Value> = page
        .entries
        .into_iter()
        .map(|e| json!({"path": e.path, "value": e.value, "kind": e.kind, "revision": e.revision}))
        .collect();
    Ok(json!({"entries": entries, "next_cursor": page.next_cursor}))
}

/// The lines of a `subscribe` command.
type Lines = Pin<Box<dyn futures_util::Stream<Item = Value> + Send>>;

/// A `subscribe` command: the server-confirmed changes under `pattern` as `change` lines, in
/// seq order (and `lagged` lines where changes were lost), starting with the current entries
/// when `current` is true; they are printed until the end of the input, then those already
/// queued. The tool's own writes show here when the server confirms them, not before.
fn subscribe(replica: &Replica, store: &str, command: &Value, id: Value) -> Result<Lines, String> {
    let pattern = command
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or("`pattern` (a glob) is required")?;
    let current = command.get("current").and_then(Value::as_bool) == Some(true);
    let updates = replica
        .on_with(
            pattern,
            SubscribeOptions::new()
                .with_current(current)
                .confirmed_only(true),
        )
        .map_err(|e| e.to_string())?;
    let (store, pattern) = (store.to_owned(), pattern.to_owned());
    Ok(Box::pin(updates.map(move |item| match item {
        Ok(update) => json!({
            "type": "change", "id": id, "store": store, "pattern": pattern,
            "path": update.path.render(), "value": update.value, "seq": update.seq,
            "current": update.current,
        }),
        Err(lagged) => json!({"type": "lagged", "id": id, "missed": lagged.missed}),
    })))
}

/// Runs a `rollback` (`to_seq`, and `path` for one path) or `status` command on `store`, at
/// most 30 s; its reply as a JSON line's `reply`.
async fn control(store: &Store, cmd: &str, command: &Value) -> Result<Value, ControlError> {
    let invalid =
        |message: String| ControlError::UnexpectedReply(format!("bad command: {message}"));
    let call = async {
        if cmd == "status" {
            let status = store.status().await?;
            return Ok(Value::Object(status.raw));
        }
        let to_seq = number(command, "to_seq")
            .map_err(invalid)?
            .ok_or_else(|| invalid("`to_seq` is required".into()))?;
        match command.get("path") {
            Some(path) => {
                let path = segments(Some(path), "path").map_err(invalid)?;
                let rolled = store.rollback_path(path, to_seq).await?;
                Ok(json!({"store_seq": rolled.store_seq, "noop": rolled.noop}))
            }
            None => {
                let rolled = store.rollback(to_seq).await?;
                Ok(json!({"ops_written": rolled.ops_written}))
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .map_err(|_| ControlError::Transport(phoenix_channels::PushError::Timeout))?
}

type Answer = (Value, String, String, Result<WriteAck, WriteError>);

/// Where a write is: in the outbox (on disk with `--db`), or answered.
enum Step {
    Queued(Value, String, QueuedWrite),
    Answered(Answer),
}
type Pending = Pin<Box<dyn Future<Output = Step> + Send>>;

/// The answer of a queued write.
fn answer(id: Value, store: String, queued: QueuedWrite) -> Pending {
    let client_op_id = queued.client_op_id().to_string();
    Box::pin(async move { Step::Answered((id, store, client_op_id, queued.await)) })
}

fn answer_line((id, store, client_op_id, result): Answer) -> Value {
    match result {
        Ok(ack) => {
            json!({"type": "ack", "id": id, "store": store, "client_op_id": client_op_id, "reply": ack.reply()})
        }
        Err(error) => match error.rejection() {
            Some(rejection) => json!({
                "type": "rejected", "id": id, "store": store, "client_op_id": client_op_id,
                "reason": rejection.reason.as_str(), "payload": rejection.payload,
            }),
            None => json!({
                "type": "rejected", "id": id, "store": store, "client_op_id": client_op_id,
                "reason": "error", "payload": {"message": error.to_string()},
            }),
        },
    }
}

fn notice_line(notice: Notice) -> Option<Value> {
    Some(match notice {
        Notice::Joined {
            store,
            capabilities,
        } => json!({
            "type": "joined", "store": store, "store_seq": capabilities.store_seq,
            "capabilities": {"permissions": capabilities.permissions, "scopes": capabilities.scopes, "store_access": capabilities.store_access},
        }),
        Notice::Event { store, event } => json!({
            "type": "event", "store": store,
            "event": {
                "store_seq": event.store_seq, "op": event.op, "path": event.path, "path_segments": event.path_segments,
                "value": event.value, "device_id": event.device_id, "client_op_id": event.client_op_id,
            },
        }),
        Notice::Snapshot {
            store,
            snapshot_seq,
        } => json!({"type": "snapshot", "store": store, "snapshot_seq": snapshot_seq}),
        Notice::CatchUpComplete { store, through_seq } => {
            json!({"type": "catch_up_complete", "store": store, "through_seq": through_seq})
        }
        Notice::Status {
            store,
            status,
            reason,
        } => {
            json!({"type": "store_status", "store": store, "status": status.as_str(), "reason": reason})
        }
        Notice::Resync { store, reason } => {
            json!({"type": "resync", "store": store, "reason": reason})
        }
        _ => return None,
    })
}

/// The `state` line of a store: its local replica, by rendered path, and the last server seq
/// applied to it.
fn state_line(engine: &MemoryEngine, store: &str) -> Value {
    json!({
        "type": "state",
        "store": store,
        "last_seq": engine.seq(store),
        "entries": engine.entries(store),
    })
}

/// Runs the tool: connects, executes the commands read from `input` in order, writes events to
/// `output`; at the end of the input waits (at most 30 s) for outstanding writes, disconnects.
pub async fn run<R, W>(options: Options, input: R, output: W) -> Result<(), String>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // The durable cache and outbox, with `--db`.
    let database = match &options.db {
        Some(path) => {
            Some(Database::open(path).map_err(|e| format!("--db {}: {e}", path.display()))?)
        }
        None => None,
    };
    // The local replica, which `get`, `enum`, `subscribe` and `state` read: with `--db`, the
    // durable cache in the same file (read at once, before any connection).
    let engine = match &database {
        Some(database) => MemoryEngine::open(database).map_err(|e| format!("--db: {e}"))?,
        None => MemoryEngine::new(),
    };
    let mut builder = DustConnection::builder(&options.url)
        .token(&options.token)
        .format(options.format)
        .engine(engine.clone());
    if let Some(database) = &database {
        builder = builder.durable_outbox(database.clone());
    }
    for store in &options.stores {
        builder = builder.store(store);
    }
    if let Some(id) = &options.device_id {
        builder = builder.device_id(DeviceId::new(id));
    }
    if let Some(heartbeat) = options.heartbeat {
        builder = builder.socket(move |s| s.heartbeat_interval(heartbeat));
    }
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        builder = builder.socket(move |s| s.root_certificates_pem(pem));
    }
    // Built in manual mode so that no notice is missed: subscribe, then connect.
    let connection = builder.manual().connect().map_err(|e| e.to_string())?;

    let (lines_out, writer) = JsonLines::bounded(output, options.output_buffer);
    let emit = move |line: Value| lines_out.emit(line);

    let mut changes = connection.state_changes();
    let mut notices = connection.notices();
    let emit_changes = emit.clone();
    let watcher = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let (mut changes_open, mut notices_open) = (true, true);
        while changes_open || notices_open {
            tokio::select! {
                change = changes.recv(), if changes_open => match change {
                    Ok(c) => emit_changes(json!({"type": "status", "from": c.from.map(|s| s.as_str()), "to": c.to.as_str(), "reason": c.reason})),
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => changes_open = false,
                },
                notice = notices.recv(), if notices_open => match notice {
                    Ok(n) => if let Some(line) = notice_line(n) { emit_changes(line) },
                    Err(RecvError::Lagged(n)) => emit_changes(json!({"type": "lagged", "dropped": n})),
                    Err(RecvError::Closed) => notices_open = false,
                },
            }
        }
    });
    connection.connect();

    // Writes are optimistic: a `get` sees them before their answer.
    let stores: HashMap<String, SyncedStore> = options
        .stores
        .iter()
        .filter_map(|s| {
            let store = connection.store(s).ok()?;
            Some((s.clone(), engine.replica(s).optimistic(&store)))
        })
        .collect();
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    // The writes the durable outbox held: their answers are printed as they come.
    for (name, store) in &stores {
        for queued in store.store().recovered() {
            pending.push(answer(Value::Null, name.clone(), queued));
        }
    }
    let durable = database.is_some();
    let on_step = |step: Step, pending: &mut FuturesUnordered<Pending>| match step {
        Step::Queued(id, store, queued) => {
            if durable {
                emit(
                    json!({"type": "queued", "id": id, "store": store, "client_op_id": queued.client_op_id().as_str()}),
                );
            }
            pending.push(answer(id, store, queued));
        }
        Step::Answered(answer) => emit(answer_line(answer)),
    };
    // The `subscribe` commands' lines (`update`, `lagged`), printed as they come.
    let mut subscriptions: SelectAll<Lines> = SelectAll::new();
    let mut lines = input.lines();
    loop {
        let line = tokio::select! {
            biased;
            Some(step) = pending.next(), if !pending.is_empty() => { on_step(step, &mut pending); continue; }
            Some(update) = subscriptions.next(), if !subscriptions.is_empty() => { emit(update); continue; }
            line = lines.next_line() => line,
        };
        let line = match line {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                emit(json!({"type": "error", "message": format!("reading input: {e}")}));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let command: Value = match serde_json::from_str(&line) {
            Ok(command) => command,
            Err(e) => {
                emit(json!({"type": "error", "message": format!("not JSON: {e}"), "line": line}));
                continue;
            }
        };
        match command.get("cmd").and_then(Value::as_str) {
            Some("write" | "put_file") => {
                let id = command.get("id").cloned().unwrap_or(Value::Null);
                let (store_name, store) = match command_store(&stores, &command) {
                    Ok((name, store)) => (name, store.clone()),
                    Err(message) => {
                        emit(json!({"type": "error", "message": message, "line": line}));
                        continue;
                    }
                };
                let request = match request(&command) {
                    Ok(request) => request,
                    Err(message) => {
                        emit(json!({"type": "error", "message": message, "line": line}));
                        continue;
                    }
                };
                let client_op_id = request.client_op_id.to_string();
                // The write takes its place in the store's order now, and is applied to the
                // replica's view at once.
                let queue = store.queue(request);
                let mut write: Pending = Box::pin(async move {
                    match queue.await {
                        Ok(queued) => Step::Queued(id, store_name, queued),
                        Err(error) => Step::Answered((id, store_name, client_op_id, Err(error))),
                    }
                });
                match futures_util::poll!(write.as_mut()) {
                    Poll::Ready(step) => on_step(step, &mut pending),
                    Poll::Pending => pending.push(write),
                }
            }
            Some(cmd @ ("rollback" | "status")) => {
                let id = command.get("id").cloned().unwrap_or(Value::Null);
                let (store_name, store) = match command_store(&stores, &command) {
                    Ok(found) => found,
                    Err(message) => {
                        emit(json!({"type": "error", "message": message, "line": line}));
                        continue;
                    }
                };
                match control(store.store(), cmd, &command).await {
                    Ok(reply) => {
                        emit(json!({"type": cmd, "id": id, "store": store_name, "reply": reply}))
                    }
                    Err(ControlError::Rejected(rejection)) => emit(json!({
                        "type": "rejected", "id": id, "store": store_name,
                        "reason": rejection.reason.as_str(), "payload": rejection.payload,
                    })),
                    Err(error) => emit(
                        json!({"type": "error", "id": id, "message": error.to_string(), "line": line}),
                    ),
                }
            }
            Some(cmd @ ("get" | "enum" | "subscribe")) => {
                let id = command.get("id").cloned().unwrap_or(Value::Null);
                let (store_name, _) = match command_store(&stores, &command) {
                    Ok(found) => found,
                    Err(message) => {
                        emit(json!({"type": "error", "message": message, "line": line}));
                        continue;
                    }
                };
                let replica = engine.replica(&store_name);
                let read = match cmd {
                    "get" => read_get(&replica, &command),
                    "enum" => read_enum(&replica, &command),
                    _ => subscribe(&replica, &store_name, &command, id.clone()).map(|updates| {
                        subscriptions.push(updates);
                        json!({"subscribed": true})
                    }),
                };
                match read {
                    Ok(mut answer) => {
                        answer["type"] = json!(cmd);
                        answer["id"] = id;
                        answer["store"] = json!(store_name);
                        emit(answer);
                    }
                    Err(message) => {
                        emit(json!({"type": "error", "id": id, "message": message, "line": line}))
                    }
                }
            }
            Some("info") => {
                let mut info = connection.info().to_json();
                info["type"] = json!("info");
                emit(info);
            }
            Some("state") => match command.get("store") {
                None => options
                    .stores
                    .iter()
                    .for_each(|store| emit(state_line(&engine, store))),
                Some(Value::String(store)) if options.stores.contains(store) => {
                    emit(state_line(&engine, store));
                }
                Some(other) => emit(
                    json!({"type": "error", "message": format!("unknown store {other}"), "line": line}),
                ),
            },
            Some("wait") => match command.get("ms").and_then(Value::as_u64) {
                Some(ms) => {
                    let sleep = tokio::time::sleep(Duration::from_millis(ms));
                    tokio::pin!(sleep);
                    loop {
                        tokio::select! {
                            () = &mut sleep => break,
                            Some(step) = pending.next(), if !pending.is_empty() => on_step(step, &mut pending),
                        }
                    }
                }
                None => emit(
                    json!({"type": "error", "message": "`ms` (a number) is required", "line": line}),
                ),
            },
            Some("wait_acked") => {
                while let Some(step) = pending.next().await {
                    on_step(step, &mut pending);
                }
                emit(json!({"type": "wait_acked", "outstanding": 0}));
            }
            Some(other) => emit(
                json!({"type": "error", "message": format!("unknown command `{other}`"), "line": line}),
            ),
            None => emit(
                json!({"type": "error", "message": "`cmd` (a string) is required", "line": line}),
            ),
        }
    }
    let drain = async {
        while let Some(step) = pending.next().await {
            on_step(step, &mut pending);
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        emit(
            json!({"type": "error", "message": "gave up waiting for outstanding writes after 30 s"}),
        );
    }
    // The changes already queued for the subscribers (every one the replica applied so far).
    while let Some(Some(update)) = subscriptions.next().now_or_never() {
        emit(update);
    }
    drop(subscriptions);
    connection.disconnect().await;
    // Dropping the handles ends the stores' workers and closes the notice streams; the watcher
    // then ends after printing what is left.
    drop(stores);
    drop(connection);
    if tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .is_err()
    {
        tracing::warn!("the notice watcher did not end");
    }
    drop(emit);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_into_writes() {
        let write = request(
            &json!({"cmd": "write", "op": "set", "path": ["a", "b"], "value": 1, "if_match": 3}),
        )
        .unwrap();
        assert_eq!(
            write.op,
            WriteOp::Set {
                path: vec!["a".into(), "b".into()],
                value: json!(1)
            }
        );
        assert_eq!(write.if_match, Some(3));
        let fenced = request(&json!({"cmd": "write", "op": "increment", "path": ["n"], "value": 2, "fence": {"key": ["l"], "token": 7}})).unwrap();
        assert_eq!(fenced.fence, Some(Fence::new(["l"], 7)));
        assert!(
            request(&json!({"cmd": "write", "op": "renew", "path": ["l"]}))
                .unwrap_err()
                .contains("token")
        );
        assert!(request(&json!({"cmd": "write", "op": "fly", "path": ["l"]})).is_err());
        assert!(request(&json!({"cmd": "write", "op": "set", "path": "a/b"})).is_err());
        let file = request(&json!({"cmd": "put_file", "path": ["f"], "content_base64": "aGk=", "filename": "f.txt"})).unwrap();
        assert!(
            matches!(file.op, WriteOp::PutFile { ref filename, .. } if filename.as_deref() == Some("f.txt"))
        );
    }

    #[test]
    fn parses_the_command_line() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let o = Options::parse(args(
            "--url u --token t --store a --store b --device-id d --heartbeat-ms 100",
        ))
        .unwrap();
        assert_eq!((o.stores.len(), o.device_id.as_deref()), (2, Some("d")));
        assert_eq!(o.ca_file, None);
        let o = Options::parse(args("--url u --token t --store a --ca-file ca.pem")).unwrap();
        assert_eq!(o.ca_file, Some("ca.pem".into()));
        assert!(Options::parse(args("--url u --token t")).is_err());
        assert!(Options::parse(args("--url u --store s")).is_err());
        let o = Options::parse(args("--url u --token t --store a --format msgpack")).unwrap();
        assert_eq!(o.format, Format::MessagePack);
        assert_eq!(
            Options::parse(args("--url u --token t --store a"))
                .unwrap()
                .format,
            Format::Json
        );
        assert!(Options::parse(args("--url u --token t --store a --format xml")).is_err());
    }
}

//! `phx`: a scriptable Phoenix Channels client that reads JSON commands on stdin and writes JSON
//! events on stdout, one per line. See the README for the command and event formats.
//!
//! The tool's logic is here, behind [`run`], so that tests drive it with in-memory input and
//! output; `examples/phx.rs` only wires it to the process's stdin and stdout.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use phoenix_channels::{
    Channel, ChannelContext, ChannelHandler, CloseCause, DisconnectReason, Joined, Message,
    Payload, PushError, RejoinCause, Serializer, Socket, SocketStatus,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite};
use tokio::task::JoinSet;

use crate::{DEFAULT_OUTPUT_BUFFER, JsonLines, parse_output_buffer};

/// The options of the `phx` command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The socket endpoint, e.g. `ws://localhost:4000/socket`.
    pub url: String,
    /// Connect params (`--param k=v`).
    pub params: Vec<(String, String)>,
    /// Heartbeat interval (`--heartbeat-ms`).
    pub heartbeat: Option<Duration>,
    /// Push and join timeout (`--timeout-ms`).
    pub timeout: Option<Duration>,
    /// A PEM file of root certificates to trust for `wss://` (`--ca-file`).
    pub ca_file: Option<std::path::PathBuf>,
    /// The bound of the output queue, in bytes (`--output-buffer`, default
    /// [`DEFAULT_OUTPUT_BUFFER`]): lines that do not fit are dropped and reported.
    pub output_buffer: usize,
    /// The wire format (`--format json|msgpack`, default `json`: `vsn=2.0.0`; `msgpack` is
    /// `vsn=3.0.0`). Commands and events are JSON lines either way.
    pub format: Serializer,
}

/// The usage text.
pub const USAGE: &str = "usage: phx --url ws://HOST:PORT/socket [--param k=v]... [--heartbeat-ms N] [--timeout-ms N] [--ca-file PATH] [--output-buffer BYTES] [--format json|msgpack]";

impl Options {
    /// Parses the command-line arguments (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut url = None;
        let mut params = Vec::new();
        let mut heartbeat = None;
        let mut timeout = None;
        let mut ca_file = None;
        let mut output_buffer = DEFAULT_OUTPUT_BUFFER;
        let mut format = Serializer::Json;
        let mut args = args.into_iter();
        let millis = |flag: &str, value: Option<String>| -> Result<Duration, String> {
            let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
            value
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    format!("{flag}: `{value}` is not a positive number of milliseconds")
                })
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--url" => url = Some(args.next().ok_or("--url needs a value")?),
                "--param" => {
                    let pair = args.next().ok_or("--param needs k=v")?;
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("--param `{pair}` is not k=v"))?;
                    params.push((k.to_owned(), v.to_owned()));
                }
                "--heartbeat-ms" => heartbeat = Some(millis("--heartbeat-ms", args.next())?),
                "--timeout-ms" => timeout = Some(millis("--timeout-ms", args.next())?),
                "--ca-file" => ca_file = Some(args.next().ok_or("--ca-file needs a path")?.into()),
                "--output-buffer" => output_buffer = parse_output_buffer(args.next())?,
                "--format" => {
                    format = match args.next().as_deref() {
                        Some("json") => Serializer::Json,
                        Some("msgpack") => Serializer::MessagePack,
                        other => {
                            return Err(format!(
                                "--format needs `json` or `msgpack`, not {other:?}"
                            ));
                        }
                    }
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
            }
        }
        let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
        Ok(Self {
            url,
            params,
            heartbeat,
            timeout,
            ca_file,
            output_buffer,
            format,
        })
    }
}

fn reason_fields(reason: &DisconnectReason) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    fields.insert("reason".into(), json!(reason.to_string()));
    match reason {
        DisconnectReason::Http { status } => {
            fields.insert("http_status".into(), json!(status));
        }
        DisconnectReason::Closed { code, .. } => {
            fields.insert("close_code".into(), json!(code));
        }
        _ => {}
    }
    fields
}

fn status_lines(status: &SocketStatus) -> Vec<Value> {
    let line = |name: &str, reason: Option<&DisconnectReason>| {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), json!("status"));
        object.insert("status".into(), json!(name));
        if let Some(reason) = reason {
            object.extend(reason_fields(reason));
        }
        Value::Object(object)
    };
    match status {
        SocketStatus::Connecting { attempt } => {
            let mut l = line("connecting", None);
            l["attempt"] = json!(attempt);
            vec![l]
        }
        SocketStatus::Connected => vec![line("connected", None)],
        SocketStatus::Reconnecting {
            attempt,
            delay,
            reason,
        } => {
            let mut reconnecting = line("reconnecting", Some(reason));
            reconnecting["attempt"] = json!(attempt);
            reconnecting["delay_ms"] = json!(delay.as_millis() as u64);
            vec![line("disconnected", Some(reason)), reconnecting]
        }
        SocketStatus::Disconnected { reason } => vec![line("disconnected", reason.as_ref())],
        _ => vec![line(status.as_str(), None)],
    }
}

fn push_error_name(error: &PushError) -> &'static str {
    match error {
        PushError::Timeout => "timeout",
        PushError::Disconnected => "disconnected",
        PushError::ChannelErrored => "channel_errored",
        PushError::ChannelClosed => "channel_closed",
        PushError::NotJoined => "not_joined",
        PushError::BufferFull { .. } => "buffer_full",
        PushError::SocketClosed => "socket_closed",
        PushError::Encode(_) => "encode",
        PushError::Payload(_) => "payload",
        _ => "other",
    }
}

/// Prints what happens on one channel.
struct Printer {
    out: JsonLines,
    params: Payload,
}

#[async_trait]
impl ChannelHandler for Printer {
    async fn join_params(&mut self, _ctx: &ChannelContext) -> Option<Payload> {
        Some(self.params.clone())
    }

    async fn on_joined(&mut self, ctx: &ChannelContext, joined: Joined) {
        self.out.emit(json!({"type": "joined", "topic": ctx.topic().as_str(), "response": joined.response.to_display_value()}));
    }

    async fn on_join_error(&mut self, ctx: &ChannelContext, cause: RejoinCause) {
        let response = match cause {
            RejoinCause::Rejected(response) => response.to_display_value(),
            other => json!({"reason": other.to_string()}),
        };
        self.out.emit(
            json!({"type": "join_error", "topic": ctx.topic().as_str(), "response": response}),
        );
    }

    async fn on_message(&mut self, ctx: &ChannelContext, message: Message) {
        self.out.emit(json!({
            "type": "message",
            "topic": ctx.topic().as_str(),
            "event": message.event.as_str(),
            "payload": message.payload.to_display_value(),
        }));
    }

    async fn on_close(&mut self, ctx: &ChannelContext, cause: CloseCause) {
        self.out.emit(
            json!({"type": "close", "topic": ctx.topic().as_str(), "reason": cause.to_string()}),
        );
    }

    async fn on_overflow(&mut self, ctx: &ChannelContext, dropped: u64) {
        self.out
            .emit(json!({"type": "overflow", "topic": ctx.topic().as_str(), "dropped": dropped}));
    }
}

fn str_field<'a>(command: &'a Value, name: &str) -> Result<&'a str, String> {
    command
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("`{name}` (a string) is required"))
}

/// The payload of a push or cast: `payload` (JSON, default `{}`) or `binary_base64`.
fn payload_of(command: &Value) -> Result<Payload, String> {
    if let Some(b64) = command.get("binary_base64") {
        let text = b64.as_str().ok_or("`binary_base64` must be a string")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("`binary_base64`: {e}"))?;
        return Ok(Payload::binary(bytes));
    }
    Ok(command
        .get("payload")
        .map_or_else(Payload::empty, Payload::from))
}

struct Session {
    socket: Socket,
    out: JsonLines,
    channels: HashMap<String, Channel>,
    pushes: JoinSet<()>,
}

impl Session {
    fn channel(&self, command: &Value) -> Result<&Channel, String> {
        let topic = str_field(command, "topic")?;
        self.channels
            .get(topic)
            .ok_or_else(|| format!("topic `{topic}` is not joined: send a join first"))
    }

    async fn handle(&mut self, command: &Value) -> Result<(), String> {
        match str_field(command, "cmd")? {
            "join" => {
                let topic = str_field(command, "topic")?.to_owned();
                let params = command
                    .get("params")
                    .map_or_else(Payload::empty, Payload::from);
                let channel = match self.channels.get(&topic) {
                    Some(channel) => channel.clone(),
                    None => {
                        let printer = Printer {
                            out: self.out.clone(),
                            params,
                        };
                        let channel = self.socket.channel(topic.as_str()).handler(printer);
                        let mut states = channel.state_watch();
                        let out = self.out.clone();
                        let watched = topic.clone();
                        tokio::spawn(async move {
                            while states.changed().await.is_ok() {
                                let state = *states.borrow_and_update();
                                out.emit(json!({"type": "channel", "topic": watched, "state": state.as_str()}));
                            }
                        });
                        self.channels.insert(topic, channel.clone());
                        channel
                    }
                };
                drop(channel.join());
            }
            "push" => {
                let event = str_field(command, "event")?.to_owned();
                let payload = payload_of(command)?;
                let id = command.get("id").cloned().unwrap_or(Value::Null);
                let push = self.channel(command)?.push_payload(event, payload);
                let out = self.out.clone();
                self.pushes.spawn(async move {
                    match push.await {
                        Ok(reply) => out.emit(json!({
                            "type": "reply",
                            "id": id,
                            "status": reply.status().as_str(),
                            "response": reply.response().to_display_value(),
                        })),
                        Err(error) => out.emit(json!({
                            "type": "push_error",
                            "id": id,
                            "error": push_error_name(&error),
                            "message": error.to_string(),
                        })),
                    }
                });
            }
            "cast" => {
                let event = str_field(command, "event")?.to_owned();
                let payload = payload_of(command)?;
                self.channel(command)?.cast_payload(event, payload);
            }
            "leave" => {
                let channel = self.channel(command)?.clone();
                channel.leave().await;
            }
            "wait" => {
                let ms = command
                    .get("ms")
                    .and_then(Value::as_u64)
                    .ok_or("`ms` (a number) is required")?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return Err(format!("unknown command `{other}`")),
        }
        Ok(())
    }

    async fn finish(mut self) {
        while self.pushes.join_next().await.is_some() {}
        for channel in self.channels.values() {
            channel.leave().await;
        }
        self.socket.disconnect().await;
    }
}

/// Runs the tool: connects, executes the commands read from `input` in order, writes events to
/// `output`, and at the end of the input waits for outstanding replies, leaves every channel and
/// disconnects.
pub async fn run<R, W>(options: Options, input: R, output: W) -> Result<(), String>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Socket::builder(&options.url).serializer(options.format);
    for (k, v) in &options.params {
        builder = builder.param(k, v);
    }
    if let Some(heartbeat) = options.heartbeat {
        builder = builder.heartbeat_interval(heartbeat);
    }
    if let Some(timeout) = options.timeout {
        builder = builder.push_timeout(timeout).join_timeout(timeout);
    }
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        builder = builder.root_certificates_pem(pem);
    }
    let socket = builder.connect().map_err(|e| e.to_string())?;

    let (out, writer) = JsonLines::bounded(output, options.output_buffer);

    let mut statuses = socket.status_watch();
    let status_out = out.clone();
    let first = statuses.borrow_and_update().clone();
    status_lines(&first).into_iter().for_each(|l| out.emit(l));
    let status_task = tokio::spawn(async move {
        while statuses.changed().await.is_ok() {
            let status = statuses.borrow_and_update().clone();
            status_lines(&status)
                .into_iter()
                .for_each(|l| status_out.emit(l));
        }
    });

    let mut session = Session {
        socket,
        out: out.clone(),
        channels: HashMap::new(),
        pushes: JoinSet::new(),
    };
    let mut lines = input.lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                out.emit(json!({"type": "error", "message": format!("reading input: {e}")}));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let result = match serde_json::from_str::<Value>(&line) {
            Ok(command) => session.handle(&command).await,
            Err(e) => Err(format!("not JSON: {e}")),
        };
        if let Err(message) = result {
            out.emit(json!({"type": "error", "message": message, "line": line}));
        }
    }
    session.finish().await;
    // The watchers end with the socket; then the writer drains what is left.
    let _ = status_task.await;
    drop(out);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_command_line() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let options = Options::parse(args(
            "--url ws://h/socket --param a=1 --param b=x=y --heartbeat-ms 500 --timeout-ms 2000",
        ))
        .unwrap();
        assert_eq!(options.url, "ws://h/socket");
        assert_eq!(
            options.params,
            [("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
        assert_eq!(options.heartbeat, Some(Duration::from_millis(500)));
        assert_eq!(options.timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            Options::parse(args("--url u --ca-file /etc/ca.pem")).map(|o| o.ca_file),
            Ok(Some("/etc/ca.pem".into()))
        );
        assert!(
            Options::parse(args("--param a=1"))
                .unwrap_err()
                .contains("--url is required")
        );
        assert!(Options::parse(args("--url u --param nope")).is_err());
        assert_eq!(
            Options::parse(args("--url u --format msgpack")).map(|o| o.format),
            Ok(Serializer::MessagePack)
        );
        assert_eq!(
            Options::parse(args("--url u")).map(|o| o.format),
            Ok(Serializer::Json)
        );
        assert!(Options::parse(args("--url u --format xml")).is_err());
        assert!(Options::parse(args("--url u --timeout-ms 0")).is_err());
        assert!(
            Options::parse(args("--url u --bogus"))
                .unwrap_err()
                .contains("unknown argument")
        );
    }

    #[test]
    fn status_lines_carry_reasons() {
        let lines = status_lines(&SocketStatus::Reconnecting {
            attempt: 2,
            delay: Duration::from_millis(50),
            reason: DisconnectReason::Http { status: 503 },
        });
        assert_eq!(lines[0]["status"], "disconnected");
        assert_eq!(lines[0]["http_status"], 503);
        assert_eq!(lines[1]["status"], "reconnecting");
        assert_eq!(lines[1]["delay_ms"], 50);
    }
}

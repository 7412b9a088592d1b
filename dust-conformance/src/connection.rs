//! One websocket connection: Phoenix's `Phoenix.Socket` transport process.
//!
//! A single task reads frames and dispatches them (heartbeat, join, leave, pushes to channels),
//! handles control commands and channel exits, and runs the idle timer. A second task writes:
//! every frame of the connection (replies, pushes, broadcasts, closes) goes through its FIFO
//! queue, which is where delays and stalls apply.

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::channel::{
    ChannelHandle, ChannelMsg, ChannelSpawn, Exit, JoinOutcome, TerminateReason, spawn_channel,
};
use crate::control::ConnectionId;
use crate::frame::{self, Incoming, Outgoing, Payload, Protocol, Ref, Wire};
use crate::shared::{
    BoxedIo, ConnEvent, ConnLink, OutItem, OutQueue, OutTx, Outbound, Shared, lock,
};
use crate::socket::{Assigns, SocketConfig};

/// How long a closing connection waits for the client's close frame before dropping it.
pub(crate) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Everything the accept loop hands a new connection.
pub(crate) struct ConnSetup {
    pub(crate) id: ConnectionId,
    pub(crate) path: String,
    pub(crate) params: BTreeMap<String, String>,
    pub(crate) protocol: Protocol,
    pub(crate) assigns: Assigns,
    pub(crate) socket: SocketConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) delay: Duration,
    pub(crate) events_tx: mpsc::UnboundedSender<ConnEvent>,
    pub(crate) events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    /// The outbound queue's accounting (registered with the connection).
    pub(crate) queue: Arc<OutQueue>,
}

/// A task aborted when its handle is dropped.
#[derive(Debug)]
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    /// Aborts the task and waits until it is gone (so it sends nothing more).
    async fn abort_and_wait(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Waits for the task to finish by itself.
    async fn finished(&mut self) {
        if let Some(handle) = self.0.as_mut() {
            let _ = handle.await;
            self.0 = None;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// A joined channel, as the connection tracks it.
struct ChannelEntry {
    /// The join message's join_ref (maybe null): `phx_close`/`phx_error` carry it, and client
    /// messages are checked against it.
    join_ref: Ref,
    instance: u64,
    /// Dropping it ends the channel as if its connection were gone.
    handle: ChannelHandle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriterState {
    paused: bool,
    delay: Duration,
}

/// What the loop does next.
#[derive(Debug)]
enum Flow {
    Continue,
    /// Send a close frame with this code, then end.
    Close(u16, String),
    /// End without a close frame.
    Drop,
    /// End without a close frame, and end the channels at once (a restart).
    Kill,
    /// The client is gone.
    Gone,
}

struct Conn {
    link: Arc<ConnLink>,
    socket: SocketConfig,
    shared: Arc<Shared>,
    channels: HashMap<String, ChannelEntry>,
    stalled: bool,
    last_received: Instant,
    writer: watch::Sender<WriterState>,
}

type WsStream = WebSocketStream<BoxedIo>;

/// Runs a connection until it closes. The connection is already in the registry.
pub(crate) async fn run_connection(ws: WsStream, setup: ConnSetup) {
    let ConnSetup {
        id,
        path,
        params,
        protocol,
        assigns,
        socket,
        shared,
        delay,
        events_tx,
        mut events_rx,
        queue,
    } = setup;
    let (sink, mut stream) = ws.split();
    let (tx, out_rx) = mpsc::unbounded_channel();
    let out_tx = OutTx::new(tx, queue.clone());
    let (writer_state, writer_rx) = watch::channel(WriterState {
        paused: false,
        delay,
    });
    let mut writer = AbortOnDrop(Some(tokio::spawn(run_writer(
        sink, out_rx, queue, writer_rx,
    ))));
    let mut conn = Conn {
        link: Arc::new(ConnLink {
            id,
            protocol,
            path,
            params,
            assigns,
            out: out_tx.clone(),
            events: events_tx,
            closed: Default::default(),
        }),
        socket,
        shared: shared.clone(),
        channels: HashMap::new(),
        stalled: false,
        last_received: Instant::now(),
        writer: writer_state,
    };
    let mut idle = shared.idle_timeout.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    tracing::debug!("connected");

    let end = loop {
        if *shutdown.borrow_and_update() {
            break Flow::Close(1001, "server shutting down".into());
        }
        let deadline = after(conn.last_received, *idle.borrow_and_update());
        let flow = tokio::select! {
            biased;
            _ = shutdown.changed() => Flow::Continue,
            Some(event) = events_rx.recv() => conn.handle_event(event).await,
            message = stream.next(), if !conn.stalled => {
                conn.last_received = Instant::now();
                match message {
                    None => Flow::Gone,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "websocket error");
                        Flow::Gone
                    }
                    Some(Ok(message)) => conn.handle_message(message).await,
                }
            }
            () = tokio::time::sleep_until(deadline), if !conn.stalled => {
                tracing::debug!("idle timeout");
                Flow::Close(1000, String::new())
            }
            Ok(()) = idle.changed() => Flow::Continue,
        };
        match flow {
            Flow::Continue => {}
            end => break end,
        }
    };

    if !matches!(end, Flow::Close(..)) {
        // Dropped, or the client is gone: nothing more reaches the client, not even frames
        // already queued or held back by a delay (as on a real connection loss). Paused now,
        // before anything below awaits, so the writer cannot slip them out meanwhile.
        conn.writer.send_modify(|s| s.paused = true);
    }
    // Channels end with their connection and send nothing (Phoenix: `{:shutdown, :closed}`):
    // the link refuses their frames from now on.
    conn.link.close();
    if matches!(end, Flow::Kill) || *shared.shutdown.borrow() {
        // A restart or the shutdown: everything ends at once. Their `terminate` runs before
        // the connection leaves the registry.
        futures_util::future::join_all(
            conn.channels
                .drain()
                .map(|(_, entry)| entry.handle.stop(TerminateReason::SocketClosed)),
        )
        .await;
    } else {
        // As in Phoenix, where the transport's exit reaches each channel process behind the
        // messages already in its mailbox: each channel handles what it had received (writes
        // are committed and broadcast; replies are lost), then terminates, on its own.
        let limit = lock(&shared.settings).drain_limit;
        let deadline = limit.map(|limit| after(Instant::now(), limit));
        for (_, entry) in conn.channels.drain() {
            entry.handle.detach(&shared, deadline);
        }
    }
    lock(&shared.connections).remove(&id);
    shared.update_stats(|s| s.open_connections = s.open_connections.saturating_sub(1));
    match end {
        Flow::Close(code, reason) => {
            tracing::debug!(code, "closing");
            conn.writer.send_modify(|s| s.paused = false);
            out_tx.send_close(code, reason);
            // The writer sends the close after the queued frames; then the client answers it.
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                writer.finished().await;
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        Flow::Drop | Flow::Kill => tracing::debug!("dropped"),
        Flow::Gone | Flow::Continue => tracing::debug!("client gone"),
    }
    writer.abort_and_wait().await;
}

impl Conn {
    fn send(&self, message: &Outgoing) {
        if let Err(error) = self.link.send(message) {
            tracing::debug!(%error, "not sent");
        }
    }

    async fn handle_event(&mut self, event: ConnEvent) -> Flow {
        match event {
            ConnEvent::ChannelExit {
                topic,
                instance,
                exit,
            } => {
                if self
                    .channels
                    .get(&topic)
                    .is_some_and(|c| c.instance == instance)
                    && let Some(entry) = self.channels.remove(&topic)
                {
                    self.channel_ended(topic, entry.join_ref, exit);
                }
            }
            ConnEvent::CloseSocket { code, reason } => return Flow::Close(code, reason),
            ConnEvent::Drop => return Flow::Drop,
            ConnEvent::Kill => return Flow::Kill,
            ConnEvent::Stall(on) => {
                tracing::debug!(on, "stall");
                self.stalled = on;
                if !on {
                    // Resumed: the idle timer starts again from now.
                    self.last_received = Instant::now();
                }
                self.writer.send_modify(|s| s.paused = on);
            }
            ConnEvent::EndChannel { topic, exit } => {
                if let Some(entry) = self.channels.remove(&topic) {
                    entry.handle.stop(exit.reason()).await;
                    self.channel_ended(topic, entry.join_ref, exit);
                }
            }
            ConnEvent::Raw(wire) => {
                let _ = self.link.out.send(Outbound::frame(wire));
            }
            ConnEvent::Delay(delay) => {
                self.writer.send_modify(|s| s.delay = delay);
            }
            ConnEvent::SlowClient => {
                // Its outbound queue crossed the bound: dropped, and counted.
                tracing::warn!("outbound queue full: the connection is dropped as a slow client");
                self.shared.update_stats(|s| s.slow_clients_dropped += 1);
                return Flow::Drop;
            }
        }
        Flow::Continue
    }

    /// A channel is gone: `phx_close` or `phx_error` with its join_ref as join_ref and ref.
    fn channel_ended(&self, topic: String, join_ref: Ref, exit: Exit) {
        if !self.channels.contains_key(&topic) {
            self.shared.update_connection(self.link.id, |c| {
                c.topics.remove(&topic);
            });
        }
        let event = match exit {
            Exit::Closed => "phx_close",
            Exit::Crashed => "phx_error",
        };
        tracing::debug!(topic, event, "channel ended");
        self.send(&Outgoing::Message {
            join_ref: join_ref.clone(),
            ref_: join_ref,
            topic,
            event: event.to_owned(),
            payload: Payload::Json(json!({})),
        });
    }

    async fn handle_message(&mut self, message: Message) -> Flow {
        let decoded = match &message {
            Message::Text(text) => frame::decode_text(self.link.protocol, text.as_str()),
            Message::Binary(bytes) => frame::decode_binary(self.link.protocol, bytes),
            // Pings are answered by tungstenite; a close is answered too, and the stream ends.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Flow::Continue;
            }
        };
        match decoded {
            Ok(incoming) => {
                self.dispatch(incoming).await;
                Flow::Continue
            }
            Err(error) => {
                // Phoenix's serializer raises and the socket process dies: close 1011.
                tracing::warn!(%error, "malformed frame");
                Flow::Close(1011, String::new())
            }
        }
    }

    /// Phoenix's `Phoenix.Socket.__in__/2`.
    async fn dispatch(&mut self, msg: Incoming) {
        if msg.topic == "phoenix" && msg.event == "heartbeat" {
            self.shared.update_stats(|s| s.heartbeats += 1);
            self.reply(Ref::null(), msg.ref_, msg.topic, "ok", json!({}));
            return;
        }
        let Some(entry) = self.channels.get(&msg.topic) else {
            match msg.event.as_str() {
                "phx_join" => self.join(msg, None).await,
                // Leaving a topic that is not joined: ok, with the client's join_ref.
                "phx_leave" => self.reply(msg.join_ref, msg.ref_, msg.topic, "ok", json!({})),
                _ => self.unmatched(msg),
            }
            return;
        };
        let current = msg.join_ref.is_null() || msg.join_ref == entry.join_ref;
        match msg.event.as_str() {
            "phx_join" => {
                // Duplicate join: the old channel is shut down; its phx_close (with the OLD
                // join_ref) follows the new join's reply, as in Phoenix.
                if let Some(old) = self.channels.remove(&msg.topic) {
                    old.handle.stop(TerminateReason::DuplicateJoin).await;
                    self.join(msg, Some(old.join_ref)).await;
                }
            }
            "phx_leave" if current => {
                let _ = entry
                    .handle
                    .inbox
                    .send(ChannelMsg::Leave { ref_: msg.ref_ });
            }
            "phx_leave" => {
                tracing::debug!(topic = msg.topic, "leave for an outdated join_ref ignored");
            }
            _ if current => {
                let _ = entry.handle.inbox.send(ChannelMsg::In {
                    event: msg.event,
                    payload: msg.payload,
                    ref_: msg.ref_,
                    msgpack: msg.msgpack,
                });
            }
            _ => {
                tracing::debug!(
                    topic = msg.topic,
                    event = msg.event,
                    "outdated message dropped"
                );
            }
        }
    }

    /// Joins a topic. `replaced` is the join_ref of the channel a duplicate join shut down.
    async fn join(&mut self, msg: Incoming, replaced: Option<Ref>) {
        let topic = msg.topic.clone();
        self.join_inner(msg).await;
        if let Some(old) = replaced {
            self.channel_ended(topic, old, Exit::Closed);
        }
    }

    async fn join_inner(&mut self, msg: Incoming) {
        let Some(factory) = self.socket.find(&msg.topic).cloned() else {
            return self.unmatched(msg);
        };
        let refusal = lock(&self.shared.settings).refuse_joins.clone();
        if let Some(response) = refusal {
            self.shared.update_stats(|s| s.joins_refused += 1);
            return self.reply(msg.join_ref, msg.ref_, msg.topic, "error", response);
        }
        let channel = match std::panic::catch_unwind(AssertUnwindSafe(|| factory(&msg.topic))) {
            Ok(channel) => channel,
            Err(_) => {
                tracing::warn!(topic = msg.topic, "channel factory panicked");
                self.shared.update_stats(|s| s.joins_refused += 1);
                let response = json!({"reason": "join crashed"});
                return self.reply(msg.join_ref, msg.ref_, msg.topic, "error", response);
            }
        };
        let instance = self.shared.next_instance();
        let (joined_tx, joined_rx) = oneshot::channel();
        let handle = spawn_channel(
            ChannelSpawn {
                channel,
                topic: msg.topic.clone(),
                instance,
                msg_join_ref: msg.join_ref.clone(),
                msg_ref: msg.ref_.clone(),
                params: msg.payload,
                link: self.link.clone(),
                shared: self.shared.clone(),
            },
            joined_tx,
        );
        // The socket waits for the join, as Phoenix's does: the reply goes out first.
        match joined_rx.await {
            Ok(JoinOutcome::Joined) => {
                self.channels.insert(
                    msg.topic,
                    ChannelEntry {
                        join_ref: msg.join_ref,
                        instance,
                        handle,
                    },
                );
            }
            Ok(JoinOutcome::Refused) => {}
            Err(_) => {
                self.shared.update_stats(|s| s.joins_refused += 1);
                let response = json!({"reason": "join crashed"});
                self.reply(msg.join_ref, msg.ref_, msg.topic, "error", response);
            }
        }
    }

    /// The reply to a message for a topic the server does not consider joined: null join_ref.
    fn unmatched(&self, msg: Incoming) {
        tracing::debug!(topic = msg.topic, event = msg.event, "unmatched topic");
        let response = json!({"reason": "unmatched topic"});
        self.reply(Ref::null(), msg.ref_, msg.topic, "error", response);
    }

    fn reply(&self, join_ref: Ref, ref_: Ref, topic: String, status: &str, response: Value) {
        self.send(&Outgoing::Reply {
            join_ref,
            ref_,
            topic,
            status: status.to_owned(),
            response: Payload::Json(response),
        });
    }
}

/// Writes the connection's frames in order, each no earlier than its queueing time plus the
/// delay, and nothing while paused. Ends after sending a close frame or when the socket fails.
async fn run_writer(
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::UnboundedReceiver<Outbound>,
    accounting: Arc<OutQueue>,
    mut state: watch::Receiver<WriterState>,
) {
    while let Some(out) = queue.recv().await {
        accounting.taken(&out);
        loop {
            let current = *state.borrow_and_update();
            let due = after(out.at, current.delay);
            if !current.paused && Instant::now() >= due {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due), if !current.paused => break,
                changed = state.changed() => if changed.is_err() { return },
            }
        }
        let (message, last) = match out.item {
            OutItem::Frame(Wire::Text(text)) => (Message::text(text), false),
            OutItem::Frame(Wire::Binary(bytes)) => (Message::binary(bytes), false),
            OutItem::Close { code, reason } => (
                Message::Close(Some(CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                })),
                true,
            ),
        };
        if let Err(error) = sink.send(message).await {
            tracing::debug!(%error, "write failed");
            return;
        }
        if last {
            return;
        }
    }
}

/// `base + delay`, or about a year from now when that overflows (a huge configured timeout).
fn after(base: Instant, delay: Duration) -> Instant {
    base.checked_add(delay)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600))
}

//! The tokio driver: the only code that touches tokio, the WebSocket, the clock and spawning.
//!
//! One task per socket runs [`SocketDriver`], a hand-written future that, on each wake-up, takes the
//! commands of the handles, the frames of the transport and the expired timers, feeds them to
//! the sans-io [`SocketCore`], and carries out what it says: frames are fed to the transport and
//! flushed once per batch, channel notices go to the channels' queues, replies to the pushes'
//! waiters. It never awaits user code, and every step is a non-blocking poll, so nothing can be
//! lost to cancellation.

mod command;
mod direct;
mod malformed;
pub(crate) mod queue;
mod reader;
mod slot;
mod timer;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::SinkExt as _;
use rustc_hash::FxHashMap;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};

pub(crate) use command::Command;
use malformed::MalformedLog;
use reader::WriteWake;
pub(crate) use reader::{IoWake, ReplyReader};
use slot::Slot;

use crate::frame::OutFrame;
use crate::proto::channel::ChannelId;
use crate::proto::message::{Inbound, Reply};
use crate::proto::push::PushError;
use crate::proto::{CoreConfig, DisconnectReason, Output, SocketCore, SocketStatus};
use crate::socket::ConnectSetup;
use crate::transport::{self, BoxTransport, Connector, Outgoing, Received};

type PushReply = oneshot::Sender<Result<Reply, PushError>>;
type Connecting = Pin<Box<dyn Future<Output = Result<BoxTransport, DisconnectReason>> + Send>>;

/// Commands taken per round before the other sources get a turn.
const BUDGET: usize = 256;

/// Frames read per wake-up before the task yields: the channels' consumers then get to run
/// (on a current-thread runtime they cannot otherwise) before more messages are queued for
/// them, so a burst does not overflow their queues.
const READ_BUDGET: usize = 128;

/// The longest pause of reading while a channel's consumer is three quarters of its capacity
/// behind (and at most a quarter of the heartbeat timeout). A consumer that only lags in a
/// burst catches up during a pause without losing messages.
const MAX_READ_PAUSE: Duration = Duration::from_secs(1);

/// Reading pauses for at most one part in this many of the time: pause time is earned at that
/// rate while reading (up to [`MAX_READ_PAUSE`]) and spent while paused. A consumer slower
/// than the inbound rate thus cannot hold reading back for long: the socket reads on at least
/// nine tenths of the time, so that the server's frames (heartbeat replies among them) never
/// pile up behind it; the consumer's overflow is dropped and reported ([`crate::Lagged`],
/// [`crate::ChannelHandler::on_overflow`]).
const PAUSE_SHARE: u32 = 10;

/// The shortest pause worth starting.
const MIN_READ_PAUSE: Duration = Duration::from_millis(10);

/// The socket task.
pub(crate) struct Driver {
    core: SocketCore<PushReply>,
    setup: Arc<ConnectSetup>,
    connector: Arc<dyn Connector>,
    connect_timeout: Duration,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_open: bool,
    connecting: Option<Connecting>,
    transport: Option<BoxTransport>,
    /// Frames for the current transport, not yet accepted by it.
    outbox: VecDeque<OutFrame>,
    /// Their bytes.
    outbox_bytes: usize,
    /// Room in the outgoing buffer, shared with the handles, which reserve it for each push
    /// and cast (see [`SocketBuilder::outgoing_limit`](crate::SocketBuilder::outgoing_limit)).
    outgoing: Arc<Semaphore>,
    /// The bytes of it that pushes taken from the handles hold: given back as the outbox
    /// drains, so that the handles wait while the connection does not take what is queued.
    held: usize,
    needs_flush: bool,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
    slots: FxHashMap<ChannelId, Slot>,
    /// Channels whose consumers have something new: woken once, before the task yields.
    to_flush: Vec<ChannelId>,
    status: watch::Sender<SocketStatus>,
    tap: broadcast::Sender<Inbound>,
    disconnect_waiters: Vec<oneshot::Sender<()>>,
    stopped: bool,
    /// The task's waker, for the pushes that the handles write themselves (see
    /// [`Driver::push_now`]): whatever they leave for the task to do wakes it.
    waker: Option<Waker>,
    /// What the connection wakes (see [`reader`]): a waiting push that reads its own reply,
    /// else this task.
    io: Arc<IoWake>,
    io_waker: Waker,
    /// What the connection's writes wake ([`WriteWake`]).
    write_waker: Waker,
    /// When the task wakes at the latest while a waiting push takes the connection's
    /// readiness, in case that push is not polled (see [`reader::READER_CHECK`]).
    reader_check: Option<Instant>,
    /// Frames this wake-up may still read.
    read_budget: usize,
    /// The transport had nothing to read this wake-up: its waker is registered, so another
    /// read before the next wake-up would find nothing either (and still cost tungstenite a
    /// zeroed read buffer).
    read_idle: bool,
    /// Channels whose consumer is far behind.
    congested: Vec<ChannelId>,
    /// The end of the current read pause for them.
    pause_until: Option<Instant>,
    /// When the current read pause started.
    pause_started: Option<Instant>,
    /// Pause time earned and not spent (see [`PAUSE_SHARE`]), as of `pause_earned_at`.
    pause_earned: Duration,
    pause_earned_at: Instant,
    /// The most pause time that can be earned, and the longest pause.
    max_pause: Duration,
    malformed: MalformedLog,
    span: tracing::Span,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: CoreConfig,
        setup: ConnectSetup,
        connector: Arc<dyn Connector>,
        connect_timeout: Duration,
        commands: mpsc::UnboundedReceiver<Command>,
        status: watch::Sender<SocketStatus>,
        tap: broadcast::Sender<Inbound>,
        outgoing: Arc<Semaphore>,
        url: &str,
    ) -> Self {
        let max_pause = MAX_READ_PAUSE.min(config.heartbeat_timeout / 4);
        let mut core = SocketCore::new(config);
        core.start(Instant::now().into_std());
        let io = Arc::new(IoWake::default());
        Self {
            io_waker: Waker::from(io.clone()),
            write_waker: Waker::from(Arc::new(WriteWake(io.clone()))),
            io,
            reader_check: None,
            core,
            setup: Arc::new(setup),
            connector,
            connect_timeout,
            commands,
            commands_open: true,
            connecting: None,
            transport: None,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            outgoing,
            held: 0,
            needs_flush: false,
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            timer_at: None,
            slots: FxHashMap::default(),
            to_flush: Vec::new(),
            status,
            tap,
            disconnect_waiters: Vec::new(),
            stopped: false,
            waker: None,
            read_budget: READ_BUDGET,
            read_idle: false,
            congested: Vec::new(),
            pause_until: None,
            pause_started: None,
            pause_earned: max_pause,
            pause_earned_at: Instant::now(),
            max_pause,
            malformed: MalformedLog::default(),
            span: tracing::info_span!("phoenix_socket", url = %url),
        }
    }

    fn now() -> std::time::Instant {
        Instant::now().into_std()
    }

    fn start_connect(&mut self) {
        let setup = self.setup.clone();
        let connector = self.connector.clone();
        let timeout = self.connect_timeout;
        self.connecting = Some(Box::pin(async move {
            let attempt = async {
                let request = setup.request().await?;
                connector.connect(&request).await
            };
            tokio::time::timeout(timeout, attempt)
                .await
                .unwrap_or(Err(DisconnectReason::ConnectTimeout))
        }));
    }

    /// The transport ended by itself: forget it and the frames meant for it.
    fn transport_lost(&mut self, reason: DisconnectReason) {
        tracing::debug!(%reason, "connection lost");
        self.malformed.summary();
        self.transport = None;
        self.clear_outbox();
        self.needs_flush = false;
        self.core.handle_disconnected(Self::now(), reason);
    }

    /// Hands the transport to a task that flushes what is queued, sends a close frame and
    /// waits a moment for the peer, so that closing never blocks the socket task.
    fn close_transport(&mut self, code: u16, reason: &'static str) {
        self.malformed.summary();
        self.connecting = None;
        let frames: Vec<OutFrame> = self.outbox.drain(..).collect();
        self.outbox_bytes = 0;
        self.release_room();
        self.needs_flush = false;
        if let Some(mut transport) = self.transport.take() {
            tokio::spawn(async move {
                let close = async {
                    for frame in frames {
                        transport.feed(Outgoing::Frame(frame)).await?;
                    }
                    transport
                        .send(Outgoing::Close {
                            code,
                            reason: reason.to_owned(),
                        })
                        .await?;
                    transport.close().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
            });
        }
    }

    /// Carries out the core's outputs; returns whether a connect attempt started (its future
    /// must be polled before the task sleeps).
    fn dispatch(&mut self) -> bool {
        let mut started = false;
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Transmit(frame) => {
                    if self.transport.is_some() {
                        self.outbox_bytes += frame.as_bytes().len();
                        self.outbox.push_back(frame);
                    }
                }
                Output::Channel(id, event) => self.channel_event(id, event),
                Output::PushDone(reply, result) => {
                    let _ = reply.send(result);
                }
                Output::Connect => {
                    self.start_connect();
                    started = true;
                }
                Output::CloseTransport { code, reason } => self.close_transport(code, reason),
                Output::Status(status) => {
                    match &status {
                        SocketStatus::Connected => tracing::info!("connected"),
                        SocketStatus::Reconnecting {
                            attempt,
                            delay,
                            reason,
                        } => {
                            tracing::info!(%reason, attempt, ?delay, "disconnected; reconnecting")
                        }
                        SocketStatus::Disconnected {
                            reason: Some(reason),
                        } => {
                            tracing::warn!(%reason, "disconnected; not reconnecting")
                        }
                        other => tracing::debug!(status = other.as_str(), "socket status"),
                    }
                    if matches!(status, SocketStatus::Disconnected { .. }) {
                        self.stopped = true;
                    }
                    self.status.send_if_modified(|current| {
                        let changed = *current != status;
                        *current = status;
                        changed
                    });
                }
                Output::Tap(inbound) => {
                    if self.tap.send(inbound).is_err() {
                        self.core.set_tap(false);
                    }
                }
                Output::Malformed(error) => self.malformed.frame(Instant::now(), &error),
            }
        }
        started
    }

    /// Writes queued frames to the transport and flushes once for the batch.
    fn poll_write(&mut self) -> Result<(), DisconnectReason> {
        let Some(transport) = self.transport.as_mut() else {
            return Ok(());
        };
        if self.outbox.is_empty() && !self.needs_flush {
            return Ok(());
        }
        self.io.set_write_pending(true);
        let cx = &mut Context::from_waker(&self.write_waker);
        let mut transport: Pin<&mut dyn transport::Transport> = Pin::new(&mut **transport);
        while !self.outbox.is_empty() {
            match transport.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    if let Some(frame) = self.outbox.pop_front() {
                        self.outbox_bytes -= frame.as_bytes().len();
                        transport.as_mut().start_send(Outgoing::Frame(frame))?;
                        self.needs_flush = true;
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        if self.needs_flush {
            match transport.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        self.io
            .set_write_pending(!self.outbox.is_empty() || self.needs_flush);
        Ok(())
    }

    fn clear_outbox(&mut self) {
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.release_room();
    }

    /// Gives back the room held beyond what the outbox holds: the handles' pushes have been
    /// written to the transport (or dropped with the connection, or buffered for a join,
    /// which bounds them by count).
    fn release_room(&mut self) {
        if self.held > self.outbox_bytes {
            self.outgoing.add_permits(self.held - self.outbox_bytes);
            self.held = self.outbox_bytes;
        }
    }

    /// One round of work; returns whether anything happened.
    fn poll_round(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;

        for _ in 0..BUDGET {
            if !self.commands_open {
                break;
            }
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(command)) => {
                    self.command(command);
                    progress = true;
                }
                Poll::Ready(None) => {
                    // Every handle is gone: shut down.
                    self.commands_open = false;
                    self.core.close(Self::now());
                    progress = true;
                }
                Poll::Pending => break,
            }
        }

        if let Some(connecting) = self.connecting.as_mut()
            && let Poll::Ready(result) = connecting.as_mut().poll(cx)
        {
            self.connecting = None;
            progress = true;
            match result {
                Ok(transport) => {
                    self.transport = Some(transport);
                    self.read_idle = false;
                    self.core.handle_connected(Self::now());
                }
                Err(reason) => self.core.handle_disconnected(Self::now(), reason),
            }
        }

        let mut lost = None;
        if !self.read_paused(cx) {
            let now = Self::now();
            while self.read_budget > 0 && !self.read_idle {
                let Some(transport) = self.transport.as_mut() else {
                    break;
                };
                let next =
                    Pin::new(&mut **transport).poll_next(&mut Context::from_waker(&self.io_waker));
                self.read_budget -= 1;
                match next {
                    Poll::Ready(Some(Ok(Received::Text(text)))) => {
                        self.core.handle_utf8_text(now, text)
                    }
                    Poll::Ready(Some(Ok(Received::Binary(bytes)))) => {
                        self.core.handle_binary(now, bytes)
                    }
                    Poll::Ready(Some(Ok(Received::Close { code, reason }))) => {
                        lost = Some(DisconnectReason::Closed { code, reason });
                    }
                    Poll::Ready(Some(Err(reason))) => lost = Some(reason),
                    Poll::Ready(None) => lost = Some(DisconnectReason::Eof),
                    Poll::Pending => {
                        self.read_idle = true;
                        break;
                    }
                }
                progress = true;
                if lost.is_some() {
                    break;
                }
                // Deliver as we read, so that a consumer falling behind stops the reading at
                // once rather than after the whole batch.
                self.dispatch();
                if !self.congested.is_empty() {
                    break;
                }
            }
        }
        if let Some(reason) = lost {
            self.transport_lost(reason);
        }

        if let Some(at) = self.core.poll_timeout() {
            let now = Self::now();
            if at <= now {
                self.core.handle_timeout(now);
                progress = true;
            }
        }

        progress |= self.dispatch();

        if let Err(reason) = self.poll_write() {
            self.transport_lost(reason);
            self.dispatch();
            progress = true;
        }
        self.release_room();
        progress
    }

    fn finished(&mut self) -> bool {
        if !self.stopped || self.core.poll_timeout().is_some() {
            return false;
        }
        for done in self.disconnect_waiters.drain(..) {
            let _ = done.send(());
        }
        // Closing the queues ends the channels' handler tasks and message streams.
        self.slots.clear();
        // Pushes waiting for room fail: nothing will take them.
        self.outgoing.close();
        true
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // A driver dropped before it finished (its runtime shut down): nothing will make room.
        self.outgoing.close();
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            this.waker = Some(cx.waker().clone());
            this.io.set_task(cx.waker());
        }
        this.run(cx)
    }
}

impl Driver {
    /// The task's work for one wake-up: rounds until nothing happens (or the budget is spent).
    fn run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let span = self.span.clone();
        let _entered = span.enter();
        // This wake-up reads whatever a waiting push was woken for.
        self.io.paying();
        let mut rounds = 0;
        self.read_budget = READ_BUDGET;
        self.read_idle = false;
        while self.poll_round(cx) {
            self.flush_consumers();
            if self.finished() {
                return Poll::Ready(());
            }
            rounds += 1;
            if rounds == 16 || self.read_budget == 0 {
                // Busy: let other tasks run, and come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        self.flush_consumers();
        if self.finished() {
            return Poll::Ready(());
        }
        if self.arm_timer(cx) {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// The socket's task, from [`SocketBuilder::build`](crate::SocketBuilder::build): spawn it or
/// await it. It ends when the socket stops.
#[must_use = "the socket does nothing unless its driver runs"]
pub struct SocketDriver {
    /// Shared with the handles, which lock it (without waiting) to write a push themselves
    /// while the task is idle.
    driver: Arc<Mutex<Driver>>,
}

impl SocketDriver {
    pub(crate) fn new(driver: Driver) -> Self {
        Self {
            driver: Arc::new(Mutex::new(driver)),
        }
    }

    /// The handles' access to the driver (see [`Driver::push_now`]).
    pub(crate) fn shared(&self) -> Weak<Mutex<Driver>> {
        Arc::downgrade(&self.driver)
    }

    /// What the connection wakes, for the pushes that read their own replies
    /// ([`ReplyReader`]).
    pub(crate) fn io(&self) -> Arc<IoWake> {
        self.driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .io
            .clone()
    }
}

impl fmt::Debug for SocketDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketDriver").finish_non_exhaustive()
    }
}

impl Future for SocketDriver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Held by a handle only for the moment it takes to write one push.
        let mut driver = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        Pin::new(&mut *driver).poll(cx)
    }
}

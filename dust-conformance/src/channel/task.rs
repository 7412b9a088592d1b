//! A channel's task: the join, the inbox loop, the drain of a dead connection's messages and
//! the terminate callback, run exactly once.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::frame::{Outgoing, Payload, Ref};
use crate::shared::{ConnEvent, ConnLink, Shared, Subscriber};

use super::*;

/// How a channel task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Stopped normally (stop, leave): `phx_close`.
    Closed,
    /// Crashed: `phx_error`.
    Crashed,
}

impl Exit {
    /// The reason a channel ended from outside with this exit is terminated with.
    pub(crate) fn reason(self) -> TerminateReason {
        match self {
            Self::Closed => TerminateReason::Stopped,
            Self::Crashed => TerminateReason::Crashed,
        }
    }
}

/// What the connection gets back from a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    Joined,
    Refused,
}

/// Everything a channel task needs.
pub(crate) struct ChannelSpawn {
    pub(crate) channel: Box<dyn Channel>,
    pub(crate) topic: String,
    pub(crate) instance: u64,
    /// The join message's join_ref (maybe null) and ref: the join reply carries them.
    pub(crate) msg_join_ref: Ref,
    pub(crate) msg_ref: Ref,
    pub(crate) params: Payload,
    pub(crate) link: Arc<ConnLink>,
    pub(crate) shared: Arc<Shared>,
}

/// What the connection tells a channel task when it lets go of it.
#[derive(Debug)]
pub(crate) enum StopSignal {
    /// End now: a callback in progress is cancelled, queued messages are dropped.
    Now(TerminateReason),
    /// The connection is gone (Phoenix: its `EXIT` queued behind the mailbox): handle every
    /// message already received, in order (replies and pushes are dropped, broadcasts go
    /// out), then terminate with [`TerminateReason::SocketClosed`].
    Drain(Drain),
}

/// A drain's bounds: its deadline, and the restart/shutdown signal that ends it at once. It
/// counts as a draining channel ([`crate::ServerStats::draining_channels`]) while it exists.
#[derive(Debug)]
pub(crate) struct Drain {
    deadline: Option<tokio::time::Instant>,
    cancel: tokio::sync::watch::Receiver<u64>,
    shared: Arc<Shared>,
}

impl Drain {
    /// Waits until the drain must end before its mailbox is empty.
    async fn cut(&mut self) {
        let deadline = async {
            match self.deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = deadline => tracing::debug!("drain limit reached"),
            _ = self.cancel.changed() => tracing::debug!("drain cancelled by a restart or shutdown"),
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        self.shared
            .update_stats(|s| s.draining_channels = s.draining_channels.saturating_sub(1));
    }
}

/// The connection's side of a channel task.
///
/// Dropping it (without [`ChannelHandle::stop`] or [`ChannelHandle::detach`]) ends the
/// channel at once, as [`TerminateReason::SocketClosed`], on its own task.
#[derive(Debug)]
pub(crate) struct ChannelHandle {
    pub(crate) inbox: mpsc::UnboundedSender<ChannelMsg>,
    stop: oneshot::Sender<StopSignal>,
    task: tokio::task::JoinHandle<()>,
}

impl ChannelHandle {
    /// Ends the channel from outside: a callback in progress is cancelled, then
    /// [`Channel::terminate`] runs with `reason`. Returns when the task is gone.
    pub(crate) async fn stop(self, reason: TerminateReason) {
        let Self { inbox, stop, task } = self;
        let _ = stop.send(StopSignal::Now(reason));
        drop(inbox);
        // The task bounds `terminate` itself; this bound only guards against a callback that
        // blocks its thread instead of awaiting.
        let abort = task.abort_handle();
        if tokio::time::timeout(TERMINATE_TIMEOUT + Duration::from_secs(1), task)
            .await
            .is_err()
        {
            tracing::warn!("channel task did not end, aborted");
            abort.abort();
        }
    }

    /// The connection is gone: the channel drains what it had received (see
    /// [`StopSignal::Drain`]) on its own, until `deadline` at the latest, then terminates.
    /// Returns at once.
    pub(crate) fn detach(self, shared: &Arc<Shared>, deadline: Option<tokio::time::Instant>) {
        let Self { inbox, stop, task } = self;
        shared.update_stats(|s| s.draining_channels += 1);
        let drain = Drain {
            deadline,
            cancel: shared.drain_cancel.subscribe(),
            shared: shared.clone(),
        };
        // A channel that already ended drops the signal, and the count with it.
        let _ = stop.send(StopSignal::Drain(drain));
        drop(inbox);
        drop(task);
    }
}

/// Runs one channel: the join, then its messages until it stops, crashes or is stopped from
/// outside, then its `terminate`. Returns its handle at once; the join outcome goes to `joined`.
pub(crate) fn spawn_channel(
    spawn: ChannelSpawn,
    joined: oneshot::Sender<JoinOutcome>,
) -> ChannelHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let weak = tx.downgrade();
    let span = tracing::debug_span!("channel", topic = %spawn.topic, connection = %spawn.link.id);
    let task = tokio::spawn(run_channel(spawn, weak, rx, stop_rx, joined).instrument(span));
    ChannelHandle {
        inbox: tx,
        stop: stop_tx,
        task,
    }
}

/// Why the channel must end now, from the connection's signals: a [`StopSignal::Now`], a
/// dropped handle, or a drain cut short. A [`StopSignal::Drain`] is kept in `draining`; from
/// then on only its cut ends the channel early.
async fn stopped(
    stop: &mut Option<oneshot::Receiver<StopSignal>>,
    draining: &mut Option<Drain>,
) -> TerminateReason {
    loop {
        if let Some(drain) = draining {
            drain.cut().await;
            return TerminateReason::SocketClosed;
        }
        let Some(receiver) = stop.as_mut() else {
            return std::future::pending().await;
        };
        let signal = receiver.await;
        *stop = None;
        match signal {
            Ok(StopSignal::Now(reason)) => return reason,
            Ok(StopSignal::Drain(drain)) => *draining = Some(drain),
            // The handle was dropped: the connection is gone, now.
            Err(_) => return TerminateReason::SocketClosed,
        }
    }
}

async fn run_channel(
    spawn: ChannelSpawn,
    inbox_tx: mpsc::WeakUnboundedSender<ChannelMsg>,
    mut inbox: mpsc::UnboundedReceiver<ChannelMsg>,
    stop: oneshot::Receiver<StopSignal>,
    joined: oneshot::Sender<JoinOutcome>,
) {
    let mut stop = Some(stop);
    let mut draining: Option<Drain> = None;
    let ChannelSpawn {
        mut channel,
        topic,
        instance,
        msg_join_ref,
        msg_ref,
        params,
        link,
        shared,
    } = spawn;
    // The channel's own join_ref: the join's join_ref, or its ref when the client sent none.
    let join_ref = if msg_join_ref.is_null() {
        msg_ref.clone()
    } else {
        msg_join_ref.clone()
    };
    let mut ctx = ChannelContext {
        topic: topic.clone(),
        join_ref,
        link: link.clone(),
        shared: shared.clone(),
        inbox: inbox_tx,
        current_ref: None,
        current_msgpack: None,
    };
    let join_reply = |status: &str, response: Value| Outgoing::Reply {
        join_ref: msg_join_ref.clone(),
        ref_: msg_ref.clone(),
        topic: topic.clone(),
        status: status.to_owned(),
        response: Payload::Json(response),
    };
    let result = tokio::select! {
        biased;
        // The connection is gone while the join runs: no channel was made, nothing to end.
        _ = stopped(&mut stop, &mut draining) => return,
        result = guarded(channel.join(params, &ctx)) => result,
    };
    let subscription = match result {
        Some(Ok(response)) => {
            // Subscribed before the reply goes out, as Phoenix does in `init_join`.
            let subscription = shared.subscribe(
                &topic,
                (link.id, instance),
                Subscriber {
                    out: link.out.clone(),
                    protocol: link.protocol,
                },
            );
            // The registry and the counters change before the reply goes out, so that a client
            // that saw its reply finds its join in `Control`.
            shared.update_connection(link.id, |c| {
                c.topics.insert(topic.clone());
            });
            shared.update_stats(|s| s.joins += 1);
            let _ = link.send(&join_reply("ok", response));
            let _ = joined.send(JoinOutcome::Joined);
            subscription
        }
        Some(Err(response)) => {
            shared.update_stats(|s| s.joins_refused += 1);
            let _ = link.send(&join_reply("error", response));
            let _ = joined.send(JoinOutcome::Refused);
            return;
        }
        None => {
            tracing::warn!("join crashed");
            shared.update_stats(|s| s.joins_refused += 1);
            let _ = link.send(&join_reply("error", json!({"reason": "join crashed"})));
            let _ = joined.send(JoinOutcome::Refused);
            return;
        }
    };

    // `exit` is `Some` when the channel ended by itself (the connection is told), `None` when
    // it was stopped from outside (the connection already knows).
    // Whether a drain was cut short with this callback in progress.
    let mut in_progress = false;
    let (exit, reason) = loop {
        let msg = tokio::select! {
            biased;
            reason = stopped(&mut stop, &mut draining) => break (None, reason),
            msg = inbox.recv() => match msg {
                Some(msg) => msg,
                // The connection dropped its sender: it is gone (after a drain, all of it
                // was handled).
                None => break (None, TerminateReason::SocketClosed),
            },
        };
        let handled = match msg {
            ChannelMsg::In {
                event,
                payload,
                ref_,
                msgpack,
            } => {
                ctx.current_ref = Some(ref_);
                ctx.current_msgpack = msgpack;
                tokio::select! {
                    biased;
                    reason = stopped(&mut stop, &mut draining) => {
                        in_progress = true;
                        break (None, reason);
                    }
                    handled = guarded(channel.handle_in(&event, payload, &ctx)) => handled,
                }
            }
            ChannelMsg::Info(info) => tokio::select! {
                biased;
                reason = stopped(&mut stop, &mut draining) => {
                    in_progress = true;
                    break (None, reason);
                }
                handled = guarded(channel.handle_info(info, &ctx)) => handled,
            },
            ChannelMsg::Leave { ref_ } => {
                // Forgotten before the reply, which phoenix.js already takes as the close.
                shared.update_connection(link.id, |c| {
                    c.topics.remove(&topic);
                });
                let _ = link.send(&ctx.reply_message(ref_, Reply::ok(json!({}))));
                break (Some(Exit::Closed), TerminateReason::Left);
            }
        };
        let (reply, exit) = match handled {
            None | Some(Handled::Crash) => (None, Some(Exit::Crashed)),
            Some(Handled::NoReply) => (None, None),
            Some(Handled::Reply(reply)) => (Some(reply), None),
            Some(Handled::Stop(reply)) => (reply, Some(Exit::Closed)),
        };
        let current_ref = ctx.current_ref.take();
        ctx.current_msgpack = None;
        match (reply, current_ref) {
            (Some(reply), Some(ref_)) => match link.send(&ctx.reply_message(ref_, reply)) {
                Ok(()) => {}
                Err(error @ SendError::Encode(_)) => {
                    // Phoenix raises in the channel when it cannot encode its reply.
                    tracing::debug!(%error, "reply not sent, the channel crashes");
                    break (Some(Exit::Crashed), TerminateReason::Crashed);
                }
                // The connection is gone (a draining channel): the reply is lost, as
                // Phoenix's send to a dead transport is.
                Err(SendError::Disconnected) => tracing::trace!("reply dropped: connection gone"),
            },
            (Some(_), None) => tracing::warn!("a reply returned by handle_info is dropped"),
            (None, _) => {}
        }
        if let Some(exit) = exit {
            break (Some(exit), exit.reason());
        }
    };
    let drain = draining.take();
    if drain.is_some() {
        // A drain cut short (its limit, a restart, the shutdown): what it had not handled yet
        // is dropped, and reported.
        let dropped = inbox.len() + usize::from(in_progress);
        if dropped > 0 {
            tracing::warn!(dropped, "drain cut short: received messages dropped");
            let dropped = u64::try_from(dropped).unwrap_or(u64::MAX);
            shared.update_stats(|s| s.drain_dropped += dropped);
        }
    }
    // Unsubscribed first: an ended channel receives no broadcast, its own presence leave
    // included. Then `terminate`, then the connection sends phx_close/phx_error.
    drop(subscription);
    drop(inbox);
    ctx.current_ref = None;
    tracing::debug!(?reason, "terminate");
    match tokio::time::timeout(TERMINATE_TIMEOUT, guarded(channel.terminate(reason, &ctx))).await {
        Ok(_) => {}
        Err(_) => tracing::warn!("terminate timed out"),
    }
    if let Some(exit) = exit {
        let _ = link.events.send(ConnEvent::ChannelExit {
            topic,
            instance,
            exit,
        });
    }
    // A draining channel counts as such until it has terminated.
    drop(drain);
}

/// Runs a channel callback; a panic is a crash (`None`), as an exception is in Elixir.
async fn guarded<T>(future: impl Future<Output = T>) -> Option<T> {
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::warn!("channel callback panicked");
            None
        }
    }
}

//! The commands of the handles, and how the socket task carries them out.

use std::fmt;

use tokio::sync::oneshot;

use super::Slot;
use super::queue::QueueTx;
use super::slot::Waiters;
use super::{Driver, PushReply};
use crate::error::JoinError;
use crate::proto::channel::{ChannelId, ChannelOptions, ChannelState, CloseCause};
use crate::proto::message::{Payload, Topic};
use crate::proto::push::PushRequest;

/// A request from a handle to the socket task.
pub(crate) enum Command {
    AddChannel {
        id: ChannelId,
        topic: Topic,
        options: ChannelOptions,
        queue: QueueTx,
    },
    Join {
        id: ChannelId,
        done: Option<oneshot::Sender<Result<Payload, JoinError>>>,
    },
    JoinParams {
        id: ChannelId,
        params: Payload,
    },
    Leave {
        id: ChannelId,
        done: Option<oneshot::Sender<()>>,
    },
    Push {
        id: ChannelId,
        request: PushRequest,
        reply: Option<PushReply>,
        /// The bytes of the outgoing buffer it holds.
        cost: usize,
    },
    Remove {
        id: ChannelId,
    },
    Tap,
    Disconnect {
        done: oneshot::Sender<()>,
    },
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::AddChannel { .. } => "AddChannel",
            Self::Join { .. } => "Join",
            Self::JoinParams { .. } => "JoinParams",
            Self::Leave { .. } => "Leave",
            Self::Push { .. } => "Push",
            Self::Remove { .. } => "Remove",
            Self::Tap => "Tap",
            Self::Disconnect { .. } => "Disconnect",
        };
        f.write_str(name)
    }
}

impl Driver {
    /// Carries out a command; the clock is read only by those that need it.
    pub(super) fn command(&mut self, command: Command) {
        match command {
            Command::AddChannel {
                id,
                topic,
                options,
                queue,
            } => {
                let notify = matches!(options.params, crate::proto::JoinParams::Ask);
                let refused = self.core.add_channel(id, topic.clone(), options).is_err();
                if refused {
                    tracing::warn!(%topic, "another channel of this socket already uses the topic");
                }
                self.slots.insert(
                    id,
                    Slot {
                        queue,
                        notify,
                        join_waiters: Waiters::default(),
                        leave_waiters: Waiters::default(),
                        answered: Waiters::default(),
                        refused,
                    },
                );
            }
            Command::Join { id, done } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                if slot.refused {
                    if let Some(done) = done {
                        let _ = done.send(Err(JoinError::Closed(CloseCause::TopicTaken)));
                    }
                    return;
                }
                if let Some(done) = done {
                    match self.core.join_response(id) {
                        Some(response) => {
                            let _ = done.send(Ok(response.clone()));
                        }
                        None => slot.join_waiters.push(done),
                    }
                }
                self.core.join(Self::now(), id);
            }
            Command::JoinParams { id, params } => {
                self.core.provide_join_params(Self::now(), id, params)
            }
            Command::Leave { id, done } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return;
                };
                if let Some(done) = done {
                    if slot.queue.state() == ChannelState::Closed {
                        let _ = done.send(());
                    } else {
                        slot.leave_waiters.push(done);
                    }
                }
                self.core.leave(Self::now(), id);
            }
            Command::Push {
                id,
                request,
                reply,
                cost,
            } => {
                self.held += cost;
                self.core.push(Self::now(), id, request, reply);
            }
            Command::Remove { id } => {
                // A closed channel's slot goes now; one still open goes with its last notice.
                if let Some(slot) = self.slots.get(&id)
                    && (slot.refused || slot.queue.state() == ChannelState::Closed)
                {
                    self.slots.remove(&id);
                }
                self.core.remove_channel(Self::now(), id);
            }
            Command::Tap => self.core.set_tap(true),
            Command::Disconnect { done } => {
                self.disconnect_waiters.push(done);
                self.core.close(Self::now());
            }
        }
    }
}

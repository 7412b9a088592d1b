//! What a channel's handles, its consumer and the socket task share: one allocation per
//! channel, which holds the channel's identity, its consumer queue and its state.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::Channel;
use crate::driver::Command;
use crate::driver::queue;
use crate::proto::channel::ChannelId;
use crate::proto::message::Topic;
use crate::socket::WeakSocket;

/// The shared state of a channel. [`Channel`] handles count themselves in `handles` (the
/// consumer and the socket task hold the allocation too, without counting): the last handle
/// to go has the channel left and forgotten.
pub(crate) struct ChannelShared {
    pub(crate) id: ChannelId,
    pub(crate) topic: Topic,
    pub(crate) push_timeout: Duration,
    handles: AtomicUsize,
    pub(crate) queue: queue::Shared,
}

impl fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelShared")
            .field("id", &self.id)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ChannelShared {
    /// The shared state of a new channel, with no handle yet.
    pub(crate) fn new(id: ChannelId, topic: Topic, push_timeout: Duration) -> Self {
        Self {
            id,
            topic,
            push_timeout,
            handles: AtomicUsize::new(0),
            queue: queue::Shared::default(),
        }
    }

    /// Counts one more handle, unless the last one is gone already.
    fn add_handle(&self) -> bool {
        self.handles
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n > 0).then_some(n + 1)
            })
            .is_ok()
    }
}

impl Channel {
    /// The first handle of a channel.
    pub(crate) fn first_handle(shared: Arc<ChannelShared>, socket: crate::Socket) -> Self {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        Self {
            inner: shared,
            socket,
        }
    }
}

impl Clone for Channel {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::AcqRel);
        Self {
            inner: self.inner.clone(),
            socket: self.socket.clone(),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.socket.send(Command::Remove { id: self.inner.id });
        }
    }
}

/// A reference to a channel that does not keep it (or its socket) alive.
#[derive(Clone, Debug)]
pub(crate) struct WeakChannel {
    shared: Arc<ChannelShared>,
    socket: WeakSocket,
}

impl WeakChannel {
    pub(crate) fn new(channel: &Channel) -> Self {
        Self {
            shared: channel.inner.clone(),
            socket: channel.socket.downgrade(),
        }
    }

    /// A handle to the channel, while one still exists.
    pub(crate) fn upgrade(&self) -> Option<Channel> {
        let socket = self.socket.upgrade()?;
        self.shared.add_handle().then(|| Channel {
            inner: self.shared.clone(),
            socket,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_last_handle_removes_the_channel_and_a_weak_one_cannot_bring_it_back() {
        let socket = crate::Socket::builder("ws://127.0.0.1:9/socket")
            .build()
            .expect("a socket")
            .0;
        let (channel, _messages) = socket.channel("room:1").stream();
        let weak = WeakChannel::new(&channel);
        let again = weak.upgrade().expect("a handle exists");
        assert_eq!(channel.inner.handles.load(Ordering::Acquire), 2);
        drop(channel);
        assert_eq!(again.inner.handles.load(Ordering::Acquire), 1);
        let copy = again.clone();
        drop(again);
        drop(copy);
        assert_eq!(weak.shared.handles.load(Ordering::Acquire), 0);
        assert!(weak.upgrade().is_none(), "the channel is gone for good");
    }
}

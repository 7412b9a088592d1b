//! The socket-wide settings of the core.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::{ReconnectPolicy, ReconnectSchedule, RejoinPolicy, RejoinSchedule};
use crate::frame::Serializer;

/// The socket-wide settings of the core.
///
/// Start from [`CoreConfig::default()`] and change the fields you need (new fields may be
/// added, so the struct cannot be written as a literal outside this crate).
///
/// ```
/// use std::time::Duration;
/// use phoenix_channels::proto::CoreConfig;
///
/// let mut config = CoreConfig::default();
/// config.heartbeat_interval = Duration::from_secs(10);
/// assert_eq!(config.heartbeat_timeout, Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CoreConfig {
    /// Time between heartbeats (default 30 s).
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may wait for its reply before the connection is considered dead
    /// (default: the interval, as phoenix.js).
    pub heartbeat_timeout: Duration,
    /// Default join (and leave) timeout of channels (default 10 s).
    pub join_timeout: Duration,
    /// Default capacity of a channel's buffer of pushes waiting for the join (default 1024).
    pub push_buffer_capacity: usize,
    /// How long a connection must stay up before it counts as healthy, which resets the
    /// reconnect schedule to its first delay (default 10 s). A heartbeat reply proves it
    /// healthy sooner. Until then, a connection that opens and drops counts as one more
    /// consecutive failure: a server that accepts the upgrade and then closes (or sends a
    /// frame over the size limit) is redialled on the growing schedule, not every 10 ms.
    pub healthy_after: Duration,
    /// When and whether to reconnect.
    pub reconnect: Arc<dyn ReconnectPolicy>,
    /// Default rejoin policy of channels.
    pub rejoin: Arc<dyn RejoinPolicy>,
    /// The wire format (default [`Serializer::Json`]). The transport must connect with its
    /// [`vsn`](Serializer::vsn).
    pub serializer: Serializer,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(30),
            join_timeout: Duration::from_secs(10),
            push_buffer_capacity: 1024,
            healthy_after: Duration::from_secs(10),
            reconnect: Arc::new(ReconnectSchedule::default()),
            rejoin: Arc::new(RejoinSchedule::default()),
            serializer: Serializer::default(),
        }
    }
}

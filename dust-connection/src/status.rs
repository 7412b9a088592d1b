//! The connection's status as the seed names it, derived from the socket's own status, and
//! the task that reports its changes.

use std::time::{Duration, SystemTime};

use phoenix_channels::SocketStatus;
use serde_json::Value;

use crate::connection::{ConnInner, DustConnection, lock};

/// The connection's status, as the seed names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionStatus {
    /// Not connected: not started yet, connecting for the first time, or stopped.
    Disconnected,
    /// Connected.
    Connected,
    /// The connection dropped; reconnecting with backoff.
    Reconnecting,
}

impl ConnectionStatus {
    /// `disconnected`, `connected` or `reconnecting`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
        }
    }
}

/// A change of the connection's status (the seed's `[:dustlayer, :connection, :state_change]`
/// telemetry event; also logged as a `tracing` event with target `dustlayer::connection`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StateChange {
    /// The previous status (`None` for the first one).
    pub from: Option<ConnectionStatus>,
    /// The new status.
    pub to: ConnectionStatus,
    /// The connect URL, token redacted.
    pub url: String,
    /// The device id.
    pub device_id: String,
    /// The configured stores.
    pub stores: Vec<String>,
    /// Why, on a disconnect.
    pub reason: Option<String>,
}

/// A snapshot of the connection, as the seed's `info/1`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Info {
    /// The status.
    pub status: ConnectionStatus,
    /// The connect URL, token redacted.
    pub url: String,
    /// The device id.
    pub device_id: String,
    /// When the connection was (last) established.
    pub connected_at: Option<SystemTime>,
    /// Time since `connected_at`.
    pub uptime: Option<Duration>,
    /// The configured stores.
    pub stores: Vec<String>,
    /// The stores joined right now.
    pub joined_stores: Vec<String>,
}

impl Info {
    /// As JSON (for tools): `uptime_seconds` and `connected_at` in seconds since the epoch.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "status": self.status.as_str(),
            "url": self.url,
            "device_id": self.device_id,
            "connected_at": self.connected_at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            "uptime_seconds": self.uptime.map(|d| d.as_secs()),
            "stores": self.stores,
            "joined_stores": self.joined_stores,
        })
    }
}

/// The connect URL as [`Info`] and [`StateChange`] show it: the socket's URL redacted as
/// phoenix-channels redacts it (user info and every query value but `vsn`), with the seed's
/// params appended as the socket sends them (`capver`, `device_id`, `token` redacted, `vsn`).
pub(crate) fn shown_url(socket_url: &str, device_id: &str) -> String {
    // The socket's own URL with every credential redacted (user info, every query value but
    // `vsn`), then the seed's params, whose values are known: only the token is hidden.
    let redacted = url::Url::parse(socket_url)
        .map(|url| phoenix_channels::socket::redact_url(&url))
        .and_then(|shown| url::Url::parse(&shown));
    let Ok(mut url) = redacted else {
        // The socket was built from a parsed URL, so this does not happen; never show more.
        return "(unparsable url)".to_owned();
    };
    url.query_pairs_mut()
        .append_pair("capver", "3")
        .append_pair("device_id", device_id)
        .append_pair("token", "REDACTED")
        .append_pair("vsn", "2.0.0");
    url.to_string()
}

#[cfg(test)]
mod shown_url_tests {
    use super::*;
    use crate::{DeviceId, DustConnection};

    #[test]
    fn the_seed_params_join_an_existing_query_and_every_secret_is_redacted() {
        assert_eq!(
            shown_url("ws://h:4000/ws/sync/websocket", "dev_a"),
            "ws://h:4000/ws/sync/websocket?capver=3&device_id=dev_a&token=REDACTED&vsn=2.0.0"
        );
        assert_eq!(
            shown_url(
                "wss://user:pw@h/ws/sync/websocket?tenant=t&api_key=k&auth_token=x",
                "dev_b"
            ),
            "wss://REDACTED:REDACTED@h/ws/sync/websocket?tenant=REDACTED&api_key=REDACTED\
             &auth_token=REDACTED&capver=3&device_id=dev_b&token=REDACTED&vsn=2.0.0"
        );
    }

    #[tokio::test]
    async fn info_shows_an_endpoint_with_a_query_as_one_well_formed_url() {
        let connection = DustConnection::builder("ws://127.0.0.1:9/ws/sync?tenant=t&secret=s")
            .token("dust_tok_hidden")
            .device_id(DeviceId::new("dev_x"))
            .store("o/s")
            .manual()
            .connect()
            .unwrap();
        let url = connection.info().url;
        assert_eq!(
            url,
            "ws://127.0.0.1:9/ws/sync/websocket?tenant=REDACTED&secret=REDACTED\
             &capver=3&device_id=dev_x&token=REDACTED&vsn=2.0.0"
        );
        assert!(!url.contains("dust_tok_hidden") && url.matches('?').count() == 1);
    }
}

impl ConnectionStatus {
    /// The seed's status for the socket's (the one owner of the connection's state): after
    /// the first connection, `connecting` is `reconnecting`. With the reason, when there is
    /// one.
    pub(crate) fn from_socket(
        status: &SocketStatus,
        ever_connected: bool,
    ) -> (Self, Option<String>) {
        match status {
            SocketStatus::Connected => (Self::Connected, None),
            SocketStatus::Reconnecting { reason, .. } => {
                (Self::Reconnecting, Some(reason.to_string()))
            }
            SocketStatus::Connecting { .. } if ever_connected => (Self::Reconnecting, None),
            SocketStatus::Disconnected { reason } => {
                (Self::Disconnected, reason.as_ref().map(ToString::to_string))
            }
            _ => (Self::Disconnected, None),
        }
    }
}

/// What the state-change stream last reported, so that each change is reported once. The
/// status itself is never read from here: it is the socket's.
#[derive(Debug)]
pub(crate) struct Reported {
    pub(crate) status: ConnectionStatus,
    /// When the socket last connected.
    pub(crate) connected_at: Option<SystemTime>,
}

/// Follows the socket's status and reports its changes as the seed's state changes.
pub(crate) async fn watch_status(
    inner: std::sync::Weak<ConnInner>,
    mut status: tokio::sync::watch::Receiver<SocketStatus>,
) {
    while status.changed().await.is_ok() {
        let current = status.borrow_and_update().clone();
        let Some(inner) = inner.upgrade() else { return };
        let connection = DustConnection { inner };
        let ever_connected = lock(&connection.inner.reported).connected_at.is_some();
        let (to, reason) = ConnectionStatus::from_socket(&current, ever_connected);
        connection.report(to, reason);
    }
}

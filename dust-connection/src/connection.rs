//! The connection: its handle, its stores and its notices.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use phoenix_channels::{Socket, SocketDriver, SocketStatus};
use tokio::sync::broadcast;

use crate::config::DustConnectionBuilder;
use crate::device::DeviceId;
use crate::error::UnknownStore;
use crate::notice::Notice;
use crate::status::{ConnectionStatus, Info, Reported, StateChange};
use crate::store::Store;

pub(crate) struct ConnInner {
    pub(crate) socket: Socket,
    pub(crate) driver: Mutex<Option<SocketDriver>>,
    pub(crate) stores: BTreeMap<String, Store>,
    pub(crate) store_names: Vec<String>,
    pub(crate) url: String,
    /// The endpoint as configured (credentials included): the origin of file downloads.
    pub(crate) endpoint: String,
    /// The token file downloads are made with.
    pub(crate) file_token: crate::file::FileToken,
    pub(crate) device_id: DeviceId,
    pub(crate) reported: Mutex<Reported>,
    pub(crate) changes: broadcast::Sender<StateChange>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) runtime: tokio::runtime::Handle,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A connection to Dust: one socket, one channel per store, and a write path per store. A
/// cheap `Clone` handle.
///
/// ```no_run
/// use dust_connection::{DustConnection, MemoryEngine};
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let engine = MemoryEngine::new();
/// let dust = DustConnection::builder("ws://localhost:7755/ws/sync")
///     .token("dust_tok_dev")
///     .store("acme/app")
///     .engine(engine.clone())
///     .connect()?;
/// let app = dust.store("acme/app")?;
/// let ack = app.set(["users", "ada"], json!({"name": "Ada"})).await?;
/// println!("applied at seq {:?}", ack.store_seq());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DustConnection {
    pub(crate) inner: Arc<ConnInner>,
}

impl fmt::Debug for DustConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DustConnection")
            .field("url", &self.inner.url)
            .field("stores", &self.inner.store_names)
            .finish_non_exhaustive()
    }
}

impl DustConnection {
    /// A builder for a connection to the Dust socket at `url`, e.g.
    /// `wss://dust.example.com/ws/sync` (`/websocket` and the params are added).
    pub fn builder(url: impl Into<String>) -> DustConnectionBuilder {
        DustConnectionBuilder::new(url.into())
    }

    pub(crate) fn emit_change(
        &self,
        from: Option<ConnectionStatus>,
        to: ConnectionStatus,
        reason: Option<String>,
    ) {
        let change = StateChange {
            from,
            to,
            url: self.inner.url.clone(),
            device_id: self.inner.device_id.to_string(),
            stores: self.inner.store_names.clone(),
            reason,
        };
        tracing::info!(
            target: "dustlayer::connection",
            from = from.map(|s| s.as_str()),
            to = to.as_str(),
            url = %change.url,
            device_id = %change.device_id,
            stores = ?change.stores,
            reason = change.reason.as_deref(),
            "state_change"
        );
        let _ = self.inner.changes.send(change);
    }

    /// Starts connecting a connection built with [`DustConnectionBuilder::manual`]; returns
    /// whether it started now (false if it was already started).
    pub fn connect(&self) -> bool {
        match lock(&self.inner.driver).take() {
            Some(driver) => {
                self.inner.runtime.spawn(driver);
                true
            }
            None => false,
        }
    }

    /// A configured store; [`UnknownStore`] if no store of that name was configured.
    pub fn store(&self, name: &str) -> Result<Store, UnknownStore> {
        self.inner
            .stores
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownStore(name.to_owned()))
    }

    /// The configured stores.
    pub fn stores(&self) -> &[String] {
        &self.inner.store_names
    }

    /// The device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The status, URL, device, uptime and stores.
    pub fn info(&self) -> Info {
        let connected_at = lock(&self.inner.reported).connected_at;
        let (status, _) =
            ConnectionStatus::from_socket(&self.inner.socket.status(), connected_at.is_some());
        Info {
            status,
            url: self.inner.url.clone(),
            device_id: self.inner.device_id.to_string(),
            connected_at,
            uptime: connected_at.and_then(|t| SystemTime::now().duration_since(t).ok()),
            stores: self.inner.store_names.clone(),
            joined_stores: self
                .inner
                .stores
                .values()
                .filter(|store| store.is_joined())
                .map(|store| store.name().to_owned())
                .collect(),
        }
    }

    /// Whether the connection is up (false while connecting, reconnecting, or stopped), read
    /// from the socket's own status.
    pub fn is_connected(&self) -> bool {
        matches!(self.inner.socket.status(), SocketStatus::Connected)
    }

    /// The status changes from now on.
    pub fn state_changes(&self) -> broadcast::Receiver<StateChange> {
        self.inner.changes.subscribe()
    }

    /// What happens on the stores (joins, events, snapshots, catch-ups, status) from now on.
    pub fn notices(&self) -> broadcast::Receiver<Notice> {
        self.inner.notices.subscribe()
    }

    /// The underlying socket.
    pub fn socket(&self) -> &Socket {
        &self.inner.socket
    }

    /// Closes the connection for good; writes not answered yet fail. The state change to
    /// `Disconnected` is emitted before this returns.
    pub async fn disconnect(&self) {
        self.connect();
        self.inner.socket.disconnect().await;
        self.report(ConnectionStatus::Disconnected, None);
    }

    /// Reports a change of status on the state-change stream, once.
    pub(crate) fn report(&self, to: ConnectionStatus, reason: Option<String>) {
        let from = {
            let mut reported = lock(&self.inner.reported);
            if reported.status == to {
                return;
            }
            if to == ConnectionStatus::Connected {
                reported.connected_at = Some(SystemTime::now());
            }
            std::mem::replace(&mut reported.status, to)
        };
        self.emit_change(Some(from), to, reason);
    }
}

//! [`OutboxLayer`]: the outbox stage as a tower layer over the leaf service.

use std::fmt;
use std::sync::{Arc, Mutex};

use phoenix_channels::Socket;
use tokio::sync::{broadcast, mpsc};
use tower::{Layer, Service};

use super::journal::{Journal, Journaled, Recovered};
use super::service::Outbox;
use super::worker::{
    INPUT_CAPACITY, SharedRejoinPolicy, StoreHandler, StoreLink, Worker, WorkerConfig,
    default_join_params,
};
use crate::engine::SyncEngine;
use crate::error::WriteError;
use crate::layer::SendWrite;
use crate::notice::Notice;
use crate::write::WriteAck;

/// Runs a store's [`Worker`]: by default `tokio::spawn` on the connection's runtime.
pub(crate) type Spawn = Arc<dyn Fn(Worker) + Send + Sync>;

/// The outbox stage of one store, as a tower [`Layer`] over the leaf service (a
/// `Service<SendWrite>`, such as [`ChannelService`](crate::layer::ChannelService)), in the
/// manner of `tower::buffer::BufferLayer`: [`layer`](Layer::layer) joins the store's channel,
/// builds its [`Outbox`] and spawns its [`Worker`] with the connection's spawner;
/// [`pair`](Self::pair) does the same but gives the worker back, for you to run on the
/// executor you choose.
///
/// The connection builds one per store (see
/// [`DustConnectionBuilder::spawn_workers_with`](crate::DustConnectionBuilder::spawn_workers_with)
/// to choose where the workers run). Each call to `layer` or `pair` makes the store's channel
/// anew; a store must have one outbox.
#[derive(Clone)]
pub struct OutboxLayer {
    socket: Socket,
    store: Arc<str>,
    engine: Arc<dyn SyncEngine>,
    notices: broadcast::Sender<Notice>,
    config: WorkerConfig,
    spawn: Spawn,
    journal: Journal,
    /// The writes the durable outbox held at the start, for the first `pair`.
    recovered: Arc<Mutex<Vec<Recovered>>>,
}

impl fmt::Debug for OutboxLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxLayer")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OutboxLayer {
    pub(crate) fn new(
        socket: Socket,
        store: Arc<str>,
        engine: Arc<dyn SyncEngine>,
        notices: broadcast::Sender<Notice>,
        config: WorkerConfig,
        spawn: Spawn,
        journaled: Journaled,
    ) -> Self {
        Self {
            socket,
            store,
            engine,
            notices,
            config,
            spawn,
            journal: journaled.journal,
            recovered: Arc::new(Mutex::new(journaled.recovered)),
        }
    }

    /// Joins the store's channel and builds its outbox in front of `leaf`, and the worker that
    /// serves it, without running the worker: the store's writes wait until it runs.
    pub fn pair<S>(&self, leaf: S) -> (Outbox, Worker)
    where
        S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
        S::Future: Send + 'static,
    {
        let (inputs_tx, inputs) = mpsc::channel(INPUT_CAPACITY);
        let channel = self
            .socket
            .channel(format!("store:{}", self.store))
            .params(default_join_params())
            .rejoin_policy(SharedRejoinPolicy(self.config.rejoin_policy.clone()))
            .rejoin_after_server_close(true)
            .handler(StoreHandler { inputs: inputs_tx });
        drop(channel.join());
        let recovered = match self.recovered.lock() {
            Ok(mut recovered) => std::mem::take(&mut *recovered),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        Outbox::pair(
            leaf,
            StoreLink {
                store: self.store.clone(),
                channel,
                engine: self.engine.clone(),
                inputs,
                notices: self.notices.clone(),
                config: self.config.clone(),
                journal: self.journal.clone(),
                recovered: Vec::new(),
            },
            recovered,
        )
    }
}

impl<S> Layer<S> for OutboxLayer
where
    S: Service<SendWrite, Response = WriteAck, Error = WriteError> + Send + 'static,
    S::Future: Send + 'static,
{
    type Service = Outbox;

    fn layer(&self, leaf: S) -> Outbox {
        let (outbox, worker) = self.pair(leaf);
        (self.spawn)(worker);
        outbox
    }
}

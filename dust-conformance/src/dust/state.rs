//! The emulation's shared state: tokens, the store registry, the journal, the rate limiter,
//! the armed faults.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::clock::Clock;
use super::config::{DustConfig, Limits, RateLimit, StoreAccess, TokenConfig};
use super::persist::{Journal, Record};
use super::store::{Now, StoreData};
use crate::error::StartError;
use crate::shared::lock;

/// What the next `write`/`put_file` reply suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplyFault {
    Drop,
    Delay(Duration),
}

/// One store.
#[derive(Debug)]
pub(crate) struct StoreHandle {
    pub(crate) id: String,
    pub(crate) org: String,
    pub(crate) name: String,
    archived: AtomicBool,
    pub(crate) data: tokio::sync::Mutex<StoreData>,
}

impl StoreHandle {
    fn new(id: String, org: String, name: String) -> Self {
        Self {
            id,
            org,
            name,
            archived: AtomicBool::new(false),
            data: tokio::sync::Mutex::new(StoreData::default()),
        }
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{}/{}", self.org, self.name)
    }

    pub(crate) fn archived(&self) -> bool {
        self.archived.load(Ordering::SeqCst)
    }

    pub(crate) fn set_archived(&self) {
        self.archived.store(true, Ordering::SeqCst);
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_name: HashMap<String, Arc<StoreHandle>>,
    by_id: HashMap<String, Arc<StoreHandle>>,
}

/// How a `store:{ref}` topic resolves (`resolve_store`).
#[derive(Debug)]
pub(crate) enum Resolved {
    Found(Arc<StoreHandle>),
    NotFound,
    /// Not a name and not a UUID: Ecto raises, the join crashes.
    NotAUuid,
}

/// Why a token may not use a store (`authorize_store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    StoreNotAllowed,
    MissingScope(&'static str),
}

impl AuthError {
    /// The reply payload (`auth_error/1`).
    pub(crate) fn reply(&self) -> Value {
        match self {
            Self::StoreNotAllowed => json!({
                "reason": "store_not_allowed",
                "message": "Token does not have access to this store",
            }),
            Self::MissingScope(scope) => json!({
                "reason": "missing_scope",
                "scope": scope,
                "message": format!("Token is missing {scope} scope"),
            }),
        }
    }
}

/// The shared state of a Dust emulation.
#[derive(Debug)]
pub(crate) struct DustShared {
    pub(crate) tokens: HashMap<String, Arc<TokenConfig>>,
    pub(crate) auto_create: bool,
    pub(crate) limits: Limits,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) clock: Clock,
    registry: Mutex<Registry>,
    journal: Option<Journal>,
    /// Held (shared) by every change to the stores; a restart takes it exclusively so that it
    /// reloads only once no change is in flight.
    pub(crate) gate: tokio::sync::RwLock<()>,
    rate: Mutex<HashMap<String, (i64, u64)>>,
    reply_fault: Mutex<Option<ReplyFault>>,
    /// The crash faults: crash the next write; crash every write at or below a path.
    crash_next: AtomicBool,
    crash_at: Mutex<Option<String>>,
    /// How long each `write`/`put_file` takes to commit (the real server's database commit).
    write_cost: Mutex<Duration>,
    devices: Mutex<BTreeMap<String, String>>,
    acks: Mutex<BTreeMap<(String, String), Value>>,
    /// Uploaded blobs: hash → size (the real server's `blobs` table).
    pub(crate) blobs: Mutex<HashMap<String, u64>>,
    /// Uploaded blobs' contents (the real server's blob files), served by `GET /api/files`.
    pub(crate) files: Mutex<HashMap<String, BlobFile>>,
    /// The HTTP API's per-token read counters (fixed windows).
    api_reads: Mutex<HashMap<String, (i64, u64)>>,
    pub(crate) api_read_limit: RateLimit,
}

/// A blob's content and the metadata its first upload gave it.
#[derive(Debug, Clone)]
pub(crate) struct BlobFile {
    pub(crate) content: bytes::Bytes,
    pub(crate) content_type: String,
    pub(crate) filename: Option<String>,
}

/// What replaying a journal rebuilds.
type Replayed = (Registry, HashMap<String, u64>, HashMap<String, BlobFile>);

/// `^[a-z0-9][a-z0-9-]*$` (organization slugs).
fn valid_org(org: &str) -> bool {
    let mut bytes = org.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `^[a-z0-9][a-z0-9._-]*$` (store names).
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Splits and validates a full store name `org/name`.
pub(crate) fn split_name(full: &str) -> Option<(&str, &str)> {
    let (org, name) = full.split_once('/')?;
    (valid_org(org) && valid_name(name)).then_some((org, name))
}

/// The store's UUID: derived from its full name, so it is stable across restarts.
pub(crate) fn store_uuid(full_name: &str) -> String {
    let digest = super::sha256::digest(format!("dust-conformance store {full_name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid_string(&b)
}

fn uuid_string(b: &[u8; 16]) -> String {
    let hex = super::sha256::hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `Ecto.UUID.cast/1`: a hyphenated hex UUID (any case), or 16 raw bytes.
fn cast_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.len() == 36 {
        let hyphens = [8, 13, 18, 23];
        let ok = bytes.iter().enumerate().all(|(i, b)| {
            if hyphens.contains(&i) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
        return ok.then(|| text.to_ascii_lowercase());
    }
    let raw: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid_string(&raw))
}

impl DustShared {
    /// Builds the state: loads the journal if any, creates the declared stores. Returns the
    /// socket path with it.
    pub(crate) async fn open(config: DustConfig) -> Result<(String, Arc<Self>), StartError> {
        let DustConfig {
            path,
            tokens,
            stores,
            auto_create,
            limits,
            rate_limit,
            api_read_limit,
            state,
            clock,
        } = config;
        let state_error = |reason: String| StartError::State {
            path: state.clone().unwrap_or_default(),
            reason,
        };
        let mut declared = stores;
        for token in &tokens {
            if let StoreAccess::Selected(names) = &token.access {
                declared.extend(names.iter().cloned());
            }
        }
        if let Some(bad) = declared.iter().find(|n| split_name(n).is_none()) {
            return Err(StartError::Config(format!(
                "invalid store name {bad:?}: expected org/name (lower-case letters, digits, - in the org; also . and _ in the name)"
            )));
        }
        let (journal, records) = match &state {
            Some(path) => {
                let (journal, records) = Journal::open(path).map_err(state_error)?;
                (Some(journal), records)
            }
            None => (None, Vec::new()),
        };
        let (registry, blobs, files) = replay(&records).map_err(state_error)?;
        let shared = Arc::new(Self {
            tokens: tokens
                .into_iter()
                .map(|t| (t.token.clone(), Arc::new(t)))
                .collect(),
            auto_create,
            limits,
            rate_limit,
            clock,
            registry: Mutex::new(registry),
            journal,
            gate: tokio::sync::RwLock::new(()),
            rate: Mutex::default(),
            reply_fault: Mutex::default(),
            write_cost: Mutex::default(),
            crash_next: AtomicBool::new(false),
            crash_at: Mutex::default(),
            devices: Mutex::default(),
            acks: Mutex::default(),
            blobs: Mutex::new(blobs),
            files: Mutex::new(files),
            api_reads: Mutex::default(),
            api_read_limit,
        });
        for name in declared {
            if let Some((org, store)) = split_name(&name) {
                shared
                    .create_store(org, store)
                    .await
                    .map_err(|e| StartError::State {
                        path: state.clone().unwrap_or_default(),
                        reason: e,
                    })?;
            }
        }
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Ok((path.trim_end_matches('/').to_owned(), shared))
    }

    pub(crate) fn now(&self) -> Now {
        Now {
            wall_us: self.clock.wall_us(),
            mono_ms: self.clock.mono_ms(),
        }
    }

    /// Appends a record to the journal (when there is one); returns once it is durable.
    pub(crate) async fn persist(&self, record: &Record) -> Result<(), String> {
        match &self.journal {
            Some(journal) => journal.append(record).await,
            None => Ok(()),
        }
    }

    /// Whether a state file is configured.
    pub(crate) fn durable(&self) -> bool {
        self.journal.is_some()
    }

    /// Finds a store by full name or UUID, whatever its status.
    pub(crate) fn find(&self, store: &str) -> Option<Arc<StoreHandle>> {
        let registry = lock(&self.registry);
        registry
            .by_name
            .get(store)
            .or_else(|| registry.by_id.get(&store.to_ascii_lowercase()))
            .cloned()
    }

    /// Every store, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<StoreHandle>> {
        let mut stores: Vec<_> = lock(&self.registry).by_name.values().cloned().collect();
        stores.sort_by_key(|s| s.full_name());
        stores
    }

    /// `resolve_store/1`: by full name (active stores only) or by UUID (any status).
    pub(crate) fn resolve(&self, store_ref: &str) -> Resolved {
        let registry = lock(&self.registry);
        if store_ref.contains('/') {
            match registry.by_name.get(store_ref) {
                Some(store) if !store.archived() => Resolved::Found(store.clone()),
                _ => Resolved::NotFound,
            }
        } else {
            match cast_uuid(store_ref) {
                Some(id) => registry
                    .by_id
                    .get(&id)
                    .map_or(Resolved::NotFound, |s| Resolved::Found(s.clone())),
                None => Resolved::NotAUuid,
            }
        }
    }

    /// Creates a store (durably) unless it exists; returns it.
    pub(crate) async fn create_store(
        &self,
        org: &str,
        name: &str,
    ) -> Result<Arc<StoreHandle>, String> {
        let _gate = self.gate.read().await;
        let full = format!("{org}/{name}");
        if let Some(existing) = lock(&self.registry).by_name.get(&full) {
            return Ok(existing.clone());
        }
        let id = store_uuid(&full);
        self.persist(&Record::Store {
            id: id.clone(),
            org: org.to_owned(),
            name: name.to_owned(),
        })
        .await?;
        let mut registry = lock(&self.registry);
        let store = registry
            .by_name
            .entry(full)
            .or_insert_with(|| {
                Arc::new(StoreHandle::new(
                    id.clone(),
                    org.to_owned(),
                    name.to_owned(),
                ))
            })
            .clone();
        registry.by_id.insert(id, store.clone());
        tracing::info!(store = %store.full_name(), id = %store.id, "store created");
        Ok(store)
    }

    /// Whether a token's access covers a store (`scopes_store?`), by org and full name.
    pub(crate) fn token_reaches(token: &TokenConfig, org: &str, full_name: &str) -> bool {
        match &token.access {
            StoreAccess::All => token.org.as_deref().is_none_or(|o| o == org),
            StoreAccess::Selected(names) => names.iter().any(|n| n == full_name),
        }
    }

    /// `authorize_store/3`.
    pub(crate) fn authorize(
        token: &TokenConfig,
        store: &StoreHandle,
        scope: &'static str,
    ) -> Result<(), AuthError> {
        if !Self::token_reaches(token, &store.org, &store.full_name()) {
            return Err(AuthError::StoreNotAllowed);
        }
        if !token.scopes.contains(scope) {
            return Err(AuthError::MissingScope(scope));
        }
        Ok(())
    }

    /// The join reply's `store_access`.
    pub(crate) fn store_access(&self, token: &TokenConfig) -> Value {
        match &token.access {
            StoreAccess::All => json!({"mode": "all", "store_ids": []}),
            StoreAccess::Selected(names) => {
                let mut ids: Vec<String> = names.iter().map(|n| store_uuid(n)).collect();
                ids.sort();
                ids.dedup();
                json!({"mode": "selected", "store_ids": ids})
            }
        }
    }

    /// Counts a write against the token's fixed window; `Err(retry_after_ms)` when over.
    pub(crate) fn check_rate(&self, token: &str) -> Result<(), u64> {
        let Some(limit) = self.rate_limit else {
            return Ok(());
        };
        self.hit(&self.rate, token, limit).map(|_| ())
    }

    /// Counts an HTTP API read against the token's read window: `Ok(count)` (this one
    /// included), or `Err(retry_after_ms)` when over.
    pub(crate) fn check_api_read(&self, token: &str) -> Result<u64, u64> {
        self.hit(&self.api_reads, token, self.api_read_limit)
    }

    /// One hit on a fixed window per key (the real server's Hammer).
    fn hit(
        &self,
        counters: &Mutex<HashMap<String, (i64, u64)>>,
        key: &str,
        limit: RateLimit,
    ) -> Result<u64, u64> {
        let window_ms = i64::try_from(limit.window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let window = self.clock.wall_ms().div_euclid(window_ms);
        let mut counters = lock(counters);
        let slot = counters.entry(key.to_owned()).or_insert((window, 0));
        if slot.0 != window {
            *slot = (window, 0);
        }
        slot.1 += 1;
        if slot.1 > limit.max {
            Err(window_ms.unsigned_abs())
        } else {
            Ok(slot.1)
        }
    }

    pub(crate) fn arm_reply_fault(&self, fault: Option<ReplyFault>) {
        *lock(&self.reply_fault) = fault;
    }

    pub(crate) fn take_reply_fault(&self) -> Option<ReplyFault> {
        lock(&self.reply_fault).take()
    }

    pub(crate) fn arm_crash_next(&self, on: bool) {
        self.crash_next.store(on, Ordering::SeqCst);
    }

    /// Whether the crash-next fault is armed; disarms it.
    pub(crate) fn take_crash_next(&self) -> bool {
        self.crash_next.swap(false, Ordering::SeqCst)
    }

    pub(crate) fn set_crash_at(&self, path: Option<String>) {
        *lock(&self.crash_at) = path;
    }

    /// Whether a write at this rendered path crashes: the path is the fault's, or below it.
    pub(crate) fn crashes_at(&self, path: &str) -> bool {
        lock(&self.crash_at).as_deref().is_some_and(|at| {
            path.strip_prefix(at)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    pub(crate) fn set_write_cost(&self, cost: Duration) {
        *lock(&self.write_cost) = cost;
    }

    pub(crate) fn write_cost(&self) -> Duration {
        *lock(&self.write_cost)
    }

    /// `ensure_device/1`.
    pub(crate) fn ensure_device(&self, device_id: &str) {
        let seen = super::clock::iso8601(self.clock.wall_us(), 6);
        lock(&self.devices).insert(device_id.to_owned(), seen);
    }

    pub(crate) fn devices(&self) -> BTreeMap<String, String> {
        lock(&self.devices).clone()
    }

    pub(crate) fn record_ack(&self, store_id: &str, device_id: &str, seq: Value) {
        lock(&self.acks).insert((store_id.to_owned(), device_id.to_owned()), seq);
    }

    pub(crate) fn acks(&self, store_id: &str) -> BTreeMap<String, Value> {
        lock(&self.acks)
            .iter()
            .filter(|((s, _), _)| s == store_id)
            .map(|((_, d), v)| (d.clone(), v.clone()))
            .collect()
    }

    /// After the listener went down (every connection dropped): reload the stores from the
    /// journal, or keep them in memory; in-memory lease deadlines and rate-limit counters
    /// are lost either way, as in a real restart.
    pub(crate) async fn after_restart(&self) -> Result<(), String> {
        let _gate = self.gate.write().await;
        *lock(&self.rate) = HashMap::new();
        *lock(&self.api_reads) = HashMap::new();
        match &self.journal {
            Some(journal) => {
                journal.flush().await;
                let records = journal.reload()?;
                let (registry, blobs, files) = replay(&records)?;
                *lock(&self.registry) = registry;
                *lock(&self.blobs) = blobs;
                *lock(&self.files) = files;
            }
            None => {
                for store in self.all() {
                    store.data.lock().await.lease_deadlines.clear();
                }
            }
        }
        Ok(())
    }
}

/// Rebuilds the stores from journal records.
fn replay(records: &[Record]) -> Result<Replayed, String> {
    let mut registry = Registry::default();
    let mut blobs = HashMap::new();
    let mut files = HashMap::new();
    for record in records {
        match record {
            Record::Header { .. } => {}
            Record::Store { id, org, name } => {
                let store = Arc::new(StoreHandle::new(id.clone(), org.clone(), name.clone()));
                registry
                    .by_name
                    .entry(store.full_name())
                    .or_insert_with(|| store.clone());
                registry.by_id.entry(id.clone()).or_insert(store);
            }
            Record::Op { store, row } => {
                let handle = registry
                    .by_id
                    .get(store)
                    .ok_or_else(|| format!("op {} for an unknown store {store}", row.seq))?;
                let mut data = handle
                    .data
                    .try_lock()
                    .map_err(|_| "store busy during replay".to_owned())?;
                let expected = data.current_seq() + 1;
                if row.seq != expected {
                    return Err(format!(
                        "store {store}: op seq {} where {expected} was expected",
                        row.seq
                    ));
                }
                data.apply(row, None);
                if let Some((hash, size)) = &row.blob {
                    blobs.insert(hash.clone(), *size);
                }
            }
            Record::Archive { store } => {
                if let Some(handle) = registry.by_id.get(store) {
                    handle.set_archived();
                }
            }
            Record::Reset { store } => {
                if let Some(handle) = registry.by_id.get(store) {
                    let mut data = handle
                        .data
                        .try_lock()
                        .map_err(|_| "store busy during replay".to_owned())?;
                    *data = StoreData::default();
                }
            }
            Record::Blob {
                hash,
                content_base64,
                content_type,
                filename,
            } => {
                use base64::Engine as _;
                let content = super::store::base64_engine()
                    .decode(content_base64)
                    .map_err(|e| format!("blob {hash}: {e}"))?;
                files.entry(hash.clone()).or_insert(BlobFile {
                    content: content.into(),
                    content_type: content_type.clone(),
                    filename: filename.clone(),
                });
            }
            Record::Compact { store, at } => {
                if let Some(handle) = registry.by_id.get(store) {
                    let mut data = handle
                        .data
                        .try_lock()
                        .map_err(|_| "store busy during replay".to_owned())?;
                    data.compact(at.clone());
                }
            }
        }
    }
    Ok((registry, blobs, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_uuids() {
        assert_eq!(split_name("acme/app.v2"), Some(("acme", "app.v2")));
        assert_eq!(split_name("Acme/app"), None);
        assert_eq!(split_name("acme/a/b"), None);
        assert_eq!(split_name("acme/"), None);
        let id = store_uuid("acme/app");
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_eq!(cast_uuid(&id.to_ascii_uppercase()), Some(id.clone()));
        assert_eq!(cast_uuid("nope"), None);
        assert!(cast_uuid("0123456789abcdef").is_some());
    }
}

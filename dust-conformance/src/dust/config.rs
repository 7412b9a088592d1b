//! What a Dust emulation serves: tokens, stores, limits, rate limit, state file, clock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use super::clock::Clock;

/// The scopes a real Dust token can hold.
pub const SCOPES: [&str; 12] = [
    "audit:read",
    "entries:read",
    "entries:write",
    "files:read",
    "files:write",
    "stores:clone",
    "stores:create",
    "stores:read",
    "tokens:read",
    "tokens:write",
    "webhooks:read",
    "webhooks:write",
];

/// The prefix every Dust token has; the socket refuses (403) any other token.
pub const TOKEN_PREFIX: &str = "dust_tok_";

/// Which stores a token reaches (the real server's `store_access_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreAccess {
    /// Every store of the token's organization (`"mode": "all"`, `"store_ids": []`).
    All,
    /// These stores only, by full name `org/name` (`"mode": "selected"`, their UUIDs in
    /// `store_ids`). They are created when the server starts.
    Selected(Vec<String>),
}

/// One token the socket accepts.
///
/// ```
/// use dust_conformance::dust::{StoreAccess, TokenConfig};
///
/// // Read-only, on one store.
/// let token = TokenConfig::new("dust_tok_reader")
///     .scopes(["entries:read"])
///     .access(StoreAccess::Selected(vec!["acme/app".into()]));
/// assert_eq!(token.token(), "dust_tok_reader");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub(crate) token: String,
    pub(crate) org: Option<String>,
    pub(crate) scopes: BTreeSet<String>,
    pub(crate) access: StoreAccess,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token itself is a secret: only its prefix is shown.
        let shown: String = self.token.chars().take(TOKEN_PREFIX.len() + 2).collect();
        f.debug_struct("TokenConfig")
            .field("token", &format_args!("{shown}…"))
            .field("org", &self.org)
            .field("scopes", &self.scopes)
            .field("access", &self.access)
            .finish()
    }
}

impl TokenConfig {
    /// A token with every scope of [`SCOPES`], access to all stores, and no organization of
    /// its own: it belongs to every organization (a convenience of the emulation; a real
    /// token belongs to one). A token without the `dust_tok_` prefix never authenticates,
    /// as on the real server.
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            org: None,
            scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            access: StoreAccess::All,
        }
    }

    /// Replaces the scopes (sorted and deduplicated, as the join reply lists them).
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Puts the token in one organization: with [`StoreAccess::All`] it reaches that
    /// organization's stores only (`store_not_allowed` elsewhere).
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Sets which stores it reaches.
    pub fn access(mut self, access: StoreAccess) -> Self {
        self.access = access;
        self
    }

    /// The token string.
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// The plan limits checked on writes (the real server's `Dust.Billing.Limits`): keys per
/// store for `set`/`merge`, file bytes per store for `put_file`. The default is the real
/// server's default plan, `free` (1 000 keys, 100 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Entries a store may hold (`limit_exceeded` with `dimension: "keys"`).
    pub keys_per_store: u64,
    /// File bytes a store may reference (`limit_exceeded` with `dimension: "file_storage"`).
    pub file_storage_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self::free()
    }
}

impl Limits {
    /// The `free` plan: 1 000 keys, 100 MB of files.
    pub fn free() -> Self {
        Self {
            keys_per_store: 1_000,
            file_storage_bytes: 100_000_000,
        }
    }

    /// The `pro` plan: 100 000 keys, 10 GB.
    pub fn pro() -> Self {
        Self {
            keys_per_store: 100_000,
            file_storage_bytes: 10_000_000_000,
        }
    }

    /// The `team` plan: 1 000 000 keys, 100 GB.
    pub fn team() -> Self {
        Self {
            keys_per_store: 1_000_000,
            file_storage_bytes: 100_000_000_000,
        }
    }

    /// Custom limits.
    pub fn new(keys_per_store: u64, file_storage_bytes: u64) -> Self {
        Self {
            keys_per_store,
            file_storage_bytes,
        }
    }
}

/// A per-token write rate limit (the real server's Hammer fixed window): at most `max`
/// writes (`write` and `put_file`) per `window`; beyond it, `rate_limited` with
/// `retry_after_ms` = the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Writes allowed per window.
    pub max: u64,
    /// The window.
    pub window: Duration,
}

impl RateLimit {
    /// `max` writes per minute (the real server's unit).
    pub fn per_minute(max: u64) -> Self {
        Self {
            max,
            window: Duration::from_secs(60),
        }
    }

    /// `max` writes per `window`.
    pub fn new(max: u64, window: Duration) -> Self {
        Self { max, window }
    }
}

/// The configuration of the Dust emulation (see [`crate::dust`]).
///
/// ```
/// use dust_conformance::dust::{DustConfig, RateLimit, TokenConfig};
///
/// let config = DustConfig::new()
///     .token(TokenConfig::new("dust_tok_dev"))
///     .store("acme/app")
///     .rate_limit(RateLimit::per_minute(100));
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct DustConfig {
    pub(crate) path: String,
    pub(crate) tokens: Vec<TokenConfig>,
    pub(crate) stores: Vec<String>,
    pub(crate) auto_create: bool,
    pub(crate) limits: Limits,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) api_read_limit: RateLimit,
    pub(crate) state: Option<PathBuf>,
    pub(crate) clock: Clock,
}

impl Default for DustConfig {
    fn default() -> Self {
        Self {
            path: "/ws/sync".to_owned(),
            tokens: Vec::new(),
            stores: Vec::new(),
            auto_create: true,
            limits: Limits::default(),
            rate_limit: None,
            api_read_limit: RateLimit::per_minute(1000),
            state: None,
            clock: Clock::system(),
        }
    }
}

impl DustConfig {
    /// No tokens (every connect is refused until one is added), stores created on first
    /// use, the free plan's limits, no rate limit, state in memory, the system clock,
    /// mounted at `/ws/sync`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token.
    pub fn token(mut self, token: TokenConfig) -> Self {
        self.tokens.push(token);
        self
    }

    /// Declares a store by full name `org/name` (created at start if absent).
    pub fn store(mut self, name: impl Into<String>) -> Self {
        self.stores.push(name.into());
        self
    }

    /// Whether joining an unknown `org/name` creates it (default: yes, when the token may
    /// reach it). When off, an unknown store is refused with `unauthorized`, as on the
    /// real server.
    pub fn auto_create(mut self, on: bool) -> Self {
        self.auto_create = on;
        self
    }

    /// The plan limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The HTTP API's per-token read limit (`GET /api/files/:hash`; default 1,000 per minute,
    /// the real server's `rate_limit_reads_per_min`): beyond it, 429 `rate_limited` with
    /// `retry-after`, and `x-ratelimit-*` headers on every answer.
    pub fn api_read_limit(mut self, limit: RateLimit) -> Self {
        self.api_read_limit = limit;
        self
    }

    /// Turns the per-token write rate limit on (default: none).
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Keeps the stores in this file (an append-only log, fsynced before each reply), and
    /// loads it at start.
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state = Some(path.into());
        self
    }

    /// The clock (e.g. a [`Clock::manual`] that tests advance).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Mounts the socket at another path than `/ws/sync`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
}

//! What one client run does: the command line of a child process.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::measure::BoxError;

/// A workload of the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Push `echo`, await the reply, repeat.
    Sequential,
    /// Keep `window` pushes in flight.
    Pipelined,
    /// The server broadcasts `ops` events to one joined channel.
    Fanout,
    /// Join `ops` channels on one socket.
    Channels,
}

impl Workload {
    /// Every workload, in table order.
    pub(crate) const ALL: [Workload; 4] = [
        Workload::Sequential,
        Workload::Pipelined,
        Workload::Fanout,
        Workload::Channels,
    ];

    /// The name used in the JSON lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Sequential => "sequential",
            Workload::Pipelined => "pipelined",
            Workload::Fanout => "fanout",
            Workload::Channels => "channels",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?}"))
    }
}

/// The tokio runtime flavour a Rust client runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// `new_current_thread`.
    CurrentThread,
    /// `new_multi_thread` with the default worker count (one per core).
    MultiThread,
}

impl Flavor {
    /// The name used in the JSON lines.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flavor::CurrentThread => "current_thread",
            Flavor::MultiThread => "multi_thread",
        }
    }

    /// A runtime of this flavour, with IO and timers.
    pub(crate) fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Flavor::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build(),
        }
    }
}

impl FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "current_thread" => Ok(Flavor::CurrentThread),
            "multi_thread" => Ok(Flavor::MultiThread),
            _ => Err(format!("unknown runtime {s:?}")),
        }
    }
}

/// One client run, as passed to a child process.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The client name.
    pub(crate) client: String,
    /// The runtime flavour (Rust clients).
    pub(crate) flavor: Flavor,
    /// The workload.
    pub(crate) workload: Workload,
    /// JSON payload size in bytes (pushes and events).
    pub(crate) payload: usize,
    /// Round trips, events, or channels.
    pub(crate) ops: u64,
    /// Pushes in flight (pipelined).
    pub(crate) window: usize,
    /// The echo socket endpoint, `ws://HOST:PORT/socket`.
    pub(crate) url: String,
    /// The topic (fanout: the one the server floods; channels: the prefix).
    pub(crate) topic: String,
    /// How long the workload may take before the run fails.
    pub(crate) timeout: Duration,
    /// phoenix-channels' `queue_capacity` (`None`: the library's default).
    pub(crate) queue_capacity: Option<usize>,
    /// phoenix-channels: await the socket's driver on the workload's own task instead of
    /// spawning it (`SocketBuilder::build` instead of `connect`).
    pub(crate) inline_driver: bool,
}

impl Spec {
    /// The child's arguments after the program name (the orchestrator's side).
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--client".into(),
            self.client.clone(),
            "--runtime".into(),
            self.flavor.name().into(),
            "--workload".into(),
            self.workload.name().into(),
            "--payload".into(),
            self.payload.to_string(),
            "--ops".into(),
            self.ops.to_string(),
            "--window".into(),
            self.window.to_string(),
            "--url".into(),
            self.url.clone(),
            "--topic".into(),
            self.topic.clone(),
            "--timeout-s".into(),
            self.timeout.as_secs().to_string(),
        ];
        if let Some(capacity) = self.queue_capacity {
            args.extend(["--queue-capacity".into(), capacity.to_string()]);
        }
        if self.inline_driver {
            args.push("--inline-driver".into());
        }
        args
    }

    /// Parses what [`Spec::to_args`] wrote (the child's side).
    pub(crate) fn from_args(args: &[String]) -> Result<Self, BoxError> {
        let get = |name: &str| -> Result<String, BoxError> {
            let at = args
                .iter()
                .position(|a| a == name)
                .ok_or_else(|| format!("child: missing {name}"))?;
            Ok(args
                .get(at + 1)
                .ok_or_else(|| format!("child: {name} needs a value"))?
                .clone())
        };
        Ok(Self {
            client: get("--client")?,
            flavor: get("--runtime")?.parse()?,
            workload: get("--workload")?.parse()?,
            payload: get("--payload")?.parse()?,
            ops: get("--ops")?.parse()?,
            window: get("--window")?.parse()?,
            url: get("--url")?,
            topic: get("--topic")?,
            timeout: Duration::from_secs(get("--timeout-s")?.parse()?),
            queue_capacity: match get("--queue-capacity") {
                Ok(capacity) => Some(capacity.parse()?),
                Err(_) => None,
            },
            inline_driver: args.iter().any(|a| a == "--inline-driver"),
        })
    }
}

//! Phoenix Presence on the client: the list of who is present on a topic, kept in sync from the
//! server's `presence_state` and `presence_diff` messages, with the joins and leaves each one
//! brings.
//!
//! A presence is a key (a user id, say) with a list of metas, one per connection of that key,
//! each carrying the server's `phx_ref`. A `presence_state` is the whole list: it is reconciled
//! with what was known (so a rejoin reports who came and went meanwhile). A `presence_diff`
//! brings `joins` and `leaves`; diffs that arrive after a (re)join but before its
//! `presence_state` are held back and applied after it, as phoenix.js does.
//!
//! ```
//! use phoenix_channels::presence::{Presence, PresenceChange};
//! use phoenix_channels::{Message, Payload};
//! use serde_json::json;
//!
//! let mut presence = Presence::new();
//! presence.joined(); // on every (re)join of the channel, e.g. in `ChannelHandler::on_joined`
//! let state = json!({"ada": {"metas": [{"phx_ref": "1", "device": "laptop"}]}});
//! let changes = presence.handle(&Message::new("room:1", "presence_state", Payload::from(state)))?;
//! assert!(matches!(&changes[0], PresenceChange::Join { key, .. } if key == "ada"));
//!
//! let diff = json!({"joins": {"bob": {"metas": [{"phx_ref": "2"}]}}, "leaves": {"ada": {"metas": [{"phx_ref": "1"}]}}});
//! presence.handle(&Message::new("room:1", "presence_diff", Payload::from(diff)))?;
//! assert_eq!(presence.keys().collect::<Vec<_>>(), ["bob"]);
//! # Ok::<(), phoenix_channels::presence::PresenceError>(())
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::proto::message::{Message, PayloadError};

/// The metas of one key: one JSON object per connection, each with its `phx_ref`.
pub type Metas = Vec<Value>;

#[derive(Clone, Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    metas: Metas,
}

#[derive(Clone, Debug, Deserialize)]
struct Diff {
    #[serde(default)]
    joins: BTreeMap<String, Entry>,
    #[serde(default)]
    leaves: BTreeMap<String, Entry>,
}

/// A change to the presence list.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PresenceChange {
    /// `key` gained the metas `joined` (`before` is what it had, `None` if it was absent).
    Join {
        /// The key.
        key: String,
        /// Its metas before the change.
        before: Option<Metas>,
        /// The metas that joined.
        joined: Metas,
    },
    /// `key` lost the metas `left`; `remaining` is what it has left (empty: it is gone).
    Leave {
        /// The key.
        key: String,
        /// Its metas after the change.
        remaining: Metas,
        /// The metas that left.
        left: Metas,
    },
}

/// Why a presence message could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// The payload is not a presence state or diff.
    #[error("malformed presence message: {0}")]
    Malformed(#[from] PayloadError),
}

fn phx_ref(meta: &Value) -> Option<&Value> {
    meta.get("phx_ref")
}

/// The presence list of one channel.
#[derive(Clone, Debug)]
pub struct Presence {
    state: BTreeMap<String, Metas>,
    pending: Vec<Diff>,
    synced: bool,
    state_event: String,
    diff_event: String,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// An empty list, for the events `presence_state` and `presence_diff`.
    pub fn new() -> Self {
        Self::with_events("presence_state", "presence_diff")
    }

    /// An empty list, for custom event names.
    pub fn with_events(state: impl Into<String>, diff: impl Into<String>) -> Self {
        Self {
            state: BTreeMap::new(),
            pending: Vec::new(),
            synced: false,
            state_event: state.into(),
            diff_event: diff.into(),
        }
    }

    /// The channel (re)joined: diffs are held back until its `presence_state` arrives.
    pub fn joined(&mut self) {
        self.synced = false;
    }

    /// Whether diffs are being held back for a `presence_state`.
    pub fn awaiting_state(&self) -> bool {
        !self.synced
    }

    /// Applies a channel message if it is a presence state or diff; returns the changes (none
    /// for other messages, or for a diff held back until the state).
    pub fn handle(&mut self, message: &Message) -> Result<Vec<PresenceChange>, PresenceError> {
        if message.event == self.state_event.as_str() {
            let state: BTreeMap<String, Entry> = message.payload.deserialize()?;
            let mut changes = self.sync_state(state);
            self.synced = true;
            for diff in std::mem::take(&mut self.pending) {
                changes.extend(self.sync_diff(diff));
            }
            Ok(changes)
        } else if message.event == self.diff_event.as_str() {
            let diff: Diff = message.payload.deserialize()?;
            if self.synced {
                Ok(self.sync_diff(diff))
            } else {
                self.pending.push(diff);
                Ok(Vec::new())
            }
        } else {
            Ok(Vec::new())
        }
    }

    /// The keys present, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.state.keys().map(String::as_str)
    }

    /// Every key with its metas.
    pub fn list(&self) -> impl Iterator<Item = (&str, &[Value])> {
        self.state.iter().map(|(k, m)| (k.as_str(), m.as_slice()))
    }

    /// The metas of one key.
    pub fn get(&self, key: &str) -> Option<&[Value]> {
        self.state.get(key).map(Vec::as_slice)
    }

    /// Reconciles a whole state with the current one: keys missing from it leave, new keys
    /// join, and for keys in both, metas are compared by `phx_ref`.
    fn sync_state(&mut self, new_state: BTreeMap<String, Entry>) -> Vec<PresenceChange> {
        let mut diff = Diff {
            joins: BTreeMap::new(),
            leaves: BTreeMap::new(),
        };
        for (key, metas) in &self.state {
            if !new_state.contains_key(key) {
                diff.leaves.insert(
                    key.clone(),
                    Entry {
                        metas: metas.clone(),
                    },
                );
            }
        }
        for (key, entry) in new_state {
            match self.state.get(&key) {
                None => {
                    diff.joins.insert(key, entry);
                }
                Some(current) => {
                    let has = |list: &Metas, meta: &Value| {
                        list.iter()
                            .any(|m| phx_ref(m).is_some() && phx_ref(m) == phx_ref(meta))
                    };
                    let joined: Metas = entry
                        .metas
                        .iter()
                        .filter(|m| !has(current, m))
                        .cloned()
                        .collect();
                    let left: Metas = current
                        .iter()
                        .filter(|m| !has(&entry.metas, m))
                        .cloned()
                        .collect();
                    if !joined.is_empty() {
                        diff.joins.insert(key.clone(), Entry { metas: joined });
                    }
                    if !left.is_empty() {
                        diff.leaves.insert(key, Entry { metas: left });
                    }
                }
            }
        }
        self.sync_diff(diff)
    }

    /// Applies joins, then leaves.
    fn sync_diff(&mut self, diff: Diff) -> Vec<PresenceChange> {
        let mut changes = Vec::new();
        for (key, entry) in diff.joins {
            let before = self.state.get(&key).cloned();
            let mut metas: Metas = before
                .iter()
                .flatten()
                .filter(|m| {
                    !entry
                        .metas
                        .iter()
                        .any(|j| phx_ref(j).is_some() && phx_ref(j) == phx_ref(m))
                })
                .cloned()
                .collect();
            metas.extend(entry.metas.iter().cloned());
            self.state.insert(key.clone(), metas);
            changes.push(PresenceChange::Join {
                key,
                before,
                joined: entry.metas,
            });
        }
        for (key, entry) in diff.leaves {
            let Some(current) = self.state.get_mut(&key) else {
                continue;
            };
            current.retain(|m| {
                !entry
                    .metas
                    .iter()
                    .any(|l| phx_ref(l).is_some() && phx_ref(l) == phx_ref(m))
            });
            let remaining = current.clone();
            if remaining.is_empty() {
                self.state.remove(&key);
            }
            changes.push(PresenceChange::Leave {
                key,
                remaining,
                left: entry.metas,
            });
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::message::Payload;
    use serde_json::json;

    fn msg(event: &str, payload: Value) -> Message {
        Message::new("room:1", event, Payload::from(payload))
    }

    fn keys(p: &Presence) -> Vec<&str> {
        p.keys().collect()
    }

    #[test]
    fn a_state_then_diffs() {
        let mut p = Presence::new();
        p.joined();
        let changes = p
            .handle(&msg(
                "presence_state",
                json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}}),
            ))
            .unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(keys(&p), ["a", "b"]);
        // A second connection of `a`, and `b` leaves.
        let changes = p
            .handle(&msg(
                "presence_diff",
                json!({"joins": {"a": {"metas": [{"phx_ref": "3"}]}}, "leaves": {"b": {"metas": [{"phx_ref": "2"}]}}}),
            ))
            .unwrap();
        assert_eq!(p.get("a").map(<[Value]>::len), Some(2));
        assert_eq!(keys(&p), ["a"]);
        assert!(
            matches!(&changes[0], PresenceChange::Join { key, before: Some(b), .. } if key == "a" && b.len() == 1)
        );
        assert!(
            matches!(&changes[1], PresenceChange::Leave { key, remaining, .. } if key == "b" && remaining.is_empty())
        );
        // One of `a`'s two connections leaves: `a` stays.
        p.handle(&msg(
            "presence_diff",
            json!({"leaves": {"a": {"metas": [{"phx_ref": "1"}]}}}),
        ))
        .unwrap();
        assert_eq!(p.get("a"), Some(&[json!({"phx_ref": "3"})][..]));
    }

    #[test]
    fn diffs_before_the_state_wait_for_it() {
        let mut p = Presence::new();
        p.joined();
        let held = p
            .handle(&msg(
                "presence_diff",
                json!({"joins": {"c": {"metas": [{"phx_ref": "9"}]}}}),
            ))
            .unwrap();
        assert!(held.is_empty() && p.awaiting_state());
        p.handle(&msg(
            "presence_state",
            json!({"a": {"metas": [{"phx_ref": "1"}]}}),
        ))
        .unwrap();
        assert_eq!(keys(&p), ["a", "c"]);
        assert!(!p.awaiting_state());
    }

    #[test]
    fn a_state_after_a_rejoin_reports_who_came_and_went() {
        let mut p = Presence::new();
        p.joined();
        p.handle(&msg(
            "presence_state",
            json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}}),
        ))
        .unwrap();
        p.joined();
        let changes = p
            .handle(&msg(
                "presence_state",
                json!({"a": {"metas": [{"phx_ref": "1"}, {"phx_ref": "4"}]}, "c": {"metas": [{"phx_ref": "5"}]}}),
            ))
            .unwrap();
        assert_eq!(keys(&p), ["a", "c"]);
        let joined: Vec<&str> = changes
            .iter()
            .filter_map(|c| {
                if let PresenceChange::Join { key, .. } = c {
                    Some(key.as_str())
                } else {
                    None
                }
            })
            .collect();
        let left: Vec<&str> = changes
            .iter()
            .filter_map(|c| {
                if let PresenceChange::Leave { key, .. } = c {
                    Some(key.as_str())
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(joined, ["a", "c"], "a gained a connection, c is new");
        assert_eq!(left, ["b"]);
        assert_eq!(p.get("a").map(<[Value]>::len), Some(2));
    }

    #[test]
    fn other_messages_pass_and_bad_payloads_are_errors() {
        let mut p = Presence::with_events("state", "diff");
        assert!(
            p.handle(&msg("presence_state", json!({})))
                .unwrap()
                .is_empty(),
            "not our event names"
        );
        assert!(p.handle(&msg("state", json!([1, 2]))).is_err());
        assert!(p.handle(&msg("diff", json!("nope"))).is_err());
        assert!(
            p.handle(&Message::new("t", "state", Payload::binary(vec![1u8])))
                .is_err()
        );
    }
}

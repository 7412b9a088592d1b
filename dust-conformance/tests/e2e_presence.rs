//! End to end: `phoenix_channels::presence::Presence`, fed by a `ChannelHandler` of our client,
//! against the `presence:*` channel — lists that converge across sockets, joins and leaves as
//! they happen, a key on two sockets, meta updates, and drops followed by automatic rejoins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use dust_conformance::{ConnectionId, Control, Server, ServerConfig};
use phoenix_channels::backoff::{ReconnectSchedule, RejoinSchedule};
use phoenix_channels::presence::{Presence, PresenceChange};
use phoenix_channels::{Channel, ChannelContext, ChannelHandler, Joined, Message, Socket};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

const T: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(T, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A presence list with each key's metas sorted by `phx_ref`: two views of the same presences
/// compare equal whatever order their metas arrived in.
type List = BTreeMap<String, Vec<Value>>;

fn normalized<'a>(entries: impl Iterator<Item = (&'a str, &'a [Value])>) -> List {
    entries
        .map(|(key, metas)| {
            let mut metas = metas.to_vec();
            metas.sort_by(|a, b| a["phx_ref"].as_str().cmp(&b["phx_ref"].as_str()));
            (key.to_owned(), metas)
        })
        .collect()
}

/// What a tracker saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The channel (re)joined.
    Joined,
    /// A join of these metas (by `phx_ref`) to `key`.
    Join(String, Vec<String>),
    /// A leave of these metas from `key`, leaving `remaining` metas.
    Leave(String, Vec<String>, usize),
}

fn refs(metas: &[Value]) -> Vec<String> {
    metas
        .iter()
        .map(|m| m["phx_ref"].as_str().expect("a phx_ref").to_owned())
        .collect()
}

/// Feeds the channel's messages to a `Presence`, as an application would: `joined()` on every
/// (re)join, `handle()` on every message. Publishes the list and what changed.
struct Tracker {
    presence: Presence,
    list: watch::Sender<List>,
    seen: mpsc::UnboundedSender<Seen>,
}

#[async_trait]
impl ChannelHandler for Tracker {
    async fn on_joined(&mut self, _ctx: &ChannelContext, _joined: Joined) {
        self.presence.joined();
        let _ = self.seen.send(Seen::Joined);
    }

    async fn on_message(&mut self, _ctx: &ChannelContext, message: Message) {
        let changes = self
            .presence
            .handle(&message)
            .unwrap_or_else(|e| panic!("{} not understood: {e}", message.event));
        for change in changes {
            let seen = match change {
                PresenceChange::Join { key, joined, .. } => Seen::Join(key, refs(&joined)),
                PresenceChange::Leave {
                    key,
                    remaining,
                    left,
                } => Seen::Leave(key, refs(&left), remaining.len()),
                other => panic!("unexpected change {other:?}"),
            };
            let _ = self.seen.send(seen);
        }
        self.list.send_replace(normalized(self.presence.list()));
    }
}

/// One socket joined to a presence topic through a `Tracker`.
struct Peer {
    name: String,
    _socket: Socket,
    channel: Channel,
    list: watch::Receiver<List>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Peer {
    /// Connects (with the connect param `who=name`) and joins `topic` as `user`. Does not wait
    /// for the join.
    fn start(server: &Server, name: &str, topic: &str, params: Value) -> Peer {
        let socket = Socket::builder(server.socket_url())
            .param("who", name)
            .push_timeout(Duration::from_secs(5))
            .rejoin_policy(RejoinSchedule::default().with_schedule_ms([20]))
            .reconnect_policy(ReconnectSchedule::default().with_schedule_ms([10, 20]))
            .connect()
            .unwrap();
        let (list_tx, list) = watch::channel(List::new());
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let channel = socket.channel(topic).params(params).handler(Tracker {
            presence: Presence::new(),
            list: list_tx,
            seen: seen_tx,
        });
        drop(channel.join());
        Peer {
            name: name.to_owned(),
            _socket: socket,
            channel,
            list,
            seen,
        }
    }

    /// Waits until the list satisfies `predicate`; returns it.
    async fn list_until(&mut self, what: &str, predicate: impl FnMut(&List) -> bool) -> List {
        let what = format!("{}: {what}", self.name);
        within(&what, self.list.wait_for(predicate))
            .await
            .unwrap()
            .clone()
    }

    /// Waits until the list has exactly these keys.
    async fn keys_until(&mut self, keys: &[&str]) -> List {
        self.list_until(&format!("keys {keys:?}"), |l| {
            l.keys().map(String::as_str).eq(keys.iter().copied())
        })
        .await
    }

    /// The next thing the tracker saw.
    async fn next_seen(&mut self) -> Seen {
        let what = format!("{}: a presence change", self.name);
        within(&what, self.seen.recv()).await.expect("tracker gone")
    }

    /// Skips what the tracker saw until `wanted`; fails on a timeout.
    async fn saw(&mut self, wanted: &Seen) {
        while &self.next_seen().await != wanted {}
    }

    /// The server's list, through `presence_list`.
    async fn server_list(&self) -> List {
        let reply = within(
            "presence_list",
            self.channel.push("presence_list", json!({})),
        )
        .await
        .unwrap();
        assert!(reply.is_ok(), "{reply:?}");
        let map = reply.response().to_value().unwrap();
        let entries: Vec<(String, Vec<Value>)> = map
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v["metas"].as_array().unwrap().clone()))
            .collect();
        normalized(entries.iter().map(|(k, m)| (k.as_str(), m.as_slice())))
    }

    /// This peer's connection on the server.
    fn connection(&self, control: &Control) -> ConnectionId {
        control
            .connections()
            .into_iter()
            .find(|c| c.params.get("who") == Some(&self.name))
            .expect("connected")
            .id
    }
}

async fn server() -> Server {
    within("start", dust_conformance::start(ServerConfig::default()))
        .await
        .unwrap()
}

fn the_ref(list: &List, key: &str) -> String {
    let metas = &list[key];
    assert_eq!(metas.len(), 1, "{key}: {metas:?}");
    metas[0]["phx_ref"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_sockets_converge_on_the_same_list() {
    let server = server().await;
    let topic = "presence:room";
    // Both join at once: each may get the other's diff before its own presence_state.
    let mut ada = Peer::start(
        &server,
        "ada",
        topic,
        json!({"user": "ada", "device": "laptop"}),
    );
    let mut bob = Peer::start(
        &server,
        "bob",
        topic,
        json!({"user": "bob", "device": "phone"}),
    );
    let list_a = ada.keys_until(&["ada", "bob"]).await;
    let list_b = bob.keys_until(&["ada", "bob"]).await;
    assert_eq!(list_a, list_b);
    assert_eq!(list_a, ada.server_list().await);
    assert_eq!(
        list_a["ada"],
        [json!({"device": "laptop", "phx_ref": the_ref(&list_a, "ada")})]
    );
    // Each saw its own join first, then the other's.
    assert_eq!(ada.next_seen().await, Seen::Joined);
    bob.saw(&Seen::Join("ada".into(), vec![the_ref(&list_a, "ada")]))
        .await;
    ada.saw(&Seen::Join("bob".into(), vec![the_ref(&list_a, "bob")]))
        .await;

    // A third one arrives: everyone converges again.
    let mut carol = Peer::start(&server, "carol", topic, json!({"user": "carol"}));
    let list_c = carol.keys_until(&["ada", "bob", "carol"]).await;
    assert_eq!(ada.keys_until(&["ada", "bob", "carol"]).await, list_c);
    assert_eq!(bob.keys_until(&["ada", "bob", "carol"]).await, list_c);
    assert_eq!(list_c, carol.server_list().await);
}

#[tokio::test]
async fn a_leave_is_seen_by_the_other() {
    let server = server().await;
    let topic = "presence:leave";
    let mut ada = Peer::start(&server, "ada", topic, json!({"user": "ada"}));
    ada.keys_until(&["ada"]).await;
    let mut bob = Peer::start(&server, "bob", topic, json!({"user": "bob"}));
    let list = bob.keys_until(&["ada", "bob"]).await;
    ada.keys_until(&["ada", "bob"]).await;

    within("leave", bob.channel.leave()).await;
    ada.saw(&Seen::Leave("bob".into(), vec![the_ref(&list, "bob")], 0))
        .await;
    let after = ada.keys_until(&["ada"]).await;
    assert_eq!(after, ada.server_list().await);
    assert_eq!(after["ada"], list["ada"]);
}

#[tokio::test]
async fn a_dropped_connection_leaves_then_joins_again_after_the_automatic_rejoin() {
    let server = server().await;
    let control = server.control();
    let topic = "presence:drop";
    let mut ada = Peer::start(&server, "ada", topic, json!({"user": "ada"}));
    ada.keys_until(&["ada"]).await;
    let mut bob = Peer::start(&server, "bob", topic, json!({"user": "bob"}));
    let before = bob.keys_until(&["ada", "bob"]).await;
    ada.keys_until(&["ada", "bob"]).await;
    let old_bob = the_ref(&before, "bob");
    assert_eq!(bob.next_seen().await, Seen::Joined);

    control.drop_connection(bob.connection(&control)).unwrap();
    // Ada sees bob leave, then come back with a new ref once his client rejoined by itself.
    ada.saw(&Seen::Leave("bob".into(), vec![old_bob.clone()], 0))
        .await;
    let next = ada.next_seen().await;
    let Seen::Join(key, new_refs) = &next else {
        panic!("expected bob's join, got {next:?}");
    };
    assert_eq!(key, "bob");
    assert!(!new_refs.contains(&old_bob), "a new ref");

    // Bob's tracker was told of the rejoin, and reconciled its list from the new state: his old
    // meta left, the new one joined.
    bob.saw(&Seen::Joined).await;
    bob.saw(&Seen::Leave("bob".into(), vec![old_bob.clone()], 1))
        .await;
    let new_bob = new_refs[0].clone();
    let after = bob
        .list_until("bob's new ref", |l| {
            l.get("bob").is_some_and(|m| refs(m) == [new_bob.clone()])
        })
        .await;
    assert_eq!(ada.keys_until(&["ada", "bob"]).await, after);
    assert_eq!(after, ada.server_list().await);
    assert_eq!(after["ada"], before["ada"], "ada never left");
}

#[tokio::test]
async fn after_drop_all_both_rejoin_and_converge_without_ghosts() {
    let server = server().await;
    let control = server.control();
    let topic = "presence:drop_all";
    let mut ada = Peer::start(&server, "ada", topic, json!({"user": "ada"}));
    let mut bob = Peer::start(&server, "bob", topic, json!({"user": "bob"}));
    let before = ada.keys_until(&["ada", "bob"]).await;
    bob.keys_until(&["ada", "bob"]).await;

    assert_eq!(control.drop_all(), 2);
    let fresh = |l: &List| {
        l.len() == 2
            && l.values().all(|metas| metas.len() == 1)
            && the_ref(l, "ada") != the_ref(&before, "ada")
            && the_ref(l, "bob") != the_ref(&before, "bob")
    };
    let list_a = ada.list_until("both rejoined", fresh).await;
    let list_b = bob.list_until("both rejoined", fresh).await;
    assert_eq!(list_a, list_b);
    assert_eq!(
        list_a,
        bob.server_list().await,
        "no ghost of the old connections"
    );
}

#[tokio::test]
async fn a_key_on_two_sockets_has_two_metas_and_stays_while_one_remains() {
    let server = server().await;
    let topic = "presence:devices";
    let mut laptop = Peer::start(
        &server,
        "laptop",
        topic,
        json!({"user": "ada", "device": "laptop"}),
    );
    laptop.keys_until(&["ada"]).await;
    let phone = Peer::start(
        &server,
        "phone",
        topic,
        json!({"user": "ada", "device": "phone"}),
    );
    let mut bob = Peer::start(&server, "bob", topic, json!({"user": "bob"}));
    let list = bob
        .list_until("ada twice", |l| {
            l.get("ada").is_some_and(|m| m.len() == 2) && l.contains_key("bob")
        })
        .await;
    assert_eq!(list, phone.server_list().await);
    let mut devices: Vec<&str> = list["ada"]
        .iter()
        .map(|m| m["device"].as_str().unwrap())
        .collect();
    devices.sort_unstable();
    assert_eq!(devices, ["laptop", "phone"]);

    let laptop_ref = list["ada"]
        .iter()
        .find(|m| m["device"] == "laptop")
        .map(|m| m["phx_ref"].as_str().unwrap().to_owned())
        .unwrap();
    within("leave", laptop.channel.leave()).await;
    bob.saw(&Seen::Leave("ada".into(), vec![laptop_ref], 1))
        .await;
    let after = bob
        .list_until("ada once", |l| l.get("ada").is_some_and(|m| m.len() == 1))
        .await;
    assert_eq!(after["ada"][0]["device"], "phone");
    assert_eq!(after, phone.server_list().await);
}

#[tokio::test]
async fn an_update_replaces_the_meta_in_one_diff() {
    let server = server().await;
    let topic = "presence:status";
    let mut ada = Peer::start(
        &server,
        "ada",
        topic,
        json!({"user": "ada", "status": "online"}),
    );
    let mut bob = Peer::start(&server, "bob", topic, json!({"user": "bob"}));
    let before = bob.keys_until(&["ada", "bob"]).await;
    ada.keys_until(&["ada", "bob"]).await;

    let reply = within(
        "update",
        ada.channel.push("update", json!({"status": "away"})),
    )
    .await
    .unwrap();
    assert!(reply.is_ok());
    let new_ref = reply.response().to_value().unwrap()["phx_ref"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_ref = the_ref(&before, "ada");
    let expected = json!({"status": "away", "phx_ref": new_ref, "phx_ref_prev": old_ref});
    let after = bob
        .list_until("ada away", |l| {
            l.get("ada") == Some(&vec![expected.clone()])
        })
        .await;
    // The joins of a diff apply before its leaves: ada never disappeared.
    bob.saw(&Seen::Join("ada".into(), vec![new_ref.clone()]))
        .await;
    assert_eq!(
        bob.next_seen().await,
        Seen::Leave("ada".into(), vec![old_ref], 1)
    );
    assert_eq!(ada.list_until("ada away", |l| l == &after).await, after);
    assert_eq!(after, ada.server_list().await);
}

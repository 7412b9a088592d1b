//! The `presence:*` channel over a raw websocket: the state on join, the diffs on join, leave,
//! crash, socket close and drop, a key on two connections, `update`, `presence_list`, and the
//! refs.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Client, ok_reply, reply, server, within};
use serde_json::{Value, json};

/// A joined presence: its key, its meta (with its `phx_ref`) and its join_ref.
#[derive(Debug, Clone)]
struct Joined {
    key: String,
    meta: Value,
    join_ref: String,
}

impl Joined {
    fn phx_ref(&self) -> &str {
        self.meta["phx_ref"].as_str().expect("a phx_ref")
    }
}

/// A frame without its payload.
fn head(frame: &Value) -> &[Value] {
    &frame.as_array().expect("a frame")[..4]
}

fn diff(topic: &str, joins: Value, leaves: Value) -> Value {
    json!([null, null, topic, "presence_diff", {"joins": joins, "leaves": leaves}])
}

fn metas(list: &[&Value]) -> Value {
    json!({ "metas": list })
}

/// Joins `topic` with `params`; checks the reply, then reads the `presence_state` (returned)
/// and the joiner's own join diff.
async fn join(c: &mut Client, join_ref: &str, topic: &str, params: Value) -> (Joined, Value) {
    let r = c.join(join_ref, topic, params.clone()).await;
    let response = &r[4]["response"];
    let key = response["key"].as_str().expect("a key").to_owned();
    let phx_ref = response["phx_ref"].as_str().expect("a phx_ref").to_owned();
    assert_eq!(
        r,
        ok_reply(
            json!(join_ref),
            json!(join_ref),
            topic,
            json!({"key": key, "phx_ref": phx_ref})
        )
    );
    let mut meta = params.as_object().cloned().unwrap_or_default();
    meta.remove("user");
    meta.insert("phx_ref".into(), json!(phx_ref));
    let meta = Value::Object(meta);
    let state = c.recv_json().await;
    assert_eq!(
        head(&state),
        [
            json!(join_ref),
            Value::Null,
            json!(topic),
            json!("presence_state")
        ]
    );
    assert_eq!(
        state[4][&key]["metas"].as_array().and_then(|m| m.last()),
        Some(&meta),
        "the state has the joiner, last of its key"
    );
    assert_eq!(
        c.recv_json().await,
        diff(topic, json!({&key: metas(&[&meta])}), json!({}))
    );
    let joined = Joined {
        key,
        meta,
        join_ref: join_ref.to_owned(),
    };
    (joined, state[4].clone())
}

/// `presence_list` through `c`'s join.
async fn list(c: &mut Client, joined: &Joined, topic: &str) -> Value {
    c.send_json(json!([joined.join_ref, "list", topic, "presence_list", {}]))
        .await;
    let r = c.recv_json().await;
    assert_eq!(
        head(&r),
        [
            json!(joined.join_ref),
            json!("list"),
            json!(topic),
            json!("phx_reply")
        ]
    );
    assert_eq!(r[4]["status"], "ok");
    r[4]["response"].clone()
}

fn leave_diff(topic: &str, who: &Joined) -> Value {
    diff(topic, json!({}), json!({&who.key: metas(&[&who.meta])}))
}

fn join_diff(topic: &str, who: &Joined) -> Value {
    diff(topic, json!({&who.key: metas(&[&who.meta])}), json!({}))
}

#[tokio::test]
async fn the_joiner_gets_the_state_and_everyone_the_diff() {
    let server = server().await;
    let topic = "presence:room";
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    let (ada, state) = join(
        &mut a,
        "1",
        topic,
        json!({"user": "ada", "device": "laptop"}),
    )
    .await;
    assert_eq!(ada.key, "ada");
    assert_eq!(state, json!({"ada": metas(&[&ada.meta])}));

    let (bob, state) = join(&mut b, "5", topic, json!({"user": "bob", "status": "away"})).await;
    assert_eq!(
        bob.meta,
        json!({"status": "away", "phx_ref": bob.phx_ref()})
    );
    assert_eq!(
        state,
        json!({"ada": metas(&[&ada.meta]), "bob": metas(&[&bob.meta])})
    );
    assert_eq!(a.recv_json().await, join_diff(topic, &bob));
    assert_eq!(list(&mut a, &ada, topic).await, state);

    // Another topic is another map.
    let (other, state) = join(&mut a, "9", "presence:other", json!({"user": "ada"})).await;
    assert_eq!(state, json!({"ada": metas(&[&other.meta])}));
    assert_ne!(other.phx_ref(), ada.phx_ref());
    b.send(r#"[null,"h","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        b.recv_json().await,
        ok_reply(Value::Null, json!("h"), "phoenix", json!({})),
        "no diff of presence:other reached presence:room"
    );
}

#[tokio::test]
async fn leave_sends_a_leave_diff_to_the_others_not_to_the_leaver() {
    let server = server().await;
    let topic = "presence:leave";
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    let (ada, _) = join(&mut a, "1", topic, json!({"user": "ada"})).await;
    let (bob, _) = join(&mut b, "2", topic, json!({"user": "bob"})).await;
    a.recv_json().await; // bob's join diff

    a.send_json(json!(["1", "3", topic, "phx_leave", {}])).await;
    assert_eq!(b.recv_json().await, leave_diff(topic, &ada));
    assert_eq!(
        a.recv_json().await,
        ok_reply(json!("1"), json!("3"), topic, json!({}))
    );
    assert_eq!(
        a.recv_json().await,
        json!(["1", "1", topic, "phx_close", {}])
    );
    assert_eq!(
        list(&mut b, &bob, topic).await,
        json!({"bob": metas(&[&bob.meta])})
    );
    // The leaver got nothing else: the next frame answers this heartbeat.
    a.send(r#"[null,"4","phoenix","heartbeat",{}]"#).await;
    assert_eq!(
        a.recv_json().await,
        ok_reply(Value::Null, json!("4"), "phoenix", json!({}))
    );

    // Joining again is a new presence, with a new ref.
    let (again, state) = join(&mut a, "6", topic, json!({"user": "ada"})).await;
    assert_ne!(again.phx_ref(), ada.phx_ref());
    assert_eq!(
        state,
        json!({"ada": metas(&[&again.meta]), "bob": metas(&[&bob.meta])})
    );
    assert_eq!(b.recv_json().await, join_diff(topic, &again));
}

#[tokio::test]
async fn a_dropped_or_closed_socket_leaves() {
    let server = server().await;
    let control = server.control();
    let topic = "presence:sockets";
    let mut watcher = Client::v2(&server).await;
    let (w, _) = join(&mut watcher, "1", topic, json!({"user": "watcher"})).await;

    // Dropped by the server (no close frame).
    let mut dropped = Client::v2(&server).await;
    let (d, _) = join(&mut dropped, "1", topic, json!({"user": "dropped"})).await;
    assert_eq!(watcher.recv_json().await, join_diff(topic, &d));
    let id = control.connections().last().expect("a connection").id;
    control.drop_connection(id).unwrap();
    dropped.expect_dropped().await;
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &d));

    // Closed by the client.
    let mut closing = Client::v2(&server).await;
    let (c, _) = join(&mut closing, "1", topic, json!({"user": "closing"})).await;
    assert_eq!(watcher.recv_json().await, join_diff(topic, &c));
    within("close", closing.ws.close(None)).await.unwrap();
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &c));

    // Closed by the server (a close frame).
    let mut closed = Client::v2(&server).await;
    let (s, _) = join(&mut closed, "1", topic, json!({"user": "closed"})).await;
    assert_eq!(watcher.recv_json().await, join_diff(topic, &s));
    let id = control.connections().last().expect("a connection").id;
    control.close_connection(id, 1000).unwrap();
    assert_eq!(closed.recv_close().await, 1000);
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &s));

    assert_eq!(
        list(&mut watcher, &w, topic).await,
        json!({"watcher": metas(&[&w.meta])})
    );
}

#[tokio::test]
async fn a_crash_leaves_and_the_rejoin_is_a_new_presence() {
    let server = server().await;
    let control = server.control();
    let topic = "presence:crash";
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    let (ada, _) = join(&mut a, "1", topic, json!({"user": "ada"})).await;
    let (bob, _) = join(&mut b, "2", topic, json!({"user": "bob"})).await;
    assert_eq!(a.recv_json().await, join_diff(topic, &bob));

    // The channel's own crash event.
    b.send_json(json!(["2", "3", topic, "crash", {}])).await;
    assert_eq!(
        b.recv_json().await,
        json!(["2", "2", topic, "phx_error", {}])
    );
    assert_eq!(a.recv_json().await, leave_diff(topic, &bob));

    // A rejoin, as a client does after phx_error.
    let (bob, state) = join(&mut b, "4", topic, json!({"user": "bob"})).await;
    assert_eq!(
        state,
        json!({"ada": metas(&[&ada.meta]), "bob": metas(&[&bob.meta])})
    );
    assert_eq!(a.recv_json().await, join_diff(topic, &bob));

    // The crash control crashes the topic on every connection: both leave. Whichever ends
    // first is seen leaving by the other, before the other's own phx_error.
    assert_eq!(control.crash_channel(topic), 2);
    let mut leaves = 0;
    for (c, me, other) in [(&mut a, &ada, &bob), (&mut b, &bob, &ada)] {
        let mut frame = c.recv_json().await;
        if frame == leave_diff(topic, other) {
            leaves += 1;
            frame = c.recv_json().await;
        }
        assert_eq!(
            frame,
            json!([me.join_ref, me.join_ref, topic, "phx_error", {}])
        );
    }
    assert!(
        leaves <= 1,
        "each saw the other leave: one ended before the other"
    );
    // Both gone: their phx_error went out after their terminate.
    let mut c = Client::v2(&server).await;
    let (carol, state) = join(&mut c, "1", topic, json!({"user": "carol"})).await;
    assert_eq!(state, json!({"carol": metas(&[&carol.meta])}));
}

#[tokio::test]
async fn a_key_on_two_connections_has_two_metas() {
    let server = server().await;
    let topic = "presence:two";
    let mut laptop = Client::v2(&server).await;
    let mut phone = Client::v2(&server).await;
    let mut watcher = Client::v2(&server).await;
    let (w, _) = join(&mut watcher, "1", topic, json!({"user": "watcher"})).await;
    let (l, _) = join(
        &mut laptop,
        "1",
        topic,
        json!({"user": 42, "device": "laptop"}),
    )
    .await;
    let (p, state) = join(
        &mut phone,
        "1",
        topic,
        json!({"user": "42", "device": "phone"}),
    )
    .await;
    assert_eq!(
        (l.key.as_str(), p.key.as_str()),
        ("42", "42"),
        "numbers are keys as text"
    );
    assert_eq!(state["42"], metas(&[&l.meta, &p.meta]));
    assert_eq!(watcher.recv_json().await, join_diff(topic, &l));
    assert_eq!(watcher.recv_json().await, join_diff(topic, &p));
    assert_eq!(laptop.recv_json().await, join_diff(topic, &p));

    // One of the two leaves: the key stays with the other meta.
    drop(laptop);
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &l));
    assert_eq!(phone.recv_json().await, leave_diff(topic, &l));
    assert_eq!(
        list(&mut watcher, &w, topic).await,
        json!({"42": metas(&[&p.meta]), "watcher": metas(&[&w.meta])})
    );
    // The second leaves: the key is gone.
    drop(phone);
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &p));
    assert_eq!(
        list(&mut watcher, &w, topic).await,
        json!({"watcher": metas(&[&w.meta])})
    );
}

#[tokio::test]
async fn without_user_the_key_is_the_connection_id() {
    let server = server().await;
    let control = server.control();
    let mut c = Client::v2(&server).await;
    let id = control.connections()[0].id;
    let (me, state) = join(&mut c, "1", "presence:anon", json!({"x": 1})).await;
    assert_eq!(me.key, id.to_string());
    assert_eq!(me.meta, json!({"x": 1, "phx_ref": me.phx_ref()}));
    assert_eq!(state, json!({&me.key: metas(&[&me.meta])}));
    let (null_params, _) = join(&mut c, "2", "presence:null", Value::Null).await;
    assert_eq!(null_params.key, id.to_string());
}

#[tokio::test]
async fn update_replaces_the_meta_with_a_join_and_a_leave() {
    let server = server().await;
    let topic = "presence:update";
    let mut a = Client::v2(&server).await;
    let mut b = Client::v2(&server).await;
    let (ada, _) = join(
        &mut a,
        "1",
        topic,
        json!({"user": "ada", "status": "online"}),
    )
    .await;
    let (bob, _) = join(&mut b, "2", topic, json!({"user": "bob"})).await;
    a.recv_json().await; // bob's join diff

    a.send_json(json!(["1", "3", topic, "update", {"status": "away", "user": "ignored"}]))
        .await;
    let updated = b.recv_json().await;
    let new_ref = updated[4]["joins"]["ada"]["metas"][0]["phx_ref"]
        .as_str()
        .expect("a new phx_ref")
        .to_owned();
    assert_ne!(new_ref, ada.phx_ref());
    let new_meta = json!({"status": "away", "phx_ref": new_ref, "phx_ref_prev": ada.phx_ref()});
    assert_eq!(
        updated,
        diff(
            topic,
            json!({"ada": metas(&[&new_meta])}),
            json!({"ada": metas(&[&ada.meta])})
        )
    );
    assert_eq!(
        a.recv_json().await,
        updated,
        "the updater gets the diff too"
    );
    assert_eq!(
        a.recv_json().await,
        ok_reply(json!("1"), json!("3"), topic, json!({"phx_ref": new_ref}))
    );
    assert_eq!(
        list(&mut b, &bob, topic).await,
        json!({"ada": metas(&[&new_meta]), "bob": metas(&[&bob.meta])})
    );
    // Leaving removes the updated meta.
    a.send_json(json!(["1", "4", topic, "phx_leave", {}])).await;
    assert_eq!(
        b.recv_json().await,
        diff(topic, json!({}), json!({"ada": metas(&[&new_meta])}))
    );
    // A meta that is not an object is refused.
    b.send_json(json!(["2", "5", topic, "update", [1]])).await;
    assert_eq!(
        b.recv_json().await,
        reply(
            json!("2"),
            json!("5"),
            topic,
            "error",
            json!({"reason": "the meta must be an object"})
        )
    );
}

#[tokio::test]
async fn bad_params_are_refused_and_unknown_events_answered() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    for (n, (params, reason)) in [
        (json!([1]), "params must be an object"),
        (
            json!({"user": {"id": 1}}),
            "user must be a string or a number",
        ),
        (json!({"user": true}), "user must be a string or a number"),
    ]
    .into_iter()
    .enumerate()
    {
        let join_ref = n.to_string();
        assert_eq!(
            c.join(&join_ref, "presence:bad", params).await,
            reply(
                json!(join_ref),
                json!(join_ref),
                "presence:bad",
                "error",
                json!({"reason": reason})
            )
        );
    }
    let (me, _) = join(&mut c, "9", "presence:bad", json!({"user": "ok"})).await;
    c.send_json(json!(["9", "10", "presence:bad", "what", {}]))
        .await;
    assert_eq!(
        c.recv_json().await,
        reply(
            json!("9"),
            json!("10"),
            "presence:bad",
            "error",
            json!({"reason": "unknown event", "event": "what"})
        )
    );
    assert_eq!(
        list(&mut c, &me, "presence:bad").await,
        json!({"ok": metas(&[&me.meta])}),
        "the refused joins were never tracked"
    );
}

#[tokio::test]
async fn a_duplicate_join_replaces_the_presence() {
    let server = server().await;
    let topic = "presence:dup";
    let mut a = Client::v2(&server).await;
    let mut watcher = Client::v2(&server).await;
    join(&mut watcher, "1", topic, json!({"user": "watcher"})).await;
    let (old, _) = join(&mut a, "1", topic, json!({"user": "ada", "n": 1})).await;
    assert_eq!(watcher.recv_json().await, join_diff(topic, &old));
    a.send_json(json!(["2", "2", topic, "phx_join", {"user": "ada", "n": 2}]))
        .await;
    // The old presence leaves before the new one joins.
    assert_eq!(watcher.recv_json().await, leave_diff(topic, &old));
    let joined = watcher.recv_json().await;
    assert_eq!(joined[4]["joins"]["ada"]["metas"][0]["n"], 2);
    assert_eq!(joined[4]["leaves"], json!({}));
}

#[tokio::test]
async fn refs_are_unique_and_shaped_like_phoenix_ones() {
    let server = server().await;
    let mut c = Client::v2(&server).await;
    let mut refs = BTreeSet::new();
    for n in 0..50 {
        let topic = format!("presence:refs{n}");
        let (me, _) = join(&mut c, "1", &topic, json!({"user": "u"})).await;
        let phx_ref = me.phx_ref().to_owned();
        // 12 bytes in URL-safe base64, as Phoenix.Tracker makes them.
        assert_eq!(phx_ref.len(), 16, "{phx_ref}");
        assert!(
            phx_ref
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{phx_ref}"
        );
        refs.insert(phx_ref);
    }
    assert_eq!(refs.len(), 50);
}

#[tokio::test]
async fn a_restart_leaves_no_presence_behind() {
    let server = server().await;
    let control = server.control();
    let topic = "presence:restart";
    let mut a = Client::v2(&server).await;
    join(&mut a, "1", topic, json!({"user": "ada"})).await;
    within("restart", control.restart(Duration::ZERO))
        .await
        .unwrap();
    a.expect_dropped().await;
    let mut b = Client::v2(&server).await;
    let (bob, state) = join(&mut b, "1", topic, json!({"user": "bob"})).await;
    assert_eq!(state, json!({"bob": metas(&[&bob.meta])}));
}

#[tokio::test]
async fn concurrent_joiners_all_see_one_consistent_map() {
    // Joins race on many connections; every state plus the diffs after it must add up to the
    // final map on every connection.
    let server = server().await;
    let topic = "presence:race";
    let n = 12;
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(Client::v2(&server).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            tokio::spawn(async move {
                c.send_json(json!(["1", "1", topic, "phx_join", {"user": format!("u{i}")}]))
                    .await;
                // The reply, then presence messages until the view has all n keys.
                let mut view = serde_json::Map::new();
                let mut synced = false;
                let mut pending = Vec::new();
                while !(synced && view.len() == n) {
                    let frame = c.recv_json().await;
                    match frame[3].as_str() {
                        Some("phx_reply") => assert_eq!(frame[4]["status"], "ok"),
                        Some("presence_state") => {
                            view = frame[4].as_object().cloned().expect("a map");
                            synced = true;
                            for diff in std::mem::take(&mut pending) {
                                apply(&mut view, &diff);
                            }
                        }
                        Some("presence_diff") if synced => apply(&mut view, &frame[4]),
                        Some("presence_diff") => pending.push(frame[4].clone()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                (c, view)
            })
        })
        .collect();
    let mut views = Vec::new();
    for task in tasks {
        views.push(within("a client's view", task).await.unwrap());
    }
    // The clients stay connected (and joined) until the end.
    let (_clients, mut views): (Vec<Client>, Vec<_>) = views.into_iter().unzip();
    let expected = views.remove(0);
    assert_eq!(expected.len(), n);
    for view in &views {
        assert_eq!(view, &expected);
    }
    // The server's map is the same (a late joiner's state, less itself).
    let mut late = Client::v2(&server).await;
    let (me, mut state) = join(&mut late, "1", topic, json!({"user": "late"})).await;
    state.as_object_mut().expect("a map").remove(&me.key);
    assert_eq!(state, Value::Object(expected));
}

/// Applies a diff to a map the way clients do: joins add metas (by phx_ref), leaves remove.
fn apply(view: &mut serde_json::Map<String, Value>, diff: &Value) {
    let refs = |metas: &Value| -> Vec<Value> {
        metas["metas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["phx_ref"].clone())
            .collect()
    };
    for (key, joined) in diff["joins"].as_object().into_iter().flatten() {
        let new = refs(joined);
        let entry = view
            .entry(key.clone())
            .or_insert_with(|| json!({"metas": []}));
        let list = entry["metas"].as_array_mut().expect("metas");
        list.retain(|m| !new.contains(&m["phx_ref"]));
        list.extend(joined["metas"].as_array().into_iter().flatten().cloned());
    }
    for (key, left) in diff["leaves"].as_object().into_iter().flatten() {
        let gone = refs(left);
        if let Some(entry) = view.get_mut(key) {
            let list = entry["metas"].as_array_mut().expect("metas");
            list.retain(|m| !gone.contains(&m["phx_ref"]));
            if list.is_empty() {
                view.remove(key);
            }
        }
    }
}

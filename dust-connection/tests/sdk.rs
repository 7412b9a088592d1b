//! The SDK surface over the local replica: Dust's globs (the shared vectors), reads that never
//! touch the network, and bounded subscriptions with lag reported.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// The wire format this suite speaks (`common::builder` uses it).
const FORMAT: dust_connection::Format = dust_connection::Format::Json;

mod common;

mod glob {
    use std::path::PathBuf;

    use dust_connection::{Glob, GlobError};
    use serde_json::Value;

    fn vectors(name: &str) -> Vec<Value> {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/dust-fixtures")
            .join(name);
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; the test vectors live in the shared reference directory next to the \
                 workspace (shared/reference/dust-fixtures/{name})",
                file.display()
            )
        });
        serde_json::from_str(&text).unwrap()
    }

    fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_glob_vectors_hold() {
        let vectors = vectors("glob_vectors.json");
        assert!(vectors.len() >= 20, "{} vectors", vectors.len());
        for vector in vectors {
            let rendered = vector["pattern_rendered"].as_str().unwrap();
            if vector["valid"] == Value::Bool(false) {
                let error = Glob::parse(rendered).unwrap_err();
                assert_eq!(error.reason(), vector["error"], "{vector}");
                continue;
            }
            let parsed = Glob::parse(rendered).unwrap_or_else(|e| panic!("{vector}: {e}"));
            let from_segments = Glob::from_segments(strings(&vector["pattern_segments"])).unwrap();
            assert_eq!(parsed, from_segments, "{vector}");
            assert_eq!(parsed.as_str(), rendered, "{vector}");
            let path = strings(&vector["path"]);
            assert_eq!(
                parsed.matches_segments(&path),
                vector["match"].as_bool().unwrap(),
                "{vector}"
            );
        }
    }

    /// Every valid path of the path vectors is a glob matching itself (a literal `*` segment
    /// of a path is a wildcard in a glob, so it matches too), and the invalid ones fail with
    /// the same reason.
    #[test]
    fn path_vectors_are_globs_matching_themselves() {
        for vector in vectors("path_vectors.json") {
            let rendered = vector["rendered"].as_str().unwrap();
            if vector["valid"] == Value::Bool(false) {
                assert_eq!(
                    Glob::parse(rendered).unwrap_err().reason(),
                    vector["error"],
                    "{vector}"
                );
                continue;
            }
            let glob = Glob::parse(rendered).unwrap();
            assert!(
                glob.matches_segments(strings(&vector["segments"])),
                "{vector}"
            );
            assert!(glob.matches_rendered(rendered), "{vector}");
        }
    }

    #[test]
    fn bad_patterns_are_typed_errors() {
        assert_eq!(Glob::parse("a/**/z"), Err(GlobError::WildcardManyNotTail));
        assert_eq!(Glob::parse("a~2"), Err(GlobError::InvalidEscape));
        assert_eq!(
            Glob::from_segments(Vec::<String>::new()),
            Err(GlobError::EmptyPath)
        );
        assert_eq!("**".parse::<Glob>().unwrap(), Glob::all());
    }
}

mod reads {
    use std::collections::BTreeMap;

    use dust_connection::{MemoryEngine, Order, Paging, ReadError, StoreStatus};
    use serde_json::{Value, json};

    use crate::common::*;

    /// Waits (on the engine's changes, not by polling) until the engine has applied `seq`.
    pub(crate) async fn wait_seq(engine: &MemoryEngine, seq: u64) {
        wait_engine(engine, "the replica reaches the server's seq", || {
            engine.seq(STORE) >= seq
        })
        .await;
    }

    /// Every entry the server holds reads back from the replica with its value, type and
    /// revision; maps read at their leaves and whole; nothing is wrapped in `_scalar`; and
    /// all of it still reads once the connection is gone.
    #[tokio::test]
    async fn entries_read_back_as_the_server_holds_them_without_the_network() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        within("writes", async {
            app.set(
                ["users", "alice"],
                json!({"name": "Alice", "tags": {"a": true}}),
            )
            .await
            .unwrap();
            app.merge(["users", "alice"], json!({"age": 36, "tags": {"b": 1.5}}))
                .await
                .unwrap();
            app.set(["users", "bob"], json!({"name": "Bob"}))
                .await
                .unwrap();
            app.set(["users", "bob", "name"], Value::Null)
                .await
                .unwrap();
            app.increment(["stats", "visits"], 3).await.unwrap();
            app.add(["stats", "seen"], "x").await.unwrap();
            app.set(["files", "a/b"], "slash").await.unwrap();
            app.set(["gone"], 1).await.unwrap();
            app.delete(["gone"]).await.unwrap();
        })
        .await;
        let info = dust(&server).store_info(STORE).await.unwrap();
        wait_seq(&engine, info.seq).await;
        connection.disconnect().await;

        let replica = engine.replica(STORE);
        let server_entries = dust(&server).entries(STORE).await.unwrap();
        assert!(server_entries.len() >= 7, "{server_entries:?}");
        for expected in &server_entries {
            let entry = replica.entry(expected.path.as_str()).unwrap().unwrap();
            assert_eq!(
                (&entry.path, &entry.value, &entry.kind, entry.revision),
                (
                    &expected.path,
                    &expected.value,
                    &expected.kind,
                    expected.revision
                ),
                "{}",
                expected.path
            );
        }
        assert_eq!(replica.status().entry_count, server_entries.len());

        assert_eq!(
            replica.get("users/alice/name").unwrap(),
            Some(json!("Alice"))
        );
        assert_eq!(
            replica.get(["users", "alice"]).unwrap(),
            Some(json!({"name": "Alice", "age": 36, "tags": {"b": 1.5}})),
            "a merge sets each of its keys: the map at `tags` replaced the old one"
        );
        assert_eq!(replica.get("users/bob/name").unwrap(), Some(Value::Null));
        assert_eq!(replica.get(["files", "a/b"]).unwrap(), Some(json!("slash")));
        assert_eq!(replica.get("files/a~1b").unwrap(), Some(json!("slash")));
        assert_eq!(replica.get("gone").unwrap(), None);
        assert_eq!(replica.get("nobody").unwrap(), None);
        let subtree = replica.entry("users").unwrap().unwrap();
        assert_eq!(subtree.kind, "map");
        assert_eq!(
            subtree.revision,
            server_entries
                .iter()
                .filter(|e| e.path.starts_with("users/"))
                .map(|e| e.revision)
                .max()
                .unwrap()
        );
        assert_eq!(
            replica
                .get_many(["stats/visits", "stats/seen", "nobody"])
                .unwrap(),
            [Some(json!(3)), Some(json!(["x"])), None]
        );
        assert_eq!(
            replica.get("a//b").unwrap_err(),
            dust_connection::PathError::EmptySegment
        );
    }

    /// `enumerate` pages through exactly the matching entries, in both orders, each page
    /// within its limit, the last one without a cursor; `range` is half-open.
    #[tokio::test]
    async fn enumerate_and_range_page_through_every_matching_entry() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        within("writes", async {
            for i in 0..23 {
                app.set(
                    ["users", &format!("u{i:02}")],
                    json!({"name": i, "deep": {"x": i}}),
                )
                .await
                .unwrap();
            }
            app.set(["usersx"], 1).await.unwrap();
            app.set(["user"], json!({"top": 1})).await.unwrap();
        })
        .await;
        let info = dust(&server).store_info(STORE).await.unwrap();
        wait_seq(&engine, info.seq).await;
        let replica = engine.replica(STORE);

        let all: BTreeMap<String, Value> = engine.entries(STORE);
        let names: Vec<String> = all
            .keys()
            .filter(|p| p.starts_with("users/") && p.ends_with("/name"))
            .cloned()
            .collect();
        assert_eq!(names.len(), 23);
        for order in [Order::Asc, Order::Desc] {
            let mut seen = Vec::new();
            let mut paging = Paging::new().limit(5).order(order);
            loop {
                let page = replica.enumerate("users/*/name", paging.clone()).unwrap();
                assert!(page.entries.len() <= 5);
                seen.extend(page.entries.iter().map(|e| e.path.clone()));
                match page.next_cursor {
                    Some(cursor) => paging = paging.after(cursor),
                    None => break,
                }
            }
            let mut expected = names.clone();
            if order == Order::Desc {
                expected.reverse();
            }
            assert_eq!(seen, expected, "{order:?}");
        }
        let below = replica
            .enumerate("users/**", Paging::new().limit(1000))
            .unwrap();
        assert_eq!(below.entries.len(), 46);
        assert_eq!(below.next_cursor, None);
        let exact = replica.enumerate("usersx", Paging::new()).unwrap();
        assert_eq!(exact.entries.len(), 1);
        assert_eq!(exact.entries[0].value, json!(1));

        let range = replica
            .range("users/u03", "users/u05", Paging::new())
            .unwrap();
        let paths: Vec<&str> = range.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "users/u03/deep/x",
                "users/u03/name",
                "users/u04/deep/x",
                "users/u04/name"
            ]
        );
        assert!(
            replica
                .range("z", "a", Paging::new())
                .unwrap()
                .entries
                .is_empty()
        );
        assert_eq!(
            replica.enumerate("users/*", Paging::new().limit(0)),
            Err(ReadError::Limit(0))
        );
        assert!(matches!(
            replica.enumerate("a/**/b", Paging::new()),
            Err(ReadError::Glob(_))
        ));
    }

    #[tokio::test]
    async fn status_reports_the_store_as_the_replica_sees_it() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let replica = engine.replica(STORE);
        let before = replica.status();
        assert_eq!(
            (before.connection, before.last_seq, before.pending_ops),
            (None, 0, None)
        );
        assert_eq!(before.permissions(), Value::Null);

        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        let replica = replica.with_writes(&app);
        within("a write", app.set(["a"], 1)).await.unwrap();
        wait_seq(&engine, 1).await;
        let status = replica.status();
        assert_eq!(status.connection, Some(StoreStatus::Connected));
        assert_eq!(status.last_seq, 1);
        assert_eq!(status.pending_ops, Some(0));
        assert_eq!(status.entry_count, 1);
        assert_eq!(status.permissions(), json!({"read": true, "write": true}));
        assert!(!status.scopes().is_empty(), "{status:?}");

        // A write the server takes its time to commit is pending.
        dust(&server).set_write_cost(std::time::Duration::from_secs(600));
        let mut pending = Box::pin(app.set(["b"], 2));
        assert!(poll_once(&mut pending).await.is_pending());
        assert_eq!(replica.status().pending_ops, Some(1));
        assert_eq!(
            replica.get("b").unwrap(),
            None,
            "reads show what the server confirmed"
        );
    }
}

mod subscriptions {
    use dust_connection::{Lagged, MemoryEngine, SubscribeOptions, Subscription, Update};
    use futures_util::StreamExt as _;
    use serde_json::{Value, json};

    use crate::common::*;
    use crate::reads::wait_seq;

    async fn next(subscription: &mut Subscription) -> Result<Update, Lagged> {
        within("a subscription item", subscription.next())
            .await
            .expect("a subscription never ends")
    }

    fn seen(update: &Update) -> (String, Option<Value>, u64, bool) {
        (
            update.path.render(),
            update.value.clone(),
            update.seq,
            update.current,
        )
    }

    /// With `with_current`, a subscriber first gets the entries matching now, then every
    /// change of a matching entry, in seq order: sets, removals (`None`) and merges, and
    /// nothing that does not match.
    #[tokio::test]
    async fn subscribers_get_the_current_entries_then_each_change_in_seq_order() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        within("writes", async {
            app.set(["users", "a"], json!({"name": "A", "age": 1}))
                .await
                .unwrap();
            app.set(["users", "b", "name"], "B").await.unwrap();
        })
        .await;
        wait_seq(&engine, 2).await;
        let replica = engine.replica(STORE);
        let mut names = replica
            .on_with("users/*/name", SubscribeOptions::new().with_current(true))
            .unwrap();
        let mut everything = replica.on("**").unwrap();
        within("more writes", async {
            app.set(["users", "c"], json!({"name": "C"})).await.unwrap();
            app.delete(["users", "a"]).await.unwrap();
            app.set(["other"], 1).await.unwrap();
            app.merge(["users", "b"], json!({"name": "B2", "x": 1}))
                .await
                .unwrap();
            app.set(["users", "b"], 5).await.unwrap();
        })
        .await;
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(seen(&next(&mut names).await.unwrap()));
        }
        let s = |p: &str| p.to_owned();
        assert_eq!(
            got,
            [
                (s("users/a/name"), Some(json!("A")), 1, true),
                (s("users/b/name"), Some(json!("B")), 2, true),
                (s("users/c/name"), Some(json!("C")), 3, false),
                (s("users/a/name"), None, 4, false),
                (s("users/b/name"), Some(json!("B2")), 6, false),
                (s("users/b/name"), None, 7, false),
            ]
        );
        // Nothing else matched: the next item is the next matching change.
        within("a write", app.set(["users", "d", "name"], "D"))
            .await
            .unwrap();
        assert_eq!(
            seen(&next(&mut names).await.unwrap()),
            (s("users/d/name"), Some(json!("D")), 8, false)
        );
        // `**` saw every entry that changed after it subscribed, in seq order.
        let mut all = Vec::new();
        for _ in 0..9 {
            let update = next(&mut everything).await.unwrap();
            all.push((update.path.render(), update.seq));
        }
        assert_eq!(
            all,
            [
                (s("users/c/name"), 3),
                (s("users/a/age"), 4),
                (s("users/a/name"), 4),
                (s("other"), 5),
                (s("users/b/name"), 6),
                (s("users/b/x"), 6),
                (s("users/b/name"), 7),
                (s("users/b/x"), 7),
                (s("users/b"), 7),
            ]
        );
    }

    /// A subscriber that does not keep up holds at most its capacity: the changes that do
    /// not fit are counted and reported once, where they were lost, and it then goes on in
    /// order with the changes that come after.
    #[tokio::test]
    async fn a_slow_subscriber_gets_a_lag_report_then_continues_in_order() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        let mut slow = engine
            .replica(STORE)
            .on_with("n", SubscribeOptions::new().capacity(4))
            .unwrap();
        within("ten writes", async {
            for i in 0..10 {
                app.set(["n"], i).await.unwrap();
            }
        })
        .await;
        wait_seq(&engine, 10).await;
        assert_eq!(slow.queued(), 4, "bounded by its capacity");
        for i in 0..4 {
            let update = next(&mut slow).await.unwrap();
            assert_eq!((update.value, update.seq), (Some(json!(i)), i + 1));
        }
        assert_eq!(next(&mut slow).await.unwrap_err().missed, 6);
        within("two more writes", async {
            app.set(["n"], 10).await.unwrap();
            app.set(["n"], 11).await.unwrap();
        })
        .await;
        for seq in [11, 12] {
            let update = next(&mut slow).await.unwrap();
            assert_eq!((update.value, update.seq), (Some(json!(seq - 1)), seq));
        }
    }

    /// A lag that happens while the subscriber still holds changes is reported between the
    /// last change it kept and the first one after the loss.
    #[tokio::test]
    async fn a_lag_is_reported_in_place_between_the_changes_around_it() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        let mut slow = engine
            .replica(STORE)
            .on_with("n", SubscribeOptions::new().capacity(2))
            .unwrap();
        within("writes", async {
            for i in 0..5 {
                app.set(["n"], i).await.unwrap();
            }
        })
        .await;
        wait_seq(&engine, 5).await;
        assert_eq!(next(&mut slow).await.unwrap().seq, 1);
        // Room for one: the next change goes in after the loss of seq 3, 4 and 5.
        within("a write", app.set(["n"], 5)).await.unwrap();
        wait_seq(&engine, 6).await;
        assert_eq!(next(&mut slow).await.unwrap().seq, 2);
        assert_eq!(next(&mut slow).await.unwrap_err().missed, 3);
        assert_eq!(next(&mut slow).await.unwrap().seq, 6);
    }

    /// The callback form gets the same items; dropping its handle stops its task and
    /// unsubscribes.
    #[tokio::test]
    async fn callbacks_get_the_changes_until_their_handle_is_dropped() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let app = connection.store(STORE).unwrap();
        let replica = engine.replica(STORE);
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let watch = replica
            .on_each("users/*", SubscribeOptions::new(), move |item| {
                tx.try_send(item).unwrap();
            })
            .unwrap();
        within("writes", async {
            app.set(["users", "a"], 1).await.unwrap();
            app.set(["other"], 2).await.unwrap();
            app.set(["users", "b"], 3).await.unwrap();
        })
        .await;
        for (path, seq) in [("users/a", 1), ("users/b", 3)] {
            let update = within("a callback", rx.recv()).await.unwrap().unwrap();
            assert_eq!((update.path.render().as_str(), update.seq), (path, seq));
        }
        assert_eq!(replica.status().subscriptions, 1);
        drop(watch);
        assert!(
            within("the callback's task ends", rx.recv())
                .await
                .is_none(),
            "nothing after the drop"
        );
        assert_eq!(replica.status().subscriptions, 0);
    }

    #[test]
    fn a_callback_needs_a_runtime() {
        let engine = MemoryEngine::new();
        let error = engine
            .replica(STORE)
            .on_each("**", SubscribeOptions::new(), |_| {})
            .unwrap_err();
        assert_eq!(error, dust_connection::WatchError::NoRuntime);
        assert_eq!(engine.replica(STORE).status().subscriptions, 0);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let engine = MemoryEngine::new();
        let replica = engine.replica(STORE);
        let first = replica.on("a/*").unwrap();
        let second = replica.on("**").unwrap();
        assert_eq!(replica.status().subscriptions, 2);
        drop(first);
        assert_eq!(replica.status().subscriptions, 1);
        drop(second);
        assert_eq!(replica.status().subscriptions, 0);
        assert!(replica.on("a/**/b").is_err());
    }

    /// A device joining after a compaction gets a snapshot: its subscribers see each entry
    /// it brings (at the snapshot's seq), then the events after it.
    #[tokio::test]
    async fn a_snapshot_reaches_subscribers_entry_by_entry() {
        let server = server().await;
        let writer_engine = MemoryEngine::new();
        let writer = connect(&server, &writer_engine).await;
        let app = writer.store(STORE).unwrap();
        within("writes", async {
            app.set(["a"], json!({"x": 1, "y": 2})).await.unwrap();
            app.set(["b"], "B").await.unwrap();
        })
        .await;
        assert_eq!(dust(&server).compact(STORE).await.unwrap(), Some(2));
        within("a write", app.set(["c"], true)).await.unwrap();

        let engine = MemoryEngine::new();
        let mut all = engine
            .replica(STORE)
            .on_with("**", SubscribeOptions::new().with_current(true))
            .unwrap();
        let _reader = connect(&server, &engine).await;
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(seen(&next(&mut all).await.unwrap()));
        }
        let s = |p: &str| p.to_owned();
        assert_eq!(
            got,
            [
                (s("a/x"), Some(json!(1)), 2, false),
                (s("a/y"), Some(json!(2)), 2, false),
                (s("b"), Some(json!("B")), 2, false),
                (s("c"), Some(json!(true)), 3, false),
            ]
        );
        assert_eq!(
            engine
                .replica(STORE)
                .entry("a/x")
                .unwrap()
                .unwrap()
                .revision,
            2
        );
    }
}

mod optimistic {
    use dust_connection::{MemoryEngine, SubscribeOptions, Subscription, Update, WriteError};
    use futures_util::StreamExt as _;
    use serde_json::{Value, json};

    use crate::common::*;
    use crate::reads::wait_seq;

    async fn next(subscription: &mut Subscription) -> Update {
        within("a subscription item", subscription.next())
            .await
            .expect("a subscription never ends")
            .unwrap()
    }

    fn seen(update: &Update) -> (String, Option<Value>, bool) {
        (update.path.render(), update.value.clone(), update.pending)
    }

    /// A write reads back at once (a map at its leaves too), marked pending, before any
    /// answer; subscribers get it pending, then confirmed by its own event; once confirmed,
    /// the entry is the server's, with its revision.
    #[tokio::test]
    async fn a_write_reads_at_once_and_is_confirmed_by_its_own_event() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let store = connection.store(STORE).unwrap();
        within("setup", async {
            store.increment(["n"], 5).await.unwrap();
            store.add(["tags"], "a").await.unwrap();
        })
        .await;
        wait_seq(&engine, 2).await;
        let replica = engine.replica(STORE);
        let mut users = replica.on("users/**").unwrap();
        let app = replica.optimistic(&store);

        let put = app.put(["users", "alice"], json!({"name": "Alice"}));
        let increment = app.increment(["n"], 2);
        let add = app.add(["tags"], "b");
        // Before any await: the replica already shows the writes.
        assert_eq!(
            replica.get("users/alice/name").unwrap(),
            Some(json!("Alice"))
        );
        assert_eq!(
            replica.get(["users", "alice"]).unwrap(),
            Some(json!({"name": "Alice"}))
        );
        assert!(replica.entry("users/alice/name").unwrap().unwrap().pending);
        assert_eq!(replica.get("n").unwrap(), Some(json!(7)));
        assert_eq!(replica.get("tags").unwrap(), Some(json!(["b", "a"])));
        assert_eq!(replica.status().optimistic, 3);
        assert_eq!(
            seen(&next(&mut users).await),
            (s("users/alice/name"), Some(json!("Alice")), true)
        );

        let ack = within("the put", put).await.unwrap();
        within("the rest", async {
            increment.await.unwrap();
            add.await.unwrap();
        })
        .await;
        let confirmed = next(&mut users).await;
        assert_eq!(
            seen(&confirmed),
            (s("users/alice/name"), Some(json!("Alice")), false)
        );
        assert_eq!(Some(confirmed.seq), ack.store_seq());
        wait_seq(&engine, 5).await;
        assert_eq!(replica.status().optimistic, 0);
        let entry = replica.entry("users/alice/name").unwrap().unwrap();
        assert!(!entry.pending);
        assert_eq!(Some(entry.revision), ack.store_seq());
        assert_eq!(replica.get("n").unwrap(), Some(json!(7)));
        assert_eq!(replica.get("tags").unwrap(), Some(json!(["b", "a"])));
        assert_eq!(
            serde_json::to_value(engine.entries(STORE)).unwrap(),
            json!({"n": 7, "tags": ["b", "a"], "users/alice/name": "Alice"})
        );
    }

    fn s(path: &str) -> String {
        path.to_owned()
    }

    /// A rejected write is rolled back: reads see the entry as it was, and subscribers see
    /// the revert.
    #[tokio::test]
    async fn a_rejected_write_is_rolled_back_and_subscribers_see_the_revert() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let store = connection.store(STORE).unwrap();
        within("setup", store.set(["a"], 1)).await.unwrap();
        wait_seq(&engine, 1).await;
        let replica = engine.replica(STORE);
        let mut a = replica.on_with("a", SubscribeOptions::new()).unwrap();
        let app = replica.optimistic(&store);

        let write = app.write(dust_connection::WriteRequest::set(["a"], 2).if_match(99));
        assert_eq!(replica.get("a").unwrap(), Some(json!(2)));
        let error = within("the write", write).await.unwrap_err();
        assert!(matches!(error, WriteError::Rejected(_)), "{error:?}");
        assert_eq!(replica.get("a").unwrap(), Some(json!(1)));
        assert!(!replica.entry("a").unwrap().unwrap().pending);
        assert_eq!(seen(&next(&mut a).await), (s("a"), Some(json!(2)), true));
        assert_eq!(seen(&next(&mut a).await), (s("a"), Some(json!(1)), false));
        assert_eq!(replica.status().optimistic, 0);

        // A write of a new path that is rejected disappears.
        let write = app.write(dust_connection::WriteRequest::set(["b"], 1).if_match(99));
        assert_eq!(replica.get("b").unwrap(), Some(json!(1)));
        within("the write", write).await.unwrap_err();
        assert_eq!(replica.get("b").unwrap(), None);
    }

    /// A write dropped before it was sent gives up its place: its local value goes too.
    #[tokio::test]
    async fn a_write_dropped_before_it_is_sent_is_reverted() {
        let server = server().await;
        let engine = MemoryEngine::new();
        let connection = connect(&server, &engine).await;
        let store = connection.store(STORE).unwrap();
        let replica = engine.replica(STORE);
        let app = replica.optimistic(&store);
        let write = app.put(["x"], 1);
        assert_eq!(replica.get("x").unwrap(), Some(json!(1)));
        drop(write);
        assert_eq!(replica.get("x").unwrap(), None);
        assert_eq!(replica.status().optimistic, 0);
        // The next write goes through as usual.
        within("a write", app.put(["y"], 2)).await.unwrap();
        assert_eq!(replica.get("y").unwrap(), Some(json!(2)));
        assert!(dust(&server).entry(STORE, "x").await.unwrap().is_none());
    }
}

mod differential {
    use std::collections::BTreeMap;

    use dust_connection::{MemoryEngine, SubscribeOptions, WriteRequest};
    use futures_util::StreamExt as _;
    use futures_util::future::join_all;
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use serde_json::{Value, json};

    use crate::common::*;
    use crate::reads::wait_seq;

    const DOCS: [&[&str]; 5] = [&["a"], &["a", "x"], &["b"], &["b", "y", "z"], &["c~/d"]];

    fn request(rng: &mut SmallRng) -> WriteRequest {
        let doc = DOCS[rng.random_range(0..DOCS.len())].to_vec();
        let key = ["p", "q"][rng.random_range(0..2)];
        let scalar = [json!(1), json!("s"), json!(null), json!(2.5), json!(true)]
            [rng.random_range(0..5)]
        .clone();
        match rng.random_range(0..9) {
            0 | 1 => WriteRequest::set(doc, scalar),
            2 => WriteRequest::set(doc, json!({"m": scalar, "n": {"o": 1}})),
            3 => WriteRequest::merge(doc, json!({"m": scalar, "k": {"deep": 2}})),
            4 => WriteRequest::delete(doc),
            5 => WriteRequest::increment(["ctr", key], rng.random_range(-3..4)),
            6 => WriteRequest::add(["tags", key], ["x", "y"][rng.random_range(0..2)]),
            7 => WriteRequest::remove(["tags", key], ["x", "y"][rng.random_range(0..2)]),
            // Often rejected: a revision that is not the path's.
            _ => WriteRequest::set(doc, scalar).if_match(rng.random_range(0..6)),
        }
    }

    /// Two devices write at once, one of them optimistically with many writes in flight
    /// (some rejected): once everything is answered, the optimistic replica holds exactly
    /// the server's entries with nothing pending, and a `**` subscriber that folds its
    /// updates (pending ones, confirmations and reverts alike), which come in seq order, ends
    /// with the same entries.
    #[tokio::test]
    async fn optimistic_writes_and_subscribers_end_equal_to_the_server() {
        for seed in [3_u64, 11, 29] {
            let mut rng = SmallRng::seed_from_u64(seed);
            let server = server().await;
            let engine = MemoryEngine::new();
            let connection = connect(&server, &engine).await;
            let other_engine = MemoryEngine::new();
            let other = connect(&server, &other_engine).await;
            let replica = engine.replica(STORE);
            let mut all = replica
                .on_with("**", SubscribeOptions::new().capacity(100_000))
                .unwrap();
            let app = replica.optimistic(&connection.store(STORE).unwrap());
            let other_store = other.store(STORE).unwrap();

            let mut mine = Vec::new();
            let mut theirs = Vec::new();
            for _ in 0..150 {
                if rng.random_bool(0.7) {
                    mine.push(app.write(request(&mut rng)));
                } else {
                    theirs.push(other_store.write(request(&mut rng)));
                }
            }
            let (mine, _) = within("every write answered", async {
                tokio::join!(join_all(mine), join_all(theirs))
            })
            .await;
            let rejected = mine.iter().filter(|r| r.is_err()).count();
            assert!(
                rejected > 0 && rejected < mine.len(),
                "seed {seed}: {rejected} rejected"
            );
            let seq = dust(&server).store_info(STORE).await.unwrap().seq;
            wait_seq(&engine, seq).await;

            let server_entries: BTreeMap<String, Value> = dust(&server)
                .entries(STORE)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.path, e.value))
                .collect();
            assert_eq!(
                engine.entries(STORE),
                server_entries,
                "seed {seed}: confirmed"
            );
            let status = replica.status();
            assert_eq!(status.optimistic, 0, "seed {seed}");
            let page = replica
                .enumerate("**", dust_connection::Paging::new().limit(1000))
                .unwrap();
            let visible: BTreeMap<String, Value> = page
                .entries
                .iter()
                .map(|e| {
                    assert!(!e.pending, "seed {seed}: {} still pending", e.path);
                    (e.path.clone(), e.value.clone())
                })
                .collect();
            assert_eq!(visible, server_entries, "seed {seed}: visible");

            let mut folded = BTreeMap::new();
            let mut last_seq = 0;
            let mut updates = 0;
            while all.queued() > 0 {
                let update = within("an update", all.next()).await.unwrap().unwrap();
                assert!(update.seq >= last_seq, "seed {seed}: out of seq order");
                last_seq = update.seq;
                updates += 1;
                match update.value {
                    Some(value) => folded.insert(update.path.render(), value),
                    None => folded.remove(&update.path.render()),
                };
            }
            assert!(updates > 100, "seed {seed}: {updates} updates");
            assert_eq!(folded, server_entries, "seed {seed}: folded updates");
        }
    }
}

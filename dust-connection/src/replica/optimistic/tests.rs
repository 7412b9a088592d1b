//! The optimistic view's tests: counters and sets applied as the server applies them, and the
//! view kept incrementally equal to one rebuilt from scratch.

use super::*;
use serde_json::json;

#[test]
fn counters_add_as_the_server_adds_them() {
    assert_eq!(add_numbers(None, &json!(2)), json!(2));
    assert_eq!(add_numbers(Some(&json!("x")), &json!(2)), json!(2));
    assert_eq!(add_numbers(Some(&json!(5)), &json!(-7)), json!(-2));
    assert_eq!(add_numbers(Some(&json!(1.5)), &json!(1)), json!(2.5));
    assert_eq!(
        add_numbers(Some(&json!(i64::MAX)), &json!(1)),
        json!(i64::MAX as f64 + 1.0)
    );
}

#[test]
fn sets_prepend_new_members_and_remove_the_first_match() {
    let op = |op: &'static str, member: Value| PendingOp {
        client_op_id: "op".into(),
        path: Path::parse("s").unwrap(),
        op,
        value: member,
        acked_seq: None,
    };
    let mut view = Entries::new();
    op("add", json!("a")).apply(&mut view, 0);
    op("add", json!("b")).apply(&mut view, 0);
    op("add", json!("a")).apply(&mut view, 0);
    assert_eq!(view["s"].rendered(), json!(["b", "a"]));
    assert!(view["s"].pending);
    op("remove", json!("b")).apply(&mut view, 0);
    assert_eq!(view["s"].rendered(), json!(["a"]));
}

use crate::engine::materialize_into;
use proptest::prelude::*;

const PATHS: [&str; 5] = ["a", "a/x", "a/x/y", "b", "c~1d"];

#[derive(Clone, Debug)]
enum Step {
    /// A pending write of op `op` at `PATHS[path]`.
    Push(usize, usize, i64),
    /// The server applies an op of someone else at `PATHS[path]`.
    Other(usize, usize, i64),
    /// The oldest pending write is confirmed by its event.
    ConfirmOldest,
    /// The pending write `n` (modulo) fails.
    Fail(usize),
}

fn op_of(kind: usize, path: usize, n: i64) -> (&'static str, Path, Value) {
    let path = Path::parse(PATHS[path]).unwrap();
    match kind % 5 {
        0 => ("set", path, json!(n)),
        1 => ("set", path, json!({"m": n, "k": {"z": n}})),
        2 => ("merge", path, json!({"m": n + 1})),
        3 => ("delete", path, Value::Null),
        _ => ("increment", path, json!(n)),
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..5_usize, 0..5_usize, -3..4_i64).prop_map(|(k, p, n)| Step::Push(k, p, n)),
        (0..5_usize, 0..5_usize, -3..4_i64).prop_map(|(k, p, n)| Step::Other(k, p, n)),
        Just(Step::ConfirmOldest),
        (0..8_usize).prop_map(Step::Fail),
    ]
}

fn visible(entries: &Entries) -> BTreeMap<String, (Value, bool)> {
    entries
        .iter()
        .map(|(k, v)| (k.clone(), (v.rendered(), v.pending)))
        .collect()
}

proptest! {
    /// Whatever happens, the incrementally kept view equals a view rebuilt from scratch
    /// (the confirmed entries with every pending write replayed), and the changes it
    /// reports, folded over what a reader saw, give what a reader sees now.
    #[test]
    fn the_incremental_view_equals_a_rebuilt_one(steps in proptest::collection::vec(step(), 1..40)) {
        let mut confirmed = Entries::new();
        let mut overlay = Overlay::default();
        let mut seen = BTreeMap::new();
        let mut seq = 0;
        let mut next_id = 0;
        for step in steps {
            let was_active = overlay.active();
            let changes = match step {
                Step::Push(kind, path, n) => {
                    let (op, path, value) = op_of(kind, path, n);
                    next_id += 1;
                    let pending = PendingOp {
                        client_op_id: next_id.to_string(),
                        path, op, value, acked_seq: None,
                    };
                    overlay.push(pending, &confirmed, seq)
                }
                Step::Other(kind, path, n) => {
                    let (op, path, value) = op_of(kind, path, n);
                    seq += 1;
                    let value = if op == "increment" {
                        add_numbers(confirmed.get(&path.render()).map(Stored::rendered).as_ref(), &value)
                    } else { value };
                    materialize_into(&mut confirmed, &path, op, &value, seq);
                    if overlay.active() { overlay.confirmed(&confirmed, seq, None, Some(&path)) } else { Vec::new() }
                }
                Step::ConfirmOldest => {
                    let Some(oldest) = overlay.pending.first().cloned() else { continue };
                    seq += 1;
                    let value = if oldest.op == "increment" {
                        add_numbers(confirmed.get(&oldest.path.render()).map(Stored::rendered).as_ref(), &oldest.value)
                    } else { oldest.value.clone() };
                    materialize_into(&mut confirmed, &oldest.path, oldest.op, &value, seq);
                    overlay.confirmed(&confirmed, seq, Some(&oldest.client_op_id), Some(&oldest.path))
                }
                Step::Fail(n) => {
                    if overlay.pending.is_empty() { continue; }
                    let id = overlay.pending[n % overlay.pending.len()].client_op_id.clone();
                    overlay.settle(&id, &confirmed, seq)
                }
            };
            // The changes a reader got, folded over what it saw before.
            for (path, value, pending) in changes {
                match value {
                    Some(value) => { seen.insert(path, (value, pending)); }
                    None => { seen.remove(&path); }
                }
            }
            let mut rebuilt = confirmed.clone();
            for op in &overlay.pending {
                op.apply(&mut rebuilt, seq);
            }
            let view = visible(overlay.view(&confirmed));
            prop_assert_eq!(&view, &visible(&rebuilt));
            if was_active || overlay.active() {
                prop_assert_eq!(&seen, &view, "the reported changes");
            } else {
                // Without an overlay the engine reports the confirmed diff itself.
                seen = view;
            }
            prop_assert!(overlay.active() || overlay.pending.is_empty());
        }
    }
}

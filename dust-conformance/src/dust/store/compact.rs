//! Compaction into a snapshot, and the snapshot a client behind it gets first.

use serde_json::{Value, json};

use super::*;

impl StoreData {
    /// Compacts the op log into a snapshot of the entries at the last op's seq; `None` when
    /// there is no op to compact.
    pub(crate) fn compact(&mut self, inserted_at: String) -> Option<u64> {
        let max = *self.ops.keys().next_back()?;
        let data = self
            .entries
            .iter()
            .map(|(path, e)| (path.clone(), json!({"value": e.value, "type": e.kind})))
            .collect();
        self.snapshot = Some(Snapshot {
            seq: max,
            data,
            inserted_at,
        });
        self.ops.clear();
        Some(max)
    }

    /// The `snapshot` push a client behind the latest snapshot gets first, if any.
    pub(crate) fn snapshot_for(&self, last_seq: &Value) -> Option<(u64, Value)> {
        let snapshot = self.snapshot.as_ref()?;
        // Erlang term order: only a number can be below the snapshot's seq.
        let behind = match SeqBound::parse(last_seq) {
            Ok(SeqBound::Number(_, Some(last))) if last_seq.is_number() => {
                i128::from(snapshot.seq) > last
            }
            Ok(SeqBound::Number(last, None)) if last_seq.is_number() => {
                (snapshot.seq as f64) > last
            }
            _ => false,
        };
        behind.then(|| {
            (
                snapshot.seq,
                json!({"snapshot_seq": snapshot.seq, "entries": snapshot.data}),
            )
        })
    }
}

//! Leases: reading a lease key's state and planning `lease` / `renew` / `release`.

use serde_json::{Map, Value, json};

use super::super::value::{Raise, add};
use super::*;

/// The state of a lease key.
pub(super) enum LeaseState<'a> {
    Absent,
    Occupied,
    Live(&'a Value),
    Expired(&'a Value),
}

impl StoreData {
    pub(super) fn read_lease(&self, key: &str, now: Now) -> LeaseState<'_> {
        match self.entries.get(key) {
            None => LeaseState::Absent,
            Some(entry) if entry.kind == "lease" => {
                let expired = match self.lease_deadlines.get(key) {
                    Some(deadline) => (now.mono_ms as f64) >= *deadline,
                    // After a restart: the persisted wall-clock expiry, when it is an integer.
                    None => match entry.value.get("expires_at") {
                        Some(Value::Number(n)) if !n.is_f64() => {
                            n.as_i64().is_some_and(|exp| exp <= now.wall_ms())
                        }
                        _ => false,
                    },
                };
                if expired {
                    LeaseState::Expired(&entry.value)
                } else {
                    LeaseState::Live(&entry.value)
                }
            }
            Some(_) => LeaseState::Occupied,
        }
    }

    pub(super) fn plan_lease(
        &self,
        op: Op,
        path: &str,
        params: &Map<String, Value>,
        now: Now,
        seq: u64,
        row: impl Fn(Value, Option<Value>) -> OpRow,
    ) -> Result<Plan, Reject> {
        let ttl = params
            .get("ttl_ms")
            .filter(|v| truthy(v))
            .cloned()
            .unwrap_or_else(|| json!(30_000));
        let token = params.get("token").filter(|v| !v.is_null());
        let client_op_id = params.get("client_op_id").cloned().unwrap_or(Value::Null);
        let expires_at =
            || add(&json!(now.wall_ms()), &ttl).ok_or_else(|| Reject::raised(Raise::arithmetic()));
        let envelope = match op {
            Op::Lease => match self.read_lease(path, now) {
                LeaseState::Absent | LeaseState::Expired(_) => json!({
                    "_type": "lease",
                    "holder": params.get("holder").cloned().unwrap_or(Value::Null),
                    "token": seq,
                    "expires_at": expires_at()?,
                }),
                LeaseState::Live(_) => return Err(Reject::reason("held")),
                LeaseState::Occupied => return Err(Reject::reason("occupied")),
            },
            Op::Renew => {
                let Some(token) = token else {
                    return Err(Reject::reason(":invalid_lease_op"));
                };
                match self.read_lease(path, now) {
                    LeaseState::Live(envelope) if envelope.get("token") == Some(token) => {
                        let mut renewed = envelope.clone();
                        if let Value::Object(map) = &mut renewed {
                            map.insert("expires_at".to_owned(), expires_at()?);
                        }
                        renewed
                    }
                    _ => return Err(Reject::reason("not_held")),
                }
            }
            _ => {
                let Some(token) = token else {
                    return Err(Reject::reason(":invalid_lease_op"));
                };
                match self.read_lease(path, now) {
                    LeaseState::Live(envelope) | LeaseState::Expired(envelope)
                        if envelope.get("token") == Some(token) =>
                    {
                        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
                        return Ok(Plan::Commit(Box::new(row(Value::Null, None))));
                    }
                    _ => return Ok(Plan::Noop),
                }
            }
        };
        client_op_id_text(&client_op_id).map_err(Reject::raised)?;
        Ok(Plan::Commit(Box::new(row(envelope, Some(ttl)))))
    }
}

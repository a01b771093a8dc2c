//! A persistent query's state as keyed entries, so a changelog can carry what
//! changed since the last checkpoint and a restore can put it back.
//!
//! An entry's key is a kind letter and an id: `g` a group (and window) with
//! its aggregate values, `s` a group's sessions, `r` a table source's row.
//! Its value is JSON; a missing entry (a tombstone) means the state is gone.
//! Only the server's durable queries track changes; elsewhere `mark` is a
//! no-op.

use anyhow::{anyhow, bail, Context, Result};
use rustc_hash::FxHashSet;
use serde_json::{json, Map, Value};

use crate::engine::{Engine, Group, Pending, Query};
use crate::eval::Row;
use crate::parser::{Expr, SourceKind};

pub(crate) const GROUP: char = 'g';
pub(crate) const SESSIONS: char = 's';
pub(crate) const ROW: char = 'r';

/// The entries changed since the last checkpoint, when tracked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Changes {
    changed: Option<FxHashSet<String>>,
    /// Where a key is written to be looked up: a key marked again (every
    /// record of a busy group) costs no allocation.
    probe: String,
}

impl Changes {
    pub(crate) fn mark(&mut self, kind: char, id: &str) {
        if let Some(changed) = &mut self.changed {
            self.probe.clear();
            self.probe.push(kind);
            self.probe.push_str(id);
            if !changed.contains(&self.probe) {
                changed.insert(self.probe.clone());
            }
        }
    }

    fn track(&mut self) {
        self.changed.get_or_insert_with(FxHashSet::default);
    }

    fn take(&mut self) -> Vec<String> {
        self.changed
            .as_mut()
            .map(|changed| changed.drain().collect())
            .unwrap_or_default()
    }
}

/// One changed entry: its key, and its value (None: deleted).
pub type Entry = (String, Option<Value>);

impl Engine {
    /// The engine's one query (an engine made by `only`).
    fn sole_query(&mut self) -> Result<&mut Query> {
        match self.queries.as_mut_slice() {
            [query] => Ok(query),
            _ => bail!("state is kept per query: the engine must run exactly one"),
        }
    }

    /// Whether the query keeps state between records (aggregates, a table
    /// source's rows, a join's sides); a stateless one needs only offsets.
    pub fn is_stateful(&self) -> bool {
        self.queries.iter().any(|q| {
            q.aggregation.is_some()
                || q.join.is_some()
                || self
                    .sources
                    .get(&q.from)
                    .is_some_and(|s| s.kind == SourceKind::Table)
        })
    }

    /// Whether every state entry belongs to one input partition: the state
    /// is keyed by the record key (a table source's rows, or GROUP BY
    /// exactly the source's key columns), so a task per partition holds it.
    pub fn state_by_partition(&self) -> bool {
        self.queries.iter().all(|q| {
            if q.aggregation.is_none() {
                return q.join.is_none();
            }
            let Some(from) = self.sources.get(&q.from) else {
                return false;
            };
            let keys: Vec<&str> = from
                .columns
                .iter()
                .filter(|c| c.key)
                .map(|c| c.name.as_str())
                .collect();
            !keys.is_empty()
                && q.select.group_by.len() == keys.len()
                && q.select
                    .group_by
                    .iter()
                    .zip(&keys)
                    .all(|(expr, key)| matches!(expr, Expr::Column(c) if c == key))
        })
    }

    /// How many partitions the query's repartition topic has, when its
    /// state is not keyed as its input is partitioned (GROUP BY a value
    /// column): as many as its source, each holding whole groups, as ksqlDB
    /// repartitions; one for a table source, whose old rows must be at hand
    /// when they change. None when the input serves as it is.
    pub fn repartition_count(&self, source_partitions: i32) -> Option<i32> {
        let query = self.queries.first()?;
        if !self.is_stateful() || self.state_by_partition() || query.join.is_some() {
            return None;
        }
        match self.sources.get(&query.from)?.kind {
            SourceKind::Table => Some(1),
            SourceKind::Stream => Some(source_partitions),
        }
    }

    /// Starts recording which entries change, for [`Engine::take_changes`].
    pub fn track_changes(&mut self) -> Result<()> {
        let query = self.sole_query()?;
        if query.join.is_some() {
            bail!("a join's state cannot be checkpointed yet");
        }
        query.changed_rows.track();
        if let Some(aggregation) = &mut query.aggregation {
            aggregation.changed.track();
        }
        Ok(())
    }

    /// The entries changed since the last call, with their values now.
    pub fn take_changes(&mut self) -> Result<Vec<Entry>> {
        let query = self.sole_query()?;
        let mut entries = Vec::new();
        for key in query.changed_rows.take() {
            let value = query.table_rows.get(&key[1..]).map(row_json);
            entries.push((key, value));
        }
        if let Some(aggregation) = &mut query.aggregation {
            for key in aggregation.changed.take() {
                let id = &key[1..];
                let value = if key.starts_with(SESSIONS) {
                    aggregation
                        .sessions
                        .get(id)
                        .filter(|s| !s.is_empty())
                        .map(|sessions| {
                            let emitted: Vec<bool> = sessions
                                .iter()
                                .map(|(start, end, _)| {
                                    aggregation.emitted.contains(&format!("{id}@{start},{end}"))
                                })
                                .collect();
                            json!({"s": sessions, "e": emitted})
                        })
                } else {
                    aggregation.groups.get(id).map(|group| {
                        let pending = aggregation.pending.get(id).map(|p| {
                            json!({"g": p.group, "w": p.window, "r": row_json(&p.row), "t": p.timestamp})
                        });
                        json!({
                            "v": group.values,
                            "t": group.timestamp,
                            "c": group.close,
                            "e": aggregation.emitted.contains(id),
                            "p": pending,
                        })
                    })
                };
                entries.push((key, value));
            }
        }
        Ok(entries)
    }

    /// Puts back one entry as `take_changes` wrote it (None deletes it).
    pub fn restore(&mut self, key: &str, value: Option<Value>) -> Result<()> {
        let query = self.sole_query()?;
        let mut kinds = key.chars();
        let kind = kinds.next().ok_or_else(|| anyhow!("an empty state key"))?;
        let id = kinds.as_str().to_string();
        let bad = || format!("state entry {key} is not one this version wrote");
        match (kind, value) {
            (ROW, None) => {
                query.table_rows.remove(&id);
            }
            (ROW, Some(Value::Object(row))) => {
                query.table_rows.insert(id, row.into_iter().collect());
            }
            (GROUP | SESSIONS, value) => {
                let aggregation = query
                    .aggregation
                    .as_mut()
                    .ok_or_else(|| anyhow!("state entry {key} for a query without GROUP BY"))?;
                // An entry replaces what an earlier one of its key restored.
                if kind == GROUP {
                    if let Some(Group {
                        close: Some(close), ..
                    }) = aggregation.groups.remove(&id)
                    {
                        aggregation.closing.remove(&(close, id.clone()));
                    }
                    aggregation.emitted.remove(&id);
                    aggregation.pending.remove(&id);
                } else if let Some(sessions) = aggregation.sessions.remove(&id) {
                    for (start, end, _) in sessions {
                        aggregation.emitted.remove(&format!("{id}@{start},{end}"));
                    }
                }
                let Some(entry) = value else {
                    return Ok(());
                };
                if kind == GROUP {
                    let group = Group {
                        values: array(&entry["v"]).with_context(bad)?,
                        timestamp: entry["t"].as_i64().with_context(bad)?,
                        close: entry["c"].as_i64(),
                    };
                    if let Some(close) = group.close {
                        aggregation.closing.insert((close, id.clone()));
                    }
                    if entry["e"] == Value::Bool(true) {
                        aggregation.emitted.insert(id.clone());
                    }
                    if let Some(p) = entry.get("p").filter(|p| !p.is_null()) {
                        let window = serde_json::from_value(p["w"].clone()).with_context(bad)?;
                        let pending = Pending {
                            group: p["g"].clone(),
                            window,
                            row: object(&p["r"]).with_context(bad)?,
                            timestamp: p["t"].as_i64().with_context(bad)?,
                        };
                        aggregation.pending.insert(id.clone(), pending);
                    }
                    aggregation.groups.insert(id, group);
                } else {
                    let sessions: Vec<(i64, i64, Vec<Value>)> =
                        serde_json::from_value(entry["s"].clone()).with_context(bad)?;
                    let emitted = array(&entry["e"]).with_context(bad)?;
                    for ((start, end, _), emitted) in sessions.iter().zip(emitted) {
                        if emitted == Value::Bool(true) {
                            aggregation.emitted.insert(format!("{id}@{start},{end}"));
                        }
                    }
                    aggregation.sessions.insert(id, sessions);
                }
            }
            _ => bail!(bad()),
        }
        Ok(())
    }

    /// The highest timestamp the query has seen (its windows close by it).
    pub fn stream_time(&self) -> i64 {
        self.queries
            .iter()
            .filter_map(|q| q.aggregation.as_ref())
            .map(|a| a.stream_time)
            .max()
            .unwrap_or(0)
    }

    pub fn set_stream_time(&mut self, time: i64) {
        for aggregation in self
            .queries
            .iter_mut()
            .filter_map(|q| q.aggregation.as_mut())
        {
            aggregation.stream_time = time;
        }
    }
}

fn row_json(row: &Row) -> Value {
    Value::Object(
        row.iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Map<_, _>>(),
    )
}

fn array(value: &Value) -> Option<Vec<Value>> {
    value.as_array().cloned()
}

fn object(value: &Value) -> Option<Row> {
    value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{engine_with, Record};

    /// Runs `records` through query `id` twice: once straight, once restored
    /// from its own changes every `every` records into a new engine (as a
    /// server restarted from its changelog would be); the outputs must match.
    fn survives_restores(script: &str, id: &str, records: &[Record], every: usize) {
        let engine = engine_with(script);
        let mut straight = engine.only(id).unwrap();
        let expected: Vec<Record> = records
            .iter()
            .flat_map(|r| straight.process(r).unwrap())
            .collect();

        let mut changelog: Vec<Entry> = Vec::new();
        let mut stream_time = 0;
        let mut got = Vec::new();
        for chunk in records.chunks(every) {
            let mut restored = engine.only(id).unwrap();
            restored.track_changes().unwrap();
            for (key, value) in changelog.clone() {
                restored.restore(&key, value).unwrap();
            }
            restored.set_stream_time(stream_time);
            for record in chunk {
                got.extend(restored.process(record).unwrap());
            }
            changelog.extend(restored.take_changes().unwrap());
            stream_time = restored.stream_time();
        }
        // Compared one by one: a whole mismatch would print pages.
        assert_eq!(got.len(), expected.len(), "records written");
        for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(got, expected, "record {i}");
        }
    }

    fn payment(name: &str, amount: i64, timestamp: i64) -> Record {
        Record {
            topic: "payments".into(),
            key: Value::Null,
            value: json!({"NAME": name, "AMOUNT": amount}),
            timestamp,
            window: None,
            partition: 0,
            offset: 0,
        }
    }

    fn payments() -> Vec<Record> {
        let names = ["Alice", "Bob", "Carol"];
        (0..60)
            .map(|i| payment(names[i % 3], (i * 37 % 100) as i64, (i as i64) * 700))
            .collect()
    }

    const PAYMENTS: &str =
        "CREATE STREAM P (NAME STRING, AMOUNT INT) WITH (kafka_topic='payments', value_format='JSON');";

    #[test]
    fn tumbling_windows_with_emit_final_and_having_survive_restores() {
        let script = format!(
            "{PAYMENTS} CREATE TABLE W AS SELECT NAME, COUNT(*) AS N, SUM(AMOUNT) AS TOTAL FROM P
             WINDOW TUMBLING (SIZE 5 SECONDS, GRACE PERIOD 1 SECOND) GROUP BY NAME HAVING COUNT(*) > 1 EMIT FINAL;"
        );
        survives_restores(&script, "CTAS_W_0", &payments(), 7);
    }

    #[test]
    fn changing_aggregates_with_having_survive_restores() {
        let script = format!(
            "{PAYMENTS} CREATE TABLE T AS SELECT NAME, COUNT(*) AS N, AVG(AMOUNT) AS MEAN,
             COLLECT_LIST(AMOUNT) AS ALL_AMOUNTS FROM P GROUP BY NAME HAVING SUM(AMOUNT) < 900;"
        );
        survives_restores(&script, "CTAS_T_0", &payments(), 5);
    }

    #[test]
    fn sessions_survive_restores() {
        let script = format!(
            "{PAYMENTS} CREATE TABLE S AS SELECT NAME, COUNT(*) AS N FROM P
             WINDOW SESSION (2 SECONDS) GROUP BY NAME;"
        );
        let mut records = payments();
        for (i, r) in records.iter_mut().enumerate() {
            r.timestamp = (i as i64 / 9) * 5_000 + (i as i64 % 9) * 300;
        }
        survives_restores(&script, "CTAS_S_0", &records, 4);
    }

    #[test]
    fn a_table_sources_rows_survive_restores() {
        let script = "CREATE TABLE U (ID STRING PRIMARY KEY, REGION STRING) WITH (kafka_topic='users', value_format='JSON');
             CREATE TABLE R AS SELECT REGION, COUNT(*) AS N FROM U GROUP BY REGION;";
        let records: Vec<Record> = (0..40)
            .map(|i| Record {
                topic: "users".into(),
                key: json!(format!("u{}", i % 7)),
                value: if i % 11 == 10 {
                    Value::Null
                } else {
                    let region = ["north", "south", "east"][i % 3];
                    json!({ "REGION": region })
                },
                timestamp: i as i64,
                window: None,
                partition: 0,
                offset: 0,
            })
            .collect();
        survives_restores(script, "CTAS_R_0", &records, 6);
    }

    #[test]
    fn an_entry_this_version_did_not_write_is_refused() {
        let mut engine = engine_with(&format!(
            "{PAYMENTS} CREATE TABLE T AS SELECT NAME, COUNT(*) AS N FROM P GROUP BY NAME;"
        ))
        .only("CTAS_T_0")
        .unwrap();
        let error = engine
            .restore("g[\"x\"]", Some(json!({"t": 1})))
            .unwrap_err();
        assert!(
            error.to_string().contains("not one this version wrote"),
            "{error}"
        );
    }
}

//! Runs statements over topics. A source is a topic with columns and formats;
//! a persistent query (CREATE STREAM AS SELECT) turns every record of its
//! source into a record of its sink, in offset order. The engine only sees
//! `Record`s, so the QTT runner's in-memory topics and a live broker feed it alike.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use crate::aggregate::{accumulate, aggregate_calls, describe_call, initial, merge, retracted};
use crate::eval::{eval, Row};
use crate::format::{decode, delimited_text, Format};
use crate::parser::{
    ColumnDef, EmitMode, Expr, Properties, Select, SelectItem, SourceKind, SqlType, Statement,
    Window,
};

/// A record as the engine sees it: key and value in their topic's logical
/// form (a JSON value for JSON, a string for DELIMITED and KAFKA).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub topic: String,
    pub key: Value,
    pub value: Value,
    pub timestamp: i64,
    /// A windowed key's window, `[start, end)` in ms.
    pub window: Option<(i64, i64)>,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) kind: SourceKind,
    pub(crate) topic: String,
    pub(crate) columns: Vec<ColumnDef>,
    pub(crate) key_format: Format,
    pub(crate) value_format: Format,
    /// The window of a windowed aggregation's sink: its keys carry one.
    pub(crate) window: Option<Window>,
}

/// A running query: persistent (CREATE ... AS SELECT, INSERT INTO) or a
/// transient SELECT, whose sink has no topic anyone else reads.
#[derive(Debug, Clone)]
pub(crate) struct Query {
    /// ksqlDB's style: `CSAS_OUTPUT_0`, `CTAS_T_1`, `INSERTQUERY_2`, `TRANSIENT_3`.
    pub(crate) id: String,
    /// A SELECT of a session, not a CREATE ... AS SELECT or INSERT INTO.
    pub(crate) transient: bool,
    pub(crate) from: String,
    pub(crate) sink: String,
    select: Select,
    /// For GROUP BY: the aggregate calls and their state per group.
    aggregation: Option<Aggregation>,
    /// A table source's current rows (those passing WHERE), by key, so an
    /// update can retract what the old row contributed.
    table_rows: HashMap<String, Row>,
}

#[derive(Debug, Clone, Default)]
struct Aggregation {
    /// Every distinct aggregate call of the SELECT and HAVING, in order.
    calls: Vec<Expr>,
    /// Group (its key as JSON text) → the calls' current values.
    groups: HashMap<String, Vec<Value>>,
    /// Groups whose last output was a row, so a failing HAVING must retract it.
    emitted: std::collections::HashSet<String>,
    /// The highest timestamp seen: windows older than it plus grace are closed.
    stream_time: i64,
    /// Time windows by the stream time that closes them (end + grace), so
    /// their state is dropped then, and EMIT FINAL emits them.
    closing: BTreeSet<(i64, String)>,
    /// EMIT FINAL: each open window's latest input row and timestamp.
    pending: HashMap<String, Pending>,
    /// Session windows: per group, its sessions `(start, end, values)`.
    sessions: HashMap<String, Vec<(i64, i64, Vec<Value>)>>,
}

#[derive(Debug, Clone)]
struct Pending {
    group: Value,
    window: Option<(i64, i64)>,
    row: Row,
    timestamp: i64,
}

/// What a statement did, for the session to report.
#[derive(Debug, Clone, PartialEq)]
pub enum Executed {
    Created {
        kind: SourceKind,
        name: String,
    },
    /// A persistent query started, writing into `sink`.
    Started {
        id: String,
        sink: String,
    },
    /// A transient SELECT registered: a push query, or a pull query (no EMIT).
    Transient {
        id: String,
        pull: bool,
    },
    Dropped {
        name: String,
    },
    Terminated {
        ids: Vec<String>,
    },
}

/// ksqlDB's rules for a grouped SELECT, with its words: no aggregate in GROUP
/// BY, the grouping expressions selected, every other column aggregated.
fn check_grouping(sink: &str, select: &Select) -> Result<()> {
    for group in &select.group_by {
        let mut calls = Vec::new();
        aggregate_calls(group, &mut calls)?;
        if let Some(call) = calls.first() {
            let name = describe_call(call);
            bail!(
                "GROUP BY does not support aggregate functions: {name} is an aggregate function."
            );
        }
    }
    let selected: Vec<&Expr> = select
        .items
        .iter()
        .filter_map(|item| match item {
            SelectItem::Expr { expr, .. } => Some(expr),
            SelectItem::All => None,
        })
        .collect();
    for group in &select.group_by {
        if !selected.contains(&group) {
            if let Expr::Column(column) = group {
                bail!(
                    "The query used to build `{sink}` must include the grouping expression {column} in its projection (eg, SELECT {column}...)."
                );
            }
        }
    }
    for expr in selected {
        if let Expr::Column(column) = expr {
            if !select.group_by.contains(expr)
                && !PSEUDO_COLUMNS.contains(&column.as_str())
                && column != "WINDOWSTART"
                && column != "WINDOWEND"
            {
                bail!(
                    "Non-aggregate SELECT expression(s) not part of GROUP BY: {column}\nEither add the column(s) to the GROUP BY or remove them from the SELECT."
                );
            }
        }
    }
    Ok(())
}

#[derive(Default, Clone)]
pub struct Engine {
    pub(crate) sources: HashMap<String, Arc<Source>>,
    pub(crate) queries: Vec<Query>,
    /// Numbers query ids, as ksqlDB does, across the session.
    query_count: usize,
}

fn property<'a>(properties: &'a Properties, name: &str) -> Option<&'a Value> {
    properties.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn text_property(properties: &Properties, name: &str) -> Result<Option<String>> {
    match property(properties, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bail!("{name} must be a string, not {other}"),
    }
}

impl Engine {
    pub fn execute(&mut self, statement: &Statement) -> Result<Executed> {
        match statement {
            Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
            } => {
                if let Some(c) = columns
                    .iter()
                    .find(|c| PSEUDO_COLUMNS.contains(&c.name.as_str()))
                {
                    bail!(
                        "'{}' is a reserved column name. You cannot use it as a name for a column.",
                        c.name
                    );
                }
                let topic = text_property(properties, "KAFKA_TOPIC")?.ok_or_else(|| {
                    anyhow!("Missing required property \"KAFKA_TOPIC\" for {name}")
                })?;
                let (key_format, value_format) = formats(properties, None)?;
                self.add(
                    name,
                    Source {
                        kind: *kind,
                        topic,
                        columns: columns.clone(),
                        key_format,
                        value_format,
                        window: None,
                    },
                )?;
                Ok(Executed::Created {
                    kind: *kind,
                    name: name.clone(),
                })
            }
            Statement::CreateAs {
                kind,
                name,
                properties,
                select,
            } => {
                let id = self.create_as(*kind, name, properties, select, false)?;
                Ok(Executed::Started {
                    id,
                    sink: name.clone(),
                })
            }
            Statement::Query(select) => {
                let pull = select.emit.is_none();
                let from = self
                    .sources
                    .get(&select.from)
                    .ok_or_else(|| anyhow!("{} does not exist.", select.from))?;
                if pull && !select.group_by.is_empty() {
                    bail!("Pull queries don't support GROUP BY clauses. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.");
                }
                if pull && select.window.is_some() {
                    bail!("Pull queries don't support WINDOW clauses. See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.");
                }
                let kind = if select.group_by.is_empty() {
                    from.kind
                } else {
                    SourceKind::Table
                };
                let name = format!("TRANSIENT_{}", self.query_count);
                let properties = vec![
                    ("KEY_FORMAT".to_string(), Value::from("JSON")),
                    ("VALUE_FORMAT".to_string(), Value::from("JSON")),
                ];
                let id = self.create_as(kind, &name, &properties, select, true)?;
                Ok(Executed::Transient { id, pull })
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                ..
            } => {
                let Some(source) = self.sources.get(name) else {
                    if *if_exists {
                        return Ok(Executed::Dropped { name: name.clone() });
                    }
                    bail!("Source {name} does not exist.");
                };
                if source.kind != *kind {
                    bail!(
                        "{name} is a {}, not a {}.",
                        kind_word(source.kind),
                        kind_word(*kind)
                    );
                }
                let users: Vec<&str> = self
                    .queries
                    .iter()
                    .filter(|q| q.from == *name || q.sink == *name)
                    .map(|q| q.id.as_str())
                    .collect();
                if !users.is_empty() {
                    bail!(
                        "Cannot drop {name}. The following queries read from or write to it: {}. Terminate them first.",
                        users.join(", ")
                    );
                }
                self.sources.remove(name);
                Ok(Executed::Dropped { name: name.clone() })
            }
            Statement::Terminate { query } => {
                let ids: Vec<String> = match query {
                    Some(id) => {
                        let Some(query) =
                            self.queries.iter().find(|q| q.id.eq_ignore_ascii_case(id))
                        else {
                            bail!("Unknown queryId: {id}");
                        };
                        vec![query.id.clone()]
                    }
                    None => self.queries.iter().map(|q| q.id.clone()).collect(),
                };
                for id in &ids {
                    if let Some(at) = self.queries.iter().position(|q| q.id == *id) {
                        let query = self.queries.remove(at);
                        if query.transient {
                            self.sources.remove(&query.sink);
                        }
                    }
                }
                Ok(Executed::Terminated { ids })
            }
            Statement::Set { .. }
            | Statement::Unset { .. }
            | Statement::Show(_)
            | Statement::Describe { .. } => {
                bail!("SET, UNSET, SHOW and DESCRIBE are answered by a session, not the engine")
            }
            Statement::InsertInto { target, select } => {
                let into = self
                    .sources
                    .get(target)
                    .ok_or_else(|| anyhow!("{target} does not exist."))?;
                let from = self
                    .sources
                    .get(&select.from)
                    .ok_or_else(|| anyhow!("{} does not exist.", select.from))?;
                if into.kind == SourceKind::Table
                    || from.kind == SourceKind::Table
                    || !select.group_by.is_empty()
                {
                    bail!("INSERT INTO can only write stream query results into a stream");
                }
                let columns = output_columns(select, from, false)?;
                let same = columns.len() == into.columns.len()
                    && columns
                        .iter()
                        .zip(&into.columns)
                        .all(|(a, b)| a.name == b.name && a.key == b.key);
                if !same {
                    bail!("Incompatible schema between results and sink.");
                }
                let id = format!("INSERTQUERY_{}", self.query_count);
                self.query_count += 1;
                self.queries.push(Query {
                    id: id.clone(),
                    transient: false,
                    from: select.from.clone(),
                    sink: target.clone(),
                    select: select.clone(),
                    aggregation: None,
                    table_rows: HashMap::new(),
                });
                Ok(Executed::Started {
                    id,
                    sink: target.clone(),
                })
            }
        }
    }

    /// Registers a CREATE ... AS SELECT (or a transient SELECT into `name`) and
    /// returns its query id.
    fn create_as(
        &mut self,
        kind: SourceKind,
        name: &str,
        properties: &Properties,
        select: &Select,
        transient: bool,
    ) -> Result<String> {
        if select.window.is_some_and(|w| w.session) && select.emit == Some(EmitMode::Final) {
            bail!("EMIT FINAL is not supported for SESSION windows yet.");
        }
        let from = self
            .sources
            .get(&select.from)
            .ok_or_else(|| anyhow!("{} does not exist.", select.from))?
            .clone();
        let aggregated = !select.group_by.is_empty();
        let produces_table = aggregated || from.kind == SourceKind::Table;
        match (kind, produces_table) {
            (SourceKind::Stream, true) => bail!(
                "Invalid result type. Your SELECT query produces a TABLE. Please use CREATE TABLE AS SELECT statement instead."
            ),
            (SourceKind::Table, false) => bail!(
                "Invalid result type. Your SELECT query produces a STREAM. Please use CREATE STREAM AS SELECT statement instead."
            ),
            _ => {}
        }
        if from.kind == SourceKind::Table && select.window.is_some() {
            bail!("WINDOW clauses can only be used on streams");
        }
        let aggregation = if aggregated {
            check_grouping(name, select)?;
            if select.group_by.len() > 1 {
                bail!("GROUP BY on more than one expression is not supported yet");
            }
            let mut calls = Vec::new();
            for item in &select.items {
                if let SelectItem::Expr { expr, .. } = item {
                    aggregate_calls(expr, &mut calls)?;
                }
            }
            if let Some(having) = &select.having {
                aggregate_calls(having, &mut calls)?;
            }
            if from.kind == SourceKind::Table {
                if let Some(Expr::Function { name, .. }) = calls
                    .iter()
                    .find(|c| !matches!(c, Expr::Function { name, .. } if name == "COUNT" || name == "SUM"))
                {
                    bail!("aggregating a table with {name} is not supported yet");
                }
            }
            Some(Aggregation {
                calls,
                ..Aggregation::default()
            })
        } else {
            for item in &select.items {
                if let SelectItem::Expr { expr, .. } = item {
                    let mut calls = Vec::new();
                    aggregate_calls(expr, &mut calls)?;
                    if !calls.is_empty() {
                        bail!(
                            "Use of aggregate function {} requires a GROUP BY clause.",
                            describe_call(&calls[0])
                        );
                    }
                }
            }
            None
        };
        let columns = output_columns(select, &from, transient)?;
        if !columns.is_empty() && columns.iter().all(|c| c.key) {
            bail!("The projection contains no value columns.");
        }
        let topic = text_property(properties, "KAFKA_TOPIC")?.unwrap_or_else(|| name.to_string());
        let (key_format, value_format) = formats(properties, Some(&from))?;
        self.add(
            name,
            Source {
                kind,
                topic,
                columns,
                key_format,
                value_format,
                window: select.window.filter(|_| aggregated),
            },
        )?;
        let id = match (transient, kind) {
            (true, _) => name.to_string(),
            (false, SourceKind::Stream) => format!("CSAS_{name}_{}", self.query_count),
            (false, SourceKind::Table) => format!("CTAS_{name}_{}", self.query_count),
        };
        self.query_count += 1;
        self.queries.push(Query {
            id: id.clone(),
            transient,
            from: select.from.clone(),
            sink: name.to_string(),
            select: select.clone(),
            aggregation,
            table_rows: HashMap::new(),
        });
        Ok(id)
    }

    fn add(&mut self, name: &str, source: Source) -> Result<()> {
        if self.sources.contains_key(name) {
            bail!("Cannot add stream '{name}': A stream with the same name already exists");
        }
        self.sources.insert(name.to_string(), Arc::new(source));
        Ok(())
    }

    /// Feeds one record; returns every record the queries write because of it
    /// (including records of queries reading those sinks), in order.
    pub fn process(&mut self, record: &Record) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for q in 0..self.queries.len() {
            let from = &self.sources[&self.queries[q].from];
            if from.topic != record.topic {
                continue;
            }
            let sink = &self.sources[&self.queries[q].sink];
            if from.kind == SourceKind::Table {
                let (from, sink) = (from.clone(), sink.clone());
                for produced in table_update(&mut self.queries[q], &from, &sink, record)? {
                    let cascaded = self.process(&produced)?;
                    out.push(produced);
                    out.extend(cascaded);
                }
                continue;
            }
            let Some(row) = decode(from, record)? else {
                continue;
            };
            let query = &self.queries[q];
            if let Some(filter) = &query.select.filter {
                if eval(filter, &row, &[])? != Value::Bool(true) {
                    continue;
                }
            }
            let (from, sink) = (from.clone(), sink.clone());
            let Query {
                select,
                aggregation,
                ..
            } = &mut self.queries[q];
            let produced: Vec<Record> = match aggregation {
                None => vec![project(select, &from, &sink, &row, &[], record.timestamp)?],
                Some(aggregation) => {
                    let group = eval(&select.group_by[0], &row, &[])?;
                    if group.is_null() {
                        continue;
                    }
                    aggregation.stream_time = aggregation.stream_time.max(record.timestamp);
                    if let Some(w) = select.window.filter(|w| w.session) {
                        let produced = session_update(
                            aggregation,
                            select,
                            &from,
                            &sink,
                            &row,
                            &group,
                            w,
                            record.timestamp,
                        )?;
                        for record in produced {
                            let cascaded = self.process(&record)?;
                            out.push(record);
                            out.extend(cascaded);
                        }
                        continue;
                    }
                    let mut produced = Vec::new();
                    let final_only = select.emit == Some(EmitMode::Final);
                    for window in
                        windows_of(select.window, record.timestamp, aggregation.stream_time)
                    {
                        let id = format!("{group}@{window:?}");
                        let first = !aggregation.groups.contains_key(&id);
                        if let (true, Some((_, end)), Some(w)) = (first, window, select.window) {
                            aggregation.closing.insert((end + w.grace, id.clone()));
                        }
                        let values = aggregation
                            .groups
                            .entry(id.clone())
                            .or_insert_with(|| aggregation.calls.iter().map(initial).collect());
                        for (call, value) in aggregation.calls.iter().zip(values.iter_mut()) {
                            *value = accumulate(call, value, &row, first)?;
                        }
                        if final_only {
                            let pending = Pending {
                                group: group.clone(),
                                window,
                                row: row.clone(),
                                timestamp: record.timestamp,
                            };
                            aggregation.pending.insert(id, pending);
                            continue;
                        }
                        let values = values.clone();
                        let target = Emit {
                            group: &group,
                            id: &id,
                            window,
                            timestamp: record.timestamp,
                        };
                        produced.extend(emit(
                            aggregation,
                            select,
                            &from,
                            &sink,
                            &row,
                            &values,
                            target,
                        )?);
                    }
                    produced.extend(close_windows(aggregation, select, &from, &sink)?);
                    produced
                }
            };
            for record in produced {
                let cascaded = self.process(&record)?;
                out.push(record);
                out.extend(cascaded);
            }
        }
        Ok(out)
    }
}

/// Adds a row to its group's session: merges every session within the gap of
/// `timestamp` into one, retracting the merged ones (as tombstones stamped with
/// their end), unless the merged session would already be closed.
#[allow(clippy::too_many_arguments)]
fn session_update(
    aggregation: &mut Aggregation,
    select: &Select,
    from: &Source,
    sink: &Source,
    row: &Row,
    group: &Value,
    window: Window,
    timestamp: i64,
) -> Result<Vec<Record>> {
    let id = group.to_string();
    let sessions = aggregation.sessions.entry(id.clone()).or_default();
    // Closed sessions are gone, as from Kafka Streams' session store.
    let stream_time = aggregation.stream_time;
    sessions.retain(|(_, end, _)| *end + window.size + window.grace >= stream_time);
    let (mut merged, kept): (Vec<_>, Vec<_>) =
        std::mem::take(sessions)
            .into_iter()
            .partition(|(start, end, _)| {
                *end + window.size >= timestamp && *start - window.size <= timestamp
            });
    merged.sort_by_key(|(start, _, _)| *start);
    let start = merged
        .iter()
        .map(|s| s.0)
        .min()
        .unwrap_or(timestamp)
        .min(timestamp);
    let end = merged
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(timestamp)
        .max(timestamp);
    *sessions = kept;
    if end + window.size + window.grace < stream_time {
        sessions.extend(merged);
        return Ok(Vec::new());
    }
    let mut values: Vec<Value> = aggregation.calls.iter().map(initial).collect();
    for (_, _, old) in &merged {
        for ((call, value), old) in aggregation.calls.iter().zip(values.iter_mut()).zip(old) {
            *value = merge(call, value, old);
        }
    }
    let first = merged.is_empty();
    for (call, value) in aggregation.calls.iter().zip(values.iter_mut()) {
        *value = accumulate(call, value, row, first)?;
    }
    let mut out = Vec::new();
    for (old_start, old_end, _) in &merged {
        if aggregation
            .emitted
            .remove(&format!("{id}@{old_start},{old_end}"))
        {
            out.push(Record {
                topic: sink.topic.clone(),
                key: group.clone(),
                value: Value::Null,
                timestamp: *old_end,
                window: Some((*old_start, *old_end)),
                partition: 0,
                offset: 0,
            });
        }
    }
    let session_id = format!("{id}@{start},{end}");
    let target = Emit {
        group,
        id: &session_id,
        window: Some((start, end)),
        timestamp,
    };
    out.extend(emit(aggregation, select, from, sink, row, &values, target)?);
    aggregation
        .sessions
        .entry(id)
        .or_default()
        .push((start, end, values));
    Ok(out)
}

/// A change to a table source: the row for the record's key is replaced (or
/// deleted by a tombstone, or by no longer passing WHERE). Grouped, the old
/// row's contribution is retracted from its group before the new one is added;
/// otherwise the sink row follows the source row.
fn table_update(
    query: &mut Query,
    from: &Source,
    sink: &Source,
    record: &Record,
) -> Result<Vec<Record>> {
    let key_id = record.key.to_string();
    let mut new_row = decode(from, record)?;
    if let (Some(row), Some(filter)) = (&new_row, &query.select.filter) {
        if eval(filter, row, &[])? != Value::Bool(true) {
            new_row = None;
        }
    }
    let old_row = match &new_row {
        Some(row) => query.table_rows.insert(key_id, row.clone()),
        None => query.table_rows.remove(&key_id),
    };
    let Some(aggregation) = &mut query.aggregation else {
        return Ok(match (new_row, old_row) {
            (Some(row), _) => vec![project(
                &query.select,
                from,
                sink,
                &row,
                &[],
                record.timestamp,
            )?],
            (None, Some(_)) => vec![Record {
                topic: sink.topic.clone(),
                key: record.key.clone(),
                value: Value::Null,
                timestamp: record.timestamp,
                window: None,
                partition: 0,
                offset: 0,
            }],
            (None, None) => Vec::new(),
        });
    };
    let mut out = Vec::new();
    for (row, retract) in [(old_row, true), (new_row, false)] {
        let Some(row) = row else { continue };
        let group = eval(&query.select.group_by[0], &row, &[])?;
        if group.is_null() {
            continue;
        }
        let id = group.to_string();
        let first = !aggregation.groups.contains_key(&id);
        let mut values = aggregation
            .groups
            .remove(&id)
            .unwrap_or_else(|| aggregation.calls.iter().map(initial).collect());
        for (call, value) in aggregation.calls.iter().zip(values.iter_mut()) {
            *value = if retract {
                retracted(call, value, &row)?
            } else {
                accumulate(call, value, &row, first)?
            };
        }
        let target = Emit {
            group: &group,
            id: &id,
            window: None,
            timestamp: record.timestamp,
        };
        out.extend(emit(
            aggregation,
            &query.select,
            from,
            sink,
            &row,
            &values,
            target,
        )?);
        aggregation.groups.insert(id, values);
    }
    Ok(out)
}

/// Forgets the windows the stream time has closed; under EMIT FINAL, emits
/// each one's final row first (HAVING applied), oldest close first.
fn close_windows(
    aggregation: &mut Aggregation,
    select: &Select,
    from: &Source,
    sink: &Source,
) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    while aggregation
        .closing
        .first()
        .is_some_and(|(close, _)| *close <= aggregation.stream_time)
    {
        let Some((_, id)) = aggregation.closing.pop_first() else {
            break;
        };
        let values = aggregation.groups.remove(&id);
        aggregation.emitted.remove(&id);
        if let (Some(values), Some(last)) = (values, aggregation.pending.remove(&id)) {
            let target = Emit {
                group: &last.group,
                id: &id,
                window: last.window,
                timestamp: last.timestamp,
            };
            out.extend(emit(
                aggregation,
                select,
                from,
                sink,
                &last.row,
                &values,
                target,
            )?);
            aggregation.emitted.remove(&id);
        }
    }
    Ok(out)
}

/// Where a group's new values go.
struct Emit<'a> {
    group: &'a Value,
    /// The group (and window) as the key of `Aggregation::emitted`.
    id: &'a str,
    window: Option<(i64, i64)>,
    timestamp: i64,
}

/// A group's new values as a sink record; when HAVING now rejects a group that
/// was emitted before, a tombstone instead; else nothing.
fn emit(
    aggregation: &mut Aggregation,
    select: &Select,
    from: &Source,
    sink: &Source,
    row: &Row,
    values: &[Value],
    target: Emit<'_>,
) -> Result<Option<Record>> {
    let results: Vec<(Expr, Value)> = aggregation
        .calls
        .iter()
        .cloned()
        .zip(values.iter().cloned())
        .collect();
    let mut row = row.clone();
    if let Some((start, end)) = target.window {
        row.insert("WINDOWSTART".into(), Value::from(start));
        row.insert("WINDOWEND".into(), Value::from(end));
    }
    let kept = match &select.having {
        Some(having) => eval(having, &row, &results)? == Value::Bool(true),
        None => true,
    };
    if kept {
        aggregation.emitted.insert(target.id.to_string());
        let mut record = project(select, from, sink, &row, &results, target.timestamp)?;
        record.window = target.window;
        return Ok(Some(record));
    }
    if !aggregation.emitted.remove(target.id) {
        return Ok(None);
    }
    Ok(Some(Record {
        topic: sink.topic.clone(),
        key: target.group.clone(),
        value: Value::Null,
        timestamp: target.timestamp,
        window: target.window,
        partition: 0,
        offset: 0,
    }))
}

/// The windows a record at `timestamp` belongs to, oldest first, leaving out
/// those already closed (end + grace at or before the stream time); `[None]`
/// when the query is not windowed.
fn windows_of(window: Option<Window>, timestamp: i64, stream_time: i64) -> Vec<Option<(i64, i64)>> {
    let Some(w) = window else {
        return vec![None];
    };
    let last_start = timestamp - timestamp.rem_euclid(w.advance);
    let mut starts = Vec::new();
    let mut start = last_start;
    while start > timestamp - w.size && start >= 0 {
        starts.push(start);
        start -= w.advance;
    }
    starts
        .into_iter()
        .rev()
        .filter(|s| s + w.size + w.grace > stream_time)
        .map(|s| Some((s, s + w.size)))
        .collect()
}

fn formats(properties: &Properties, inherit: Option<&Source>) -> Result<(Format, Format)> {
    let both = text_property(properties, "FORMAT")?;
    let value = text_property(properties, "VALUE_FORMAT")?.or(both.clone());
    let key = text_property(properties, "KEY_FORMAT")?.or(both);
    let value = match (value, inherit) {
        (Some(v), _) => Format::parse(&v)?,
        (None, Some(from)) => from.value_format,
        (None, None) => bail!("Missing required property \"VALUE_FORMAT\""),
    };
    let key = match (key, inherit) {
        (Some(k), _) => Format::parse(&k)?,
        (None, Some(from)) => from.key_format,
        (None, None) => Format::Kafka,
    };
    Ok((key, value))
}

/// The sink's columns: key columns selected as they are stay keys.
/// Columns every record has besides its own.
const PSEUDO_COLUMNS: [&str; 3] = ["ROWTIME", "ROWPARTITION", "ROWOFFSET"];

/// The sink's columns. A transient SELECT may name the pseudo columns
/// unaliased (seed 03: `SELECT ROWPARTITION, ROWOFFSET, * FROM payments`).
fn output_columns(select: &Select, from: &Source, transient: bool) -> Result<Vec<ColumnDef>> {
    let mut columns = Vec::new();
    let mut generated = 0;
    for item in &select.items {
        match item {
            SelectItem::All => columns.extend(from.columns.iter().cloned()),
            SelectItem::Expr { expr, alias } => {
                let source_column = match expr {
                    Expr::Column(c) => from.columns.iter().find(|d| d.name == *c),
                    _ => None,
                };
                if let Some(alias) = alias.as_deref().filter(|a| PSEUDO_COLUMNS.contains(a)) {
                    bail!("`{alias}` is a reserved column name. You cannot use it as an alias for a column.");
                }
                if let Expr::Column(c) = expr {
                    let pseudo = PSEUDO_COLUMNS.contains(&c.as_str())
                        || (!select.group_by.is_empty() || select.window.is_some())
                            && (c == "WINDOWSTART" || c == "WINDOWEND");
                    if pseudo
                        && alias.is_none()
                        && !transient
                        && PSEUDO_COLUMNS.contains(&c.as_str())
                    {
                        bail!("Reserved column name in select: `{c}`. Please remove or alias the column.");
                    }
                    if source_column.is_none() && !pseudo {
                        bail!("SELECT column '{c}' cannot be resolved.");
                    }
                }
                let name = alias.clone().or_else(|| match expr {
                    Expr::Column(c) => Some(c.clone()),
                    _ => None,
                });
                let name = name.unwrap_or_else(|| {
                    generated += 1;
                    format!("KSQL_COL_{}", generated - 1)
                });
                // Grouped, the key is what rows are grouped by; otherwise the source's key.
                let key = if select.group_by.is_empty() {
                    source_column.is_some_and(|c| c.key)
                } else {
                    select.group_by.contains(expr)
                };
                columns.push(ColumnDef {
                    name,
                    ty: expression_type(expr, from),
                    key,
                });
            }
        }
    }
    Ok(columns)
}

/// The SQL type of a selected expression, as far as DESCRIBE and display need it.
fn expression_type(expr: &Expr, from: &Source) -> SqlType {
    match expr {
        Expr::Column(c) => match c.as_str() {
            "ROWTIME" | "ROWOFFSET" | "WINDOWSTART" | "WINDOWEND" => SqlType::BigInt,
            "ROWPARTITION" => SqlType::Int,
            _ => from
                .columns
                .iter()
                .find(|d| d.name == *c)
                .map_or(SqlType::String, |d| d.ty),
        },
        Expr::Function { name, args, .. } => match name.as_str() {
            "FROM_UNIXTIME" => SqlType::Timestamp,
            "COUNT" => SqlType::BigInt,
            "SUM" | "MIN" | "MAX" | "ABS" | "EARLIEST_BY_OFFSET" | "LATEST_BY_OFFSET" => args
                .first()
                .map_or(SqlType::BigInt, |a| expression_type(a, from)),
            _ => SqlType::String,
        },
        Expr::Cast { ty, .. } => *ty,
        _ => SqlType::String,
    }
}

fn kind_word(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "stream",
        SourceKind::Table => "table",
    }
}

fn project(
    select: &Select,
    from: &Source,
    sink: &Source,
    row: &Row,
    aggregates: &[(Expr, Value)],
    timestamp: i64,
) -> Result<Record> {
    let mut values = Vec::new();
    for item in &select.items {
        match item {
            SelectItem::All => {
                for column in &from.columns {
                    values.push(row.get(&column.name).cloned().unwrap_or(Value::Null));
                }
            }
            SelectItem::Expr { expr, .. } => values.push(eval(expr, row, aggregates)?),
        }
    }
    let mut key = Value::Null;
    let mut object = Map::new();
    let mut delimited = Vec::new();
    for (column, value) in sink.columns.iter().zip(values) {
        if column.key {
            key = value;
            continue;
        }
        delimited.push(delimited_text(&value));
        object.insert(column.name.clone(), value);
    }
    let value = match sink.value_format {
        Format::Json => Value::Object(object),
        Format::Delimited | Format::Kafka => Value::String(delimited.join(",")),
    };
    Ok(Record {
        topic: sink.topic.clone(),
        key,
        value,
        timestamp,
        window: None,
        partition: 0,
        offset: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    #[test]
    fn a_filtering_projection_over_delimited_values() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM TEST (K STRING KEY, ID bigint, NAME varchar) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE STREAM S1 AS SELECT K, name, id * 2 AS twice FROM test WHERE id > 100;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let record = |key: &str, value: &str| Record {
            topic: "t".into(),
            key: Value::from(key),
            value: Value::from(value),
            timestamp: 7,
            window: None,
            partition: 0,
            offset: 0,
        };
        assert!(engine.process(&record("0", "0,zero")).unwrap().is_empty());
        let out = engine.process(&record("101", "101,\"a,b\"")).unwrap();
        assert_eq!(
            out,
            vec![Record {
                topic: "S1".into(),
                key: Value::from("101"),
                value: Value::from("\"a,b\",202"),
                timestamp: 7,
                window: None,
                partition: 0,
                offset: 0,
            }]
        );
    }

    #[test]
    fn grouped_counts_and_sums_update_per_record_and_having_retracts() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM TEST (ID BIGINT KEY, NAME varchar, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE T1 AS SELECT id, count(*), sum(value) AS total FROM test GROUP BY id HAVING sum(value) > 100;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let mut feed = |key: i64, value: &str| {
            engine
                .process(&Record {
                    topic: "t".into(),
                    key: Value::from(key),
                    value: Value::from(value),
                    timestamp: 0,
                    window: None,
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
        };
        assert!(
            feed(0, "zero,0").is_empty(),
            "never above 100: nothing to retract"
        );
        let above = feed(1, "one,101");
        assert_eq!(
            (above[0].key.clone(), above[0].value.clone()),
            (Value::from(1), Value::from("1,101"))
        );
        let retracted = feed(1, "one,-5");
        assert_eq!(
            retracted[0].value,
            Value::Null,
            "a failing HAVING emits a tombstone"
        );
        let statements =
            parse("CREATE STREAM S AS SELECT id, count(*) FROM test GROUP BY id;").unwrap();
        let error = engine.execute(&statements[0]).unwrap_err().to_string();
        assert!(
            error.starts_with("Invalid result type. Your SELECT query produces a TABLE."),
            "{error}"
        );
    }

    #[test]
    fn tumbling_windows_key_by_window_and_drop_closed_ones() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM TEST (ID BIGINT KEY, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE S2 AS SELECT ID, max(value) FROM test WINDOW TUMBLING (SIZE 30 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY id;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let mut feed = |value: &str, timestamp: i64| {
            engine
                .process(&Record {
                    topic: "t".into(),
                    key: Value::from(0),
                    value: Value::from(value),
                    timestamp,
                    window: None,
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
        };
        assert_eq!(feed("5", 10_000)[0].window, Some((0, 30_000)));
        assert_eq!(feed("1", 35_000)[0].window, Some((30_000, 60_000)));
        let late_but_open = feed("7", 29_000);
        assert_eq!(
            (late_but_open[0].value.clone(), late_but_open[0].window),
            (Value::from("7"), Some((0, 30_000)))
        );
        feed("1", 45_000);
        assert!(
            feed("9", 1_000).is_empty(),
            "window [0, 30s) closed at 40s of stream time"
        );
    }

    #[test]
    fn pseudo_columns_are_readable_and_reserved() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM I (K STRING KEY, V INT) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM O AS SELECT K, ROWPARTITION AS P, ROWOFFSET + 1 AS NEXT FROM I;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let out = engine
            .process(&Record {
                topic: "t".into(),
                key: Value::from("k"),
                value: serde_json::json!({"V": 1}),
                timestamp: 0,
                window: None,
                partition: 2,
                offset: 41,
            })
            .unwrap();
        assert_eq!(out[0].value, serde_json::json!({"P": 2, "NEXT": 42}));
        for (sql, error) in [
            (
                "CREATE STREAM X (ROWOFFSET INT) WITH (kafka_topic='x', value_format='JSON');",
                "'ROWOFFSET' is a reserved column name",
            ),
            (
                "CREATE STREAM Y AS SELECT V AS ROWTIME FROM I;",
                "`ROWTIME` is a reserved column name",
            ),
            (
                "CREATE STREAM Z AS SELECT ROWPARTITION FROM I;",
                "Reserved column name in select: `ROWPARTITION`",
            ),
        ] {
            let statement = &parse(sql).unwrap()[0];
            let message = engine.execute(statement).unwrap_err().to_string();
            assert!(message.starts_with(error), "{message}");
        }
    }

    #[test]
    fn case_cast_and_like() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM I (K STRING KEY, V INT, N STRING) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM O AS SELECT K, CASE WHEN V < 10 THEN 'small' WHEN V < 100 THEN 'medium' ELSE 'large' END AS SIZE,
               CAST(V AS STRING) AS S, CAST(V AS DOUBLE) / 4 AS Q, N LIKE 'a_c%' AS M FROM I;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let out = engine
            .process(&Record {
                topic: "t".into(),
                key: Value::from("k"),
                value: serde_json::json!({"V": 50, "N": "abcdef"}),
                timestamp: 0,
                window: None,
                partition: 0,
                offset: 0,
            })
            .unwrap();
        assert_eq!(
            out[0].value,
            serde_json::json!({"SIZE": "medium", "S": "50", "Q": 12.5, "M": true})
        );
    }

    #[test]
    fn sessions_merge_and_retract_what_they_replace() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE STREAM TEST (ID BIGINT KEY, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE S2 AS SELECT ID, count(*) FROM test WINDOW SESSION (30 SECONDS) GROUP BY id;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let mut feed = |timestamp: i64| {
            engine
                .process(&Record {
                    topic: "t".into(),
                    key: Value::from(0),
                    value: Value::from("1"),
                    timestamp,
                    window: None,
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
                .into_iter()
                .map(|r| (r.value, r.window, r.timestamp))
                .collect::<Vec<_>>()
        };
        assert_eq!(feed(0), [(Value::from("1"), Some((0, 0)), 0)]);
        assert_eq!(
            feed(100_000),
            [(Value::from("1"), Some((100_000, 100_000)), 100_000)]
        );
        assert_eq!(
            feed(20_000),
            [
                (Value::Null, Some((0, 0)), 0),
                (Value::from("2"), Some((0, 20_000)), 20_000)
            ],
            "the old session is retracted, stamped with its end"
        );
    }

    #[test]
    fn table_sources_retract_the_old_row_before_adding_the_new() {
        let mut engine = Engine::default();
        for s in parse(
            "CREATE TABLE INPUT (ID STRING PRIMARY KEY, NAME STRING) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE OUTPUT AS SELECT NAME, COUNT(1) FROM INPUT GROUP BY NAME;",
        )
        .unwrap()
        {
            engine.execute(&s).unwrap();
        }
        let mut feed = |key: &str, value: Value| {
            engine
                .process(&Record {
                    topic: "t".into(),
                    key: Value::from(key),
                    value,
                    timestamp: 0,
                    window: None,
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
                .into_iter()
                .map(|r| (r.key, r.value))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            feed("0", Value::from("bob")),
            [(Value::from("bob"), Value::from("1"))]
        );
        assert_eq!(
            feed("0", Value::from("john")),
            [
                (Value::from("bob"), Value::from("0")),
                (Value::from("john"), Value::from("1"))
            ]
        );
        assert_eq!(
            feed("0", Value::Null),
            [(Value::from("john"), Value::from("0"))],
            "a tombstone retracts"
        );
        let stream_from_table = parse("CREATE STREAM S AS SELECT * FROM INPUT;").unwrap();
        assert!(engine
            .execute(&stream_from_table[0])
            .unwrap_err()
            .to_string()
            .contains("produces a TABLE"));
    }

    #[test]
    fn grouping_rules_speak_ksqldb() {
        let mut engine = Engine::default();
        let create = parse("CREATE STREAM I (K STRING KEY, A INT, B INT) WITH (kafka_topic='t', value_format='JSON');").unwrap();
        engine.execute(&create[0]).unwrap();
        for (sql, error) in [
            ("CREATE TABLE O AS SELECT A, COUNT(*) FROM I GROUP BY SUM(B);", "GROUP BY does not support aggregate functions: SUM is an aggregate function."),
            ("CREATE TABLE O AS SELECT COUNT(*) AS C FROM I GROUP BY A;", "The query used to build `O` must include the grouping expression A in its projection"),
            ("CREATE TABLE O AS SELECT A, B, COUNT(*) FROM I GROUP BY A;", "Non-aggregate SELECT expression(s) not part of GROUP BY: B"),
            ("CREATE TABLE O AS SELECT A FROM I GROUP BY A;", "The projection contains no value columns."),
        ] {
            let message = engine.execute(&parse(sql).unwrap()[0]).unwrap_err().to_string();
            assert!(message.starts_with(error), "{sql}: {message}");
        }
    }
}

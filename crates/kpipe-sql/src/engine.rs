//! Runs statements over topics. A source is a topic with columns and formats;
//! a persistent query (CREATE STREAM AS SELECT) turns every record of its
//! source into a record of its sink, in offset order. The engine only sees
//! `Record`s, so the QTT runner's in-memory topics and a live broker feed it alike.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use crate::parser::{
    BinaryOp, ColumnDef, Expr, Properties, Select, SelectItem, SourceKind, SqlType, Statement,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Delimited,
    Kafka,
}

impl Format {
    fn parse(name: &str) -> Result<Format> {
        match name.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Format::Json),
            "DELIMITED" => Ok(Format::Delimited),
            "KAFKA" => Ok(Format::Kafka),
            other => bail!("format {other} is not supported"),
        }
    }
}

#[derive(Debug, Clone)]
struct Source {
    kind: SourceKind,
    topic: String,
    columns: Vec<ColumnDef>,
    key_format: Format,
    value_format: Format,
}

/// A running CREATE ... AS SELECT.
#[derive(Debug, Clone)]
struct Query {
    from: String,
    sink: String,
    select: Select,
    /// For GROUP BY: the aggregate calls and their state per group.
    aggregation: Option<Aggregation>,
    /// A table source's current rows (those passing WHERE), by key, so an
    /// update can retract what the old row contributed.
    table_rows: HashMap<String, Row>,
}

const AGGREGATES: [&str; 8] = [
    "TOPK",
    "TOPKDISTINCT",
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "EARLIEST_BY_OFFSET",
    "LATEST_BY_OFFSET",
];

fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function { name, .. } if AGGREGATES.contains(&name.as_str()))
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
    /// Session windows: per group, its sessions `(start, end, values)`.
    sessions: HashMap<String, Vec<(i64, i64, Vec<Value>)>>,
}

/// Two sessions' values of one aggregate call, `older` first, merged into one.
fn merge(call: &Expr, older: &Value, newer: &Value) -> Value {
    let Expr::Function { name, .. } = call else {
        unreachable!("only calls are merged")
    };
    match name.as_str() {
        _ if older.is_null() => newer.clone(),
        _ if newer.is_null() => older.clone(),
        "COUNT" | "SUM" => arithmetic(BinaryOp::Add, older, newer),
        "MIN" if compare(newer, older).is_some_and(|o| o.is_lt()) => newer.clone(),
        "MAX" if compare(newer, older).is_some_and(|o| o.is_gt()) => newer.clone(),
        "MIN" | "MAX" | "EARLIEST_BY_OFFSET" => older.clone(),
        _ => newer.clone(),
    }
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

/// Collects the aggregate calls in `expr`, and refuses unknown functions.
fn aggregate_calls(expr: &Expr, calls: &mut Vec<Expr>) -> Result<()> {
    match expr {
        Expr::Function { name, args, .. } => {
            if is_aggregate(expr) {
                if !calls.contains(expr) {
                    calls.push(expr.clone());
                }
                return Ok(());
            }
            if !SCALARS.contains(&name.as_str()) {
                bail!("Can't find any functions with the name '{name}'");
            }
            args.iter().try_for_each(|a| aggregate_calls(a, calls))
        }
        Expr::Not(e) | Expr::Negate(e) | Expr::IsNull { expr: e, .. } => aggregate_calls(e, calls),
        Expr::Binary(_, a, b) => {
            aggregate_calls(a, calls)?;
            aggregate_calls(b, calls)
        }
        Expr::Between {
            expr, low, high, ..
        } => {
            aggregate_calls(expr, calls)?;
            aggregate_calls(low, calls)?;
            aggregate_calls(high, calls)
        }
        Expr::In { expr, list, .. } => {
            aggregate_calls(expr, calls)?;
            list.iter().try_for_each(|e| aggregate_calls(e, calls))
        }
        Expr::Case {
            operand,
            branches,
            otherwise,
        } => {
            for e in operand.iter().chain(otherwise.iter()) {
                aggregate_calls(e, calls)?;
            }
            branches.iter().try_for_each(|(w, t)| {
                aggregate_calls(w, calls)?;
                aggregate_calls(t, calls)
            })
        }
        Expr::Cast { expr, .. } => aggregate_calls(expr, calls),
        Expr::Like { expr, pattern, .. } => {
            aggregate_calls(expr, calls)?;
            aggregate_calls(pattern, calls)
        }
        Expr::Column(_) | Expr::Literal(_) => Ok(()),
    }
}

/// An aggregate call's name, arguments and first argument's value for `row`
/// (`COUNT(*)` and `COUNT()` count every row: their argument is `true`).
fn call_argument<'a>(call: &'a Expr, row: &Row) -> Result<(&'a str, &'a [Expr], Value)> {
    let Expr::Function { name, args, star } = call else {
        unreachable!("only calls aggregate")
    };
    let arg = match args.first() {
        Some(a) if !*star => eval(a, row, &[])?,
        _ => Value::Bool(true),
    };
    Ok((name, args, arg))
}

/// The next value of an aggregate call after `row`.
fn accumulate(call: &Expr, current: &Value, row: &Row, first: bool) -> Result<Value> {
    let (name, args, arg) = call_argument(call, row)?;
    Ok(match name {
        "COUNT" => Value::from(current.as_i64().unwrap_or(0) + i64::from(!arg.is_null())),
        "SUM" if arg.is_null() => current.clone(),
        "SUM" if current.is_null() => arg,
        "SUM" => arithmetic(BinaryOp::Add, current, &arg),
        "MIN" | "MAX" if arg.is_null() => current.clone(),
        "MIN" | "MAX" if current.is_null() => arg,
        "MIN" => {
            if compare(&arg, current).is_some_and(|o| o.is_lt()) {
                arg
            } else {
                current.clone()
            }
        }
        "MAX" => {
            if compare(&arg, current).is_some_and(|o| o.is_gt()) {
                arg
            } else {
                current.clone()
            }
        }
        "EARLIEST_BY_OFFSET" if first || current.is_null() => arg,
        "EARLIEST_BY_OFFSET" => current.clone(),
        "LATEST_BY_OFFSET" if arg.is_null() => current.clone(),
        "TOPK" | "TOPKDISTINCT" => {
            let k = match args.get(1) {
                Some(Expr::Literal(k)) => k.as_u64().unwrap_or(0) as usize,
                _ => bail!("{name} takes a column and a number: {name}(col, k)"),
            };
            let mut top = current.as_array().cloned().unwrap_or_default();
            let repeated = name == "TOPKDISTINCT" && top.contains(&arg);
            if !arg.is_null() && !repeated {
                top.push(arg);
            }
            // Highest first; ties keep their arrival order.
            top.sort_by(|a, b| compare(b, a).unwrap_or(std::cmp::Ordering::Equal));
            top.truncate(k);
            Value::Array(top)
        }
        _ => arg,
    })
}

/// What an aggregate reports before its first value.
fn initial(call: &Expr) -> Value {
    match call {
        Expr::Function { name, .. } if name == "COUNT" => Value::from(0),
        _ => Value::Null,
    }
}

#[derive(Default)]
pub struct Engine {
    sources: HashMap<String, Source>,
    queries: Vec<Query>,
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
    pub fn execute(&mut self, statement: &Statement) -> Result<()> {
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
                    },
                )
            }
            Statement::CreateAs {
                kind,
                name,
                properties,
                select,
            } => {
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
                let columns = output_columns(select, &from)?;
                if !columns.is_empty() && columns.iter().all(|c| c.key) {
                    bail!("The projection contains no value columns.");
                }
                let topic =
                    text_property(properties, "KAFKA_TOPIC")?.unwrap_or_else(|| name.clone());
                let (key_format, value_format) = formats(properties, Some(&from))?;
                self.add(
                    name,
                    Source {
                        kind: *kind,
                        topic,
                        columns,
                        key_format,
                        value_format,
                    },
                )?;
                self.queries.push(Query {
                    from: select.from.clone(),
                    sink: name.clone(),
                    select: select.clone(),
                    aggregation,
                    table_rows: HashMap::new(),
                });
                Ok(())
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
                let columns = output_columns(select, from)?;
                let same = columns.len() == into.columns.len()
                    && columns
                        .iter()
                        .zip(&into.columns)
                        .all(|(a, b)| a.name == b.name && a.key == b.key);
                if !same {
                    bail!("Incompatible schema between results and sink.");
                }
                self.queries.push(Query {
                    from: select.from.clone(),
                    sink: target.clone(),
                    select: select.clone(),
                    aggregation: None,
                    table_rows: HashMap::new(),
                });
                Ok(())
            }
        }
    }

    fn add(&mut self, name: &str, source: Source) -> Result<()> {
        if self.sources.contains_key(name) {
            bail!("Cannot add stream '{name}': A stream with the same name already exists");
        }
        self.sources.insert(name.to_string(), source);
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
                    for window in
                        windows_of(select.window, record.timestamp, aggregation.stream_time)
                    {
                        let id = format!("{group}@{window:?}");
                        let first = !aggregation.groups.contains_key(&id);
                        let values = aggregation
                            .groups
                            .entry(id.clone())
                            .or_insert_with(|| aggregation.calls.iter().map(initial).collect());
                        for (call, value) in aggregation.calls.iter().zip(values.iter_mut()) {
                            *value = accumulate(call, value, &row, first)?;
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

/// COUNT or SUM without `row`'s contribution (the only aggregates a table update can undo).
fn retracted(call: &Expr, current: &Value, row: &Row) -> Result<Value> {
    let (name, _, arg) = call_argument(call, row)?;
    Ok(match name {
        "COUNT" => Value::from(current.as_i64().unwrap_or(0) - i64::from(!arg.is_null())),
        _ if arg.is_null() => current.clone(),
        _ => arithmetic(BinaryOp::Sub, current, &arg),
    })
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

fn describe_call(call: &Expr) -> String {
    match call {
        Expr::Function { name, .. } => name.clone(),
        _ => String::new(),
    }
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

fn output_columns(select: &Select, from: &Source) -> Result<Vec<ColumnDef>> {
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
                    if pseudo && alias.is_none() && PSEUDO_COLUMNS.contains(&c.as_str()) {
                        bail!("Reserved column name in select: `{c}`. Please remove or alias the column.");
                    }
                    if source_column.is_none() && !pseudo {
                        bail!("SELECT column '{c}' cannot be resolved.");
                    }
                }
                let name = alias
                    .clone()
                    .or_else(|| source_column.map(|c| c.name.clone()));
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
                    ty: source_column.map_or(SqlType::String, |c| c.ty),
                    key,
                });
            }
        }
    }
    Ok(columns)
}

type Row = HashMap<String, Value>;

/// The record's columns, or None for a tombstone.
fn decode(source: &Source, record: &Record) -> Result<Option<Row>> {
    if record.value.is_null() {
        return Ok(None);
    }
    let mut row = Row::new();
    let keys: Vec<&ColumnDef> = source.columns.iter().filter(|c| c.key).collect();
    if let [key] = keys.as_slice() {
        row.insert(key.name.clone(), coerce(&record.key, key.ty));
    }
    let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
    match source.value_format {
        Format::Json => {
            let Value::Object(object) = &record.value else {
                return Ok(None);
            };
            for column in &values {
                let field = object.get(&column.name).or_else(|| {
                    object
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&column.name))
                        .map(|(_, v)| v)
                });
                row.insert(
                    column.name.clone(),
                    field.map_or(Value::Null, |v| coerce(v, column.ty)),
                );
            }
        }
        Format::Delimited | Format::Kafka => {
            let text = match &record.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let fields = split_delimited(&text);
            if fields.len() != values.len() {
                return Ok(None);
            }
            for (column, field) in values.iter().zip(fields) {
                let value = if field.is_empty() {
                    Value::Null
                } else {
                    coerce(&Value::String(field), column.ty)
                };
                row.insert(column.name.clone(), value);
            }
        }
    }
    row.insert("ROWTIME".into(), Value::from(record.timestamp));
    row.insert("ROWPARTITION".into(), Value::from(record.partition));
    row.insert("ROWOFFSET".into(), Value::from(record.offset));
    Ok(Some(row))
}

/// DELIMITED fields: commas separate, double quotes quote (`""` is a quote).
fn split_delimited(text: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                fields.last_mut().expect("a field").push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("a field").push(c),
        }
    }
    fields
}

fn coerce(value: &Value, ty: SqlType) -> Value {
    match (ty, value) {
        (_, Value::Null) => Value::Null,
        (SqlType::Int | SqlType::BigInt, Value::Number(n)) => {
            n.as_i64().map_or(Value::Null, Value::from)
        }
        (SqlType::Int | SqlType::BigInt, Value::String(s)) => {
            s.trim().parse::<i64>().map_or(Value::Null, Value::from)
        }
        (SqlType::Double, Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        (SqlType::Double, Value::String(s)) => {
            s.trim().parse::<f64>().map_or(Value::Null, Value::from)
        }
        (SqlType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (SqlType::Boolean, Value::String(s)) => Value::Bool(s.eq_ignore_ascii_case("true")),
        (SqlType::String, Value::String(s)) => Value::String(s.clone()),
        (SqlType::String, other) => Value::String(other.to_string()),
        _ => Value::Null,
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

fn delimited_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if s.contains([',', '"', '\n']) => {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// SQL's three-valued logic: null in, null out (AND/OR excepted). Aggregate
/// calls take their current values from `aggregates`.
fn eval(expr: &Expr, row: &Row, aggregates: &[(Expr, Value)]) -> Result<Value> {
    let eval = |e: &Expr| eval(e, row, aggregates);
    Ok(match expr {
        Expr::Function { name, args, .. } if !is_aggregate(expr) => {
            let values = args.iter().map(eval).collect::<Result<Vec<_>>>()?;
            scalar(name, &values)?
        }
        Expr::Function { name, .. } => aggregates
            .iter()
            .find(|(call, _)| call == expr)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| anyhow!("aggregate {name} needs a GROUP BY"))?,
        Expr::Column(name) => row
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("column '{name}' cannot be resolved."))?,
        Expr::Literal(v) => v.clone(),
        Expr::Not(inner) => match eval(inner)? {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        Expr::Negate(inner) => match eval(inner)? {
            Value::Number(n) if n.is_i64() => Value::from(-n.as_i64().unwrap_or_default()),
            Value::Number(n) => n.as_f64().map_or(Value::Null, |f| Value::from(-f)),
            _ => Value::Null,
        },
        Expr::IsNull { expr, negated } => Value::Bool(eval(expr)?.is_null() != *negated),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let v = eval(expr)?;
            let within = compare(&v, &eval(low)?).zip(compare(&v, &eval(high)?));
            match within {
                Some((lo, hi)) => Value::Bool((lo.is_ge() && hi.is_le()) != *negated),
                None => Value::Null,
            }
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let v = eval(expr)?;
            if v.is_null() {
                return Ok(Value::Null);
            }
            let mut found = false;
            for item in list {
                found |= compare(&v, &eval(item)?).is_some_and(|o| o.is_eq());
            }
            Value::Bool(found != *negated)
        }
        Expr::Binary(op, left, right) => binary(*op, eval(left)?, eval(right)?),
        Expr::Case {
            operand,
            branches,
            otherwise,
        } => {
            let subject = operand.as_deref().map(&eval).transpose()?;
            for (when, then) in branches {
                let matched = match &subject {
                    Some(v) => compare(v, &eval(when)?).is_some_and(|o| o.is_eq()),
                    None => eval(when)? == Value::Bool(true),
                };
                if matched {
                    return eval(then);
                }
            }
            match otherwise {
                Some(e) => eval(e)?,
                None => Value::Null,
            }
        }
        Expr::Cast { expr, ty } => cast(&eval(expr)?, *ty),
        Expr::Like {
            expr,
            pattern,
            negated,
        } => match (eval(expr)?, eval(pattern)?) {
            (Value::String(text), Value::String(pattern)) => {
                let chars: Vec<char> = text.chars().collect();
                let pattern: Vec<char> = pattern.chars().collect();
                Value::Bool(like(&chars, &pattern) != *negated)
            }
            _ => Value::Null,
        },
    })
}

/// SQL LIKE: `%` any run, `_` any one character.
fn like(text: &[char], pattern: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|i| like(&text[i..], rest)),
        Some(('_', rest)) => !text.is_empty() && like(&text[1..], rest),
        Some((c, rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

/// CAST(value AS ty); a value that does not convert becomes null.
fn cast(value: &Value, ty: SqlType) -> Value {
    match (ty, value) {
        (SqlType::Int | SqlType::BigInt, Value::Number(n)) if !n.is_i64() => n
            .as_f64()
            .map_or(Value::Null, |f| Value::from(f.trunc() as i64)),
        (SqlType::Double, Value::Number(n)) => n.as_f64().map_or(Value::Null, double),
        (SqlType::String, Value::Number(n)) if !n.is_i64() => {
            // Java prints doubles with a fractional part: 1.0, not 1.
            let f = n.as_f64().unwrap_or_default();
            Value::from(if f.fract() == 0.0 && f.abs() < 1e7 {
                format!("{f:.1}")
            } else {
                n.to_string()
            })
        }
        _ => coerce(value, ty),
    }
}

/// The scalar functions known so far.
const SCALARS: [&str; 31] = [
    "ABS",
    "CONCAT",
    "COALESCE",
    "IFNULL",
    "INITCAP",
    "LCASE",
    "LEN",
    "ROUND",
    "SUBSTRING",
    "TRIM",
    "UCASE",
    "AS_VALUE",
    "EXP",
    "LN",
    "SQRT",
    "CBRT",
    "SIGN",
    "CEIL",
    "FLOOR",
    "SIN",
    "COS",
    "TAN",
    "ASIN",
    "ACOS",
    "ATAN",
    "SINH",
    "COSH",
    "TANH",
    "DEGREES",
    "RADIANS",
    "POWER",
];

/// A DOUBLE result; NaN and the infinities are written as ksqlDB's JSON writes them.
fn double(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or_else(
        || {
            Value::from(if f.is_nan() {
                "NaN"
            } else if f > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            })
        },
        Value::Number,
    )
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A scalar function of ksqlDB's library; null in, null out unless it says otherwise.
fn scalar(name: &str, args: &[Value]) -> Result<Value> {
    if !SCALARS.contains(&name) {
        bail!("Can't find any functions with the name '{name}'");
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
    Ok(match name {
        "AS_VALUE" => arg(0),
        "IFNULL" => {
            if arg(0).is_null() {
                arg(1)
            } else {
                arg(0)
            }
        }
        "COALESCE" => args
            .iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null),
        "CONCAT" => {
            if args.iter().all(Value::is_null) {
                Value::Null
            } else {
                Value::String(args.iter().filter_map(text).collect())
            }
        }
        _ if arg(0).is_null() => Value::Null,
        "ABS" => match arg(0) {
            Value::Number(n) if n.is_i64() => Value::from(n.as_i64().unwrap_or_default().abs()),
            Value::Number(n) => n.as_f64().map_or(Value::Null, |f| Value::from(f.abs())),
            _ => Value::Null,
        },
        "LEN" => Value::from(text(&arg(0)).map_or(0, |s| s.chars().count())),
        "SIGN" => arg(0).as_f64().map_or(Value::Null, |f| {
            Value::from(if f > 0.0 {
                1
            } else if f < 0.0 {
                -1
            } else {
                0
            })
        }),
        "CEIL" | "FLOOR" if arg(0).is_i64() => arg(0),
        "POWER" => match (arg(0).as_f64(), arg(1).as_f64()) {
            (Some(x), Some(y)) => double(x.powf(y)),
            _ => Value::Null,
        },
        "EXP" | "LN" | "SQRT" | "CBRT" | "CEIL" | "FLOOR" | "SIN" | "COS" | "TAN" | "ASIN"
        | "ACOS" | "ATAN" | "SINH" | "COSH" | "TANH" | "DEGREES" | "RADIANS" => {
            let Some(x) = arg(0).as_f64() else {
                return Ok(Value::Null);
            };
            double(match name {
                "EXP" => x.exp(),
                "LN" => x.ln(),
                "SQRT" => x.sqrt(),
                "CBRT" => x.cbrt(),
                "CEIL" => x.ceil(),
                "FLOOR" => x.floor(),
                "SIN" => x.sin(),
                "COS" => x.cos(),
                "TAN" => x.tan(),
                "ASIN" => x.asin(),
                "ACOS" => x.acos(),
                "ATAN" => x.atan(),
                "SINH" => x.sinh(),
                "COSH" => x.cosh(),
                "TANH" => x.tanh(),
                "DEGREES" => x.to_degrees(),
                _ => x.to_radians(),
            })
        }
        "UCASE" => Value::from(text(&arg(0)).unwrap_or_default().to_uppercase()),
        "LCASE" => Value::from(text(&arg(0)).unwrap_or_default().to_lowercase()),
        "TRIM" => Value::from(text(&arg(0)).unwrap_or_default().trim()),
        "INITCAP" => {
            let s = text(&arg(0)).unwrap_or_default();
            let mut out = String::with_capacity(s.len());
            let mut start = true;
            for c in s.chars() {
                if start {
                    out.extend(c.to_uppercase());
                } else {
                    out.extend(c.to_lowercase());
                }
                start = c.is_whitespace();
            }
            Value::from(out)
        }
        "SUBSTRING" => {
            let chars: Vec<char> = text(&arg(0)).unwrap_or_default().chars().collect();
            let Some(position) = arg(1).as_i64() else {
                return Ok(Value::Null);
            };
            let len = chars.len() as i64;
            // 1-based; negative counts from the end.
            let start = if position < 0 {
                (len + position).max(0)
            } else {
                (position - 1).max(0)
            };
            let end = match args.get(2) {
                Some(count) => match count.as_i64() {
                    Some(count) => (start + count.max(0)).min(len),
                    None => return Ok(Value::Null),
                },
                None => len,
            };
            let start = start.min(len);
            Value::from(
                chars[start as usize..end.max(start) as usize]
                    .iter()
                    .collect::<String>(),
            )
        }
        "ROUND" => match (arg(0), args.get(1).and_then(Value::as_i64)) {
            (Value::Number(n), _) if n.is_i64() => Value::Number(n),
            (Value::Number(n), None) => n
                .as_f64()
                .map_or(Value::Null, |f| Value::from(round_half_up(f, 0) as i64)),
            (Value::Number(n), Some(places)) => n
                .as_f64()
                .and_then(|f| serde_json::Number::from_f64(round_half_up(f, places)))
                .map_or(Value::Null, Value::Number),
            _ => Value::Null,
        },
        _ => unreachable!("every name in SCALARS has an arm"),
    })
}

/// Rounds half away from zero at `places` decimals, as ksqlDB's ROUND does.
fn round_half_up(f: f64, places: i64) -> f64 {
    let scale = 10f64.powi(places as i32);
    (f * scale).round() / scale
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => as_f64(a)?.partial_cmp(&as_f64(b)?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn binary(op: BinaryOp, a: Value, b: Value) -> Value {
    use BinaryOp as B;
    match op {
        B::And => match (a, b) {
            (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
            (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        B::Or => match (a, b) {
            (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
            (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => match compare(&a, &b) {
            Some(o) => Value::Bool(match op {
                B::Eq => o.is_eq(),
                B::NotEq => o.is_ne(),
                B::Lt => o.is_lt(),
                B::LtEq => o.is_le(),
                B::Gt => o.is_gt(),
                _ => o.is_ge(),
            }),
            None => Value::Null,
        },
        B::Add if a.is_string() || b.is_string() => match (a, b) {
            (Value::String(x), Value::String(y)) => Value::String(x + &y),
            _ => Value::Null,
        },
        B::Add | B::Sub | B::Mul | B::Div | B::Rem => arithmetic(op, &a, &b),
    }
}

fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
    use BinaryOp as B;
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return match op {
            B::Add => x.checked_add(y).map_or(Value::Null, Value::from),
            B::Sub => x.checked_sub(y).map_or(Value::Null, Value::from),
            B::Mul => x.checked_mul(y).map_or(Value::Null, Value::from),
            B::Div => x.checked_div(y).map_or(Value::Null, Value::from),
            _ => x.checked_rem(y).map_or(Value::Null, Value::from),
        };
    }
    let (Some(x), Some(y)) = (a.as_f64(), b.as_f64()) else {
        return Value::Null;
    };
    let r = match op {
        B::Add => x + y,
        B::Sub => x - y,
        B::Mul => x * y,
        B::Div => x / y,
        _ => x % y,
    };
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
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
    fn scalar_functions_follow_ksqldb() {
        let v = |s: &str| Value::from(s);
        assert_eq!(
            scalar("SUBSTRING", &[v("hello"), Value::from(2), Value::from(3)]).unwrap(),
            v("ell")
        );
        assert_eq!(
            scalar("SUBSTRING", &[v("hello"), Value::from(-3)]).unwrap(),
            v("llo")
        );
        assert_eq!(
            scalar("ROUND", &[Value::from(2.5)]).unwrap(),
            Value::from(3)
        );
        assert_eq!(
            scalar("ROUND", &[Value::from(1.234), Value::from(2)]).unwrap(),
            Value::from(1.23)
        );
        assert_eq!(
            scalar("INITCAP", &[v("the QUICK fox")]).unwrap(),
            v("The Quick Fox")
        );
        assert_eq!(scalar("IFNULL", &[Value::Null, v("x")]).unwrap(), v("x"));
        assert_eq!(scalar("LEN", &[Value::Null]).unwrap(), Value::Null);
        assert!(scalar("WONT_FIND_ME", &[]).is_err());
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

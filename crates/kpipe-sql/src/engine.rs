//! Runs statements over topics. A source is a topic with columns and formats;
//! a persistent query (CREATE STREAM AS SELECT) turns every record of its
//! source into a record of its sink, in offset order. The engine only sees
//! `Record`s, so the QTT runner's in-memory topics and a live broker feed it alike.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value;

use crate::aggregate::{
    accumulate, aggregate_calls, initial, merge, result, retracted, AggregateSettings,
    COMPLEX_STATE, RETRACTABLE,
};
use crate::avro::{self, SchemaRegistry};
use crate::check::{check_condition, check_selected};
use crate::eval::{eval, Row};
use crate::format::{decode, decode_key, decode_reusing, encode_key, encode_value, Format};
use crate::join::{join_update, resolve, JoinSide, JoinState};
use crate::parser::{
    ColumnDef, EmitMode, Expr, Properties, Select, SourceKind, SqlType, Statement, Window,
};
use crate::plan::{
    check_grouping, check_no_aggregates, listing, output_columns, projection, statement_text,
    unresolved_column, PSEUDO_COLUMNS,
};
use crate::state::{Changes, GROUP, ROW, SESSIONS};
use crate::types::coerce;

/// A record as the engine sees it: key and value in their topic's logical
/// form (a JSON value for JSON and AVRO, a string for DELIMITED and KAFKA).
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

/// A record whose value and key a reader already decoded into its source's
/// row (see [`Engine::row_source`]), with what the query needs besides.
#[derive(Debug)]
pub(crate) struct RowRecord {
    pub(crate) row: Row,
    pub(crate) timestamp: i64,
    pub(crate) window: Option<(i64, i64)>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

/// What [`Engine::process`] and [`Engine::process_row`] take.
#[derive(Clone, Copy)]
enum Input<'a> {
    Record(&'a Record),
    Row(&'a RowRecord),
}

#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) kind: SourceKind,
    pub(crate) topic: String,
    pub(crate) columns: Vec<ColumnDef>,
    pub(crate) key_format: Format,
    pub(crate) value_format: Format,
    /// Whether a single value column is a field of a JSON object (the
    /// default) or the whole value (`WRAP_SINGLE_VALUE=false`).
    pub(crate) wrap_single_value: bool,
    /// The window keys carry (the source of WINDOWSTART and WINDOWEND).
    pub(crate) window: Option<Window>,
    /// A `CREATE SOURCE` stream or table: nothing may write to or alter it.
    pub(crate) read_only: bool,
}

/// The streams and tables by name; shared, so a query's record costs no copy.
/// Every record looks its query's sources up: FxHash, as nothing here needs
/// SipHash's resistance to chosen keys.
pub(crate) type Sources = FxHashMap<String, Arc<Source>>;

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
    pub(crate) select: Select,
    /// The sink's columns, each with the expression that computes it.
    outputs: Vec<(ColumnDef, Expr)>,
    /// For GROUP BY: the aggregate calls and their state per group.
    pub(crate) aggregation: Option<Aggregation>,
    /// A table source's current rows (those passing WHERE), by key, so an
    /// update can retract what the old row contributed.
    pub(crate) table_rows: HashMap<String, Row>,
    /// For a join: the other source and both sides' rows so far.
    pub(crate) join: Option<JoinState>,
    /// The last record's row, decoded into again (its column names reused).
    spare_row: Option<Row>,
    /// The sink's columns in SELECT order, as a transient query shows them
    /// (the sink itself has its key columns first, as ksqlDB's schemas do).
    pub(crate) shown: Vec<usize>,
    /// Which `table_rows` changed since the last checkpoint (see `state`).
    pub(crate) changed_rows: Changes,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Aggregation {
    /// Every distinct aggregate call of the SELECT and HAVING, in order.
    pub(crate) calls: Vec<Expr>,
    /// Group (its key as JSON text) → the calls' current values.
    pub(crate) groups: FxHashMap<String, Group>,
    /// Groups whose last output was a row, so a failing HAVING must retract it.
    pub(crate) emitted: FxHashSet<String>,
    /// The highest timestamp seen: windows older than it plus grace are closed.
    pub(crate) stream_time: i64,
    /// Time windows by the stream time that closes them (end + grace), so
    /// their state is dropped then, and EMIT FINAL emits them.
    pub(crate) closing: BTreeSet<(i64, String)>,
    /// EMIT FINAL: each open window's latest input row and timestamp.
    pub(crate) pending: FxHashMap<String, Pending>,
    /// Where each record's group-and-window id is written.
    id_buffer: String,
    /// The last window's part of the id: consecutive records mostly share it.
    window_suffix: Option<(Option<(i64, i64)>, String)>,
    /// Session windows: per group, its sessions `(start, end, values)`.
    pub(crate) sessions: HashMap<String, Vec<(i64, i64, Vec<Value>)>>,
    settings: AggregateSettings,
    /// Which groups and sessions changed since the last checkpoint.
    pub(crate) changed: Changes,
}

/// A group's aggregate values and its row's time: the latest of its
/// inputs' timestamps, as Kafka Streams stamps an aggregate's result.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) values: Vec<Value>,
    pub(crate) timestamp: i64,
    /// A time window's close (end + grace), when its state is dropped.
    pub(crate) close: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) group: Value,
    pub(crate) window: Option<(i64, i64)>,
    pub(crate) row: Row,
    pub(crate) timestamp: i64,
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
    /// A stream or table dropped, with its topic (None: it did not exist).
    Dropped {
        name: String,
        topic: Option<String>,
    },
    Terminated {
        ids: Vec<String>,
    },
    /// ALTER added columns to a stream or table.
    Altered {
        kind: SourceKind,
        name: String,
    },
    /// INSERT INTO .. VALUES wrote a record (see `Engine::take_inserted`).
    Inserted {
        topic: String,
    },
}

#[derive(Default, Clone)]
pub struct Engine {
    pub(crate) sources: Sources,
    pub(crate) queries: Vec<Query>,
    /// Numbers query ids, as ksqlDB does, across the session.
    query_count: usize,
    /// ksqlDB properties (`ksql.*`) for the queries started from now on.
    properties: HashMap<String, String>,
    /// Records written by `INSERT INTO .. VALUES`, not yet taken.
    inserted: Vec<Record>,
    /// The AVRO schemas of the topics, registered as sources are created.
    pub(crate) registry: SchemaRegistry,
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
    /// Sets a ksqlDB property (say `ksql.functions.collect_list.limit`) for
    /// the queries started after it.
    pub fn set_property(&mut self, name: &str, value: &str) {
        self.properties.insert(name.to_string(), value.to_string());
    }

    /// A property as set, if it is.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// Forgets a property: the queries started after it go by its default.
    pub fn unset_property(&mut self, name: &str) {
        self.properties.remove(name);
    }

    fn new_planner(&self) -> bool {
        self.properties
            .get("ksql.new.query.planner.enabled")
            .is_some_and(|v| v == "true")
    }

    fn aggregate_settings(&self) -> Result<AggregateSettings> {
        let mut settings = AggregateSettings::default();
        if let Some(limit) = self.properties.get("ksql.functions.collect_list.limit") {
            settings.collect_list_limit = limit.parse().map_err(|_| {
                anyhow!("ksql.functions.collect_list.limit must be a whole number, not {limit}")
            })?;
        }
        Ok(settings)
    }

    pub fn execute(&mut self, statement: &Statement) -> Result<Executed> {
        match statement {
            Statement::CreateSource {
                kind,
                name,
                columns,
                properties,
                or_replace,
                read_only,
            } => {
                let replaced_read_only = self.sources.get(name).is_some_and(|s| s.read_only);
                if *or_replace && (*read_only || replaced_read_only) {
                    let kind = kind_word(*kind);
                    bail!("Cannot add {kind} '{name}': CREATE OR REPLACE is not supported on source {kind}s.");
                }
                if *or_replace {
                    self.sources.remove(name);
                }
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
                let columns = match columns.is_empty() {
                    true => {
                        self.registered_columns(&topic, key_format, value_format, properties)?
                    }
                    false => columns.clone(),
                };
                let source = Source {
                    kind: *kind,
                    topic,
                    key_format,
                    value_format,
                    wrap_single_value: wrap_single_value(properties, value_format, &columns)?,
                    columns,
                    window: window_type(properties)?,
                    read_only: *read_only,
                };
                check_formats(&source)?;
                self.add(name, source)?;
                Ok(Executed::Created {
                    kind: *kind,
                    name: name.clone(),
                })
            }
            Statement::Alter {
                kind,
                name,
                columns,
            } => {
                let source = self
                    .sources
                    .get_mut(name)
                    .ok_or_else(|| anyhow!("Source {name} does not exist."))?;
                if source.read_only {
                    let kind = kind_word(*kind);
                    bail!("Cannot alter {kind} '{name}': ALTER operations are not supported on source {kind}s.");
                }
                for column in columns {
                    if source.columns.iter().any(|c| c.name == column.name) {
                        bail!("Cannot add column `{}` to schema. A column with the same name already exists.", column.name);
                    }
                    Arc::make_mut(source).columns.push(column.clone());
                }
                Ok(Executed::Altered {
                    kind: *kind,
                    name: name.clone(),
                })
            }
            Statement::InsertValues {
                target,
                columns,
                values,
            } => {
                let topic = self.insert_values(target, columns.as_deref(), values)?;
                Ok(Executed::Inserted { topic })
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
                let materialized = from.read_only
                    || self
                        .queries
                        .iter()
                        .any(|q| !q.transient && q.sink == select.from);
                let unqueryable = pull && from.kind == SourceKind::Table && !materialized;
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
                // Checked once the query is known to be valid, as ksqlDB does.
                if unqueryable {
                    self.execute(&Statement::Terminate { query: Some(id) })?;
                    let name = &select.from;
                    bail!("The `{name}` table isn't queryable. To derive a queryable table, you can do 'CREATE TABLE QUERYABLE_{name} AS SELECT * FROM {name}'. See https://cnfl.io/queries for more info.");
                }
                Ok(Executed::Transient { id, pull })
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
                delete_topic,
            } => {
                let Some(source) = self.sources.get(name) else {
                    if *if_exists {
                        return Ok(Executed::Dropped {
                            name: name.clone(),
                            topic: None,
                        });
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
                let topic = source.topic.clone();
                if *delete_topic {
                    if source.read_only {
                        bail!("Cannot delete topic for read-only source: {name}");
                    }
                    // Deleting the topic deletes its schemas' subjects too, as ksqlDB does.
                    self.registry.delete_subject(&avro::key_subject(&topic));
                    self.registry.delete_subject(&avro::value_subject(&topic));
                }
                self.sources.remove(name);
                Ok(Executed::Dropped {
                    name: name.clone(),
                    topic: Some(topic),
                })
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
                let (select, from, join) = resolve(select, &self.sources)?;
                let (select, from) = (&select, &from);
                if into.read_only && into.kind == SourceKind::Stream {
                    bail!("Cannot insert into read-only stream: {target}");
                }
                if into.kind == SourceKind::Table {
                    bail!("INSERT INTO can only be used to insert into a stream. {target} is a table.");
                }
                if from.kind == SourceKind::Table || !select.group_by.is_empty() {
                    bail!("INSERT INTO can only write stream query results into a stream");
                }
                let outputs = output_columns(select, from, target, self.new_planner(), false)?;
                let same = outputs.len() == into.columns.len()
                    && outputs
                        .iter()
                        .zip(&into.columns)
                        .all(|((a, _), b)| a.name == b.name && a.key == b.key && a.ty == b.ty);
                if !same {
                    let describe = |columns: &mut dyn Iterator<Item = &ColumnDef>| {
                        columns
                            .map(|c| {
                                let key = if c.key { " KEY" } else { "" };
                                format!("`{}` {}{key}", c.name, c.ty)
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    bail!(
                        "Incompatible schema between results and sink.\nResult schema is {}\nSink schema is {}",
                        describe(&mut outputs.iter().map(|(c, _)| c)),
                        describe(&mut into.columns.iter())
                    );
                }
                let id = format!("INSERTQUERY_{}", self.query_count);
                self.query_count += 1;
                self.queries.push(Query {
                    id: id.clone(),
                    transient: false,
                    from: select.from.clone(),
                    sink: target.clone(),
                    select: select.clone(),
                    outputs,
                    aggregation: None,
                    table_rows: HashMap::new(),
                    spare_row: None,
                    shown: Vec::new(),
                    join,
                    changed_rows: Changes::default(),
                });
                Ok(Executed::Started {
                    id,
                    sink: target.clone(),
                })
            }
        }
    }

    /// `INSERT INTO target VALUES (..)`: one record, for the target's topic,
    /// kept for `take_inserted` (the caller produces it); returns the topic.
    fn insert_values(
        &mut self,
        target: &str,
        columns: Option<&[String]>,
        values: &[Expr],
    ) -> Result<String> {
        let Some(into) = self.sources.get(target) else {
            let similar = self
                .sources
                .keys()
                .find(|name| name.eq_ignore_ascii_case(target));
            let hint = match similar {
                Some(name) if *name == name.to_ascii_uppercase() => {
                    format!("\nDid you mean {name}? Hint: try removing double quotes from the source name.")
                }
                Some(name) => format!(
                    "\nDid you mean \"{name}\"? Hint: wrap the source name in double quotes to make it case-sensitive."
                ),
                None => String::new(),
            };
            bail!("Cannot insert values into an unknown stream/table: `{target}`{hint}");
        };
        if into.read_only {
            bail!(
                "Cannot insert values into read-only {}: {target}",
                kind_word(into.kind)
            );
        }
        let names: Vec<String> = match columns {
            Some(names) => names.to_vec(),
            None => into.columns.iter().map(|c| c.name.clone()).collect(),
        };
        if names.len() != values.len() {
            bail!(
                "Expected a value for each column. Expected Columns: [{}]. Got [{}]",
                names.join(", "),
                values
                    .iter()
                    .map(Expr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let mut row = Row::default();
        for (name, value) in names.iter().zip(values) {
            row.insert(name.clone(), eval(value, &Row::default(), &[])?);
        }
        let typed = |key: bool| -> Vec<(&ColumnDef, Value)> {
            into.columns
                .iter()
                .filter(|c| c.key == key)
                .map(|c| {
                    let value = row.get(&c.name).map_or(Value::Null, |v| coerce(v, &c.ty));
                    (c, value)
                })
                .collect()
        };
        let record = Record {
            topic: into.topic.clone(),
            key: encode_key(into.key_format, &typed(true)),
            value: encode_value(into, &typed(false)),
            timestamp: row.get("ROWTIME").and_then(Value::as_i64).unwrap_or(0),
            window: None,
            partition: 0,
            offset: 0,
        };
        let topic = record.topic.clone();
        self.inserted.push(record);
        Ok(topic)
    }

    /// The records `INSERT INTO .. VALUES` statements wrote since the last
    /// call, for the caller to produce to their topics (and feed to `process`).
    pub fn take_inserted(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.inserted)
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
        if !transient && select.limit.is_some() {
            let kind = kind_word(kind).to_uppercase();
            bail!("CREATE {kind} AS SELECT statements don't support LIMIT clause.");
        }
        if select.window.is_some_and(|w| w.session) && select.emit == Some(EmitMode::Final) {
            bail!("EMIT FINAL is not supported for SESSION windows yet.");
        }
        let (select, from, join) = resolve(select, &self.sources)?;
        let select = &select;
        let aggregated = !select.group_by.is_empty();
        if let Some(column) = select
            .filter
            .as_ref()
            .and_then(|f| unresolved_column(f, &from.columns))
        {
            bail!("WHERE column '{column}' cannot be resolved.");
        }
        if let Some(filter) = &select.filter {
            check_condition("WHERE", filter, &from.columns)?;
        }
        if let Some(having) = &select.having {
            check_condition("HAVING", having, &from.columns)?;
        }
        for (expr, _) in projection(select, &from) {
            check_selected(&expr, &from.columns)?;
        }
        if !aggregated {
            check_no_aggregates(kind, select, &from)?;
        }
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
            if from.value_format == Format::Kafka {
                bail!(
                    "Source(s) {} are using the 'KAFKA' value format. This format does not yet support GROUP BY.",
                    select.from
                );
            }
            check_grouping(select, &from)?;
            let mut calls = Vec::new();
            for (expr, _) in projection(select, &from) {
                aggregate_calls(&expr, &mut calls)?;
            }
            if let Some(having) = &select.having {
                aggregate_calls(having, &mut calls)?;
            }
            if from.kind == SourceKind::Table {
                check_table_aggregates(&calls)?;
            }
            let value_format = formats(properties, Some(&from))?.1;
            let struct_state = calls.iter().any(
                |c| matches!(c, Expr::Function { name, .. } if COMPLEX_STATE.contains(&name.as_str())),
            );
            if struct_state && !value_format.has_nested_types() {
                bail!("One of the functions used in the statement has an intermediate type that the value format can not handle. Please remove the function or change the format.");
            }
            Some(Aggregation {
                calls,
                settings: self.aggregate_settings()?,
                ..Aggregation::default()
            })
        } else {
            None
        };
        let outputs = output_columns(select, &from, name, self.new_planner(), transient)?;
        let mut shown: Vec<usize> = Vec::with_capacity(outputs.len());
        for (expr, _) in projection(select, &from) {
            let at = (0..outputs.len()).find(|i| !shown.contains(i) && outputs[*i].1 == expr);
            shown.extend(at);
        }
        let unshown: Vec<usize> = (0..outputs.len()).filter(|i| !shown.contains(i)).collect();
        shown.extend(unshown);
        let prefix = self
            .properties
            .get("ksql.output.topic.name.prefix")
            .cloned()
            .unwrap_or_default();
        let topic =
            text_property(properties, "KAFKA_TOPIC")?.unwrap_or_else(|| format!("{prefix}{name}"));
        let (key_format, value_format) = formats(properties, Some(&from))?;
        let columns: Vec<ColumnDef> = outputs.iter().map(|(c, _)| c.clone()).collect();
        let wrap_single_value = wrap_single_value(properties, value_format, &columns)?;
        let sink = Source {
            kind,
            topic,
            columns,
            key_format,
            value_format,
            wrap_single_value,
            window: select.window.or(from.window),
            read_only: false,
        };
        check_formats(&sink).map_err(|e| {
            let text = statement_text(kind, name, properties, select, &outputs);
            anyhow!("{e}\nStatement: {text}")
        })?;
        self.add(name, sink)?;
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
            outputs,
            aggregation,
            table_rows: HashMap::new(),
            spare_row: None,
            shown,
            join,
            changed_rows: Changes::default(),
        });
        Ok(id)
    }

    fn add(&mut self, name: &str, source: Source) -> Result<()> {
        if self.sources.contains_key(name) {
            bail!("Cannot add stream '{name}': A stream with the same name already exists");
        }
        self.register_avro_schemas(&source)?;
        self.sources.insert(name.to_string(), Arc::new(source));
        Ok(())
    }

    /// The columns of a source created without a column list, as ksqlDB
    /// infers them from the AVRO schemas registered for its topic (or those
    /// `KEY_SCHEMA_ID` and `VALUE_SCHEMA_ID` name).
    fn registered_columns(
        &self,
        topic: &str,
        key_format: Format,
        value_format: Format,
        properties: &Properties,
    ) -> Result<Vec<ColumnDef>> {
        if value_format != Format::Avro {
            bail!("The statement does not define any columns.");
        }
        let registered = |id_property: &str,
                          subject: String,
                          part: &str|
         -> Result<&avro::Schema> {
            let schema = match property(properties, id_property) {
                Some(id) => id
                    .as_u64()
                    .and_then(|id| self.registry.schema(u32::try_from(id).ok()?)),
                None => self.registry.latest(&subject).map(|(_, schema)| schema),
            };
            schema.ok_or_else(|| {
                anyhow!("Schema for message {part}s on topic '{topic}' does not exist in the Schema Registry.\nSubject: {subject}")
            })
        };
        let mut columns = Vec::new();
        if key_format == Format::Avro {
            let schema = registered("KEY_SCHEMA_ID", avro::key_subject(topic), "key")?;
            columns.extend(avro::columns(schema, true)?);
        }
        let schema = registered("VALUE_SCHEMA_ID", avro::value_subject(topic), "value")?;
        columns.extend(avro::columns(schema, false)?);
        Ok(columns)
    }

    /// Registers the schemas ksqlDB derives for a source's AVRO key and
    /// value, as it does with the schema registry when it creates a source.
    fn register_avro_schemas(&mut self, source: &Source) -> Result<()> {
        let (keys, values): (Vec<&ColumnDef>, Vec<&ColumnDef>) =
            source.columns.iter().partition(|c| c.key);
        if source.key_format == Format::Avro && !keys.is_empty() {
            let schema = avro::derive(&keys, keys.len() > 1)?;
            self.registry
                .register(&avro::key_subject(&source.topic), schema);
        }
        if source.value_format == Format::Avro {
            let schema = avro::derive(&values, source.wrap_single_value)?;
            self.registry
                .register(&avro::value_subject(&source.topic), schema);
        }
        Ok(())
    }

    /// Feeds one record; returns every record the queries write because of it
    /// (including records of queries reading those sinks), in order.
    pub fn process(&mut self, record: &Record) -> Result<Vec<Record>> {
        self.process_input(&record.topic, Input::Record(record))
    }

    /// The source a reader may decode `topic`'s records with ahead of
    /// [`Engine::process_row`] (on its own thread): the one every query
    /// reading the topic reads as a plain stream, without a join.
    pub(crate) fn row_source(&self, topic: &str) -> Option<&Source> {
        let reads = |q: &&Query| {
            self.sources[&q.from].topic == topic
                || q.join
                    .as_ref()
                    .is_some_and(|j| self.sources[&j.right].topic == topic)
        };
        let mut reading = self.queries.iter().filter(reads);
        let first = reading.next()?;
        let plain = |q: &Query| {
            q.join.is_none()
                && q.from == first.from
                && self.sources[&q.from].kind == SourceKind::Stream
        };
        (plain(first) && reading.all(plain)).then(|| &*self.sources[&first.from])
    }

    /// [`Engine::process`] for a record of `topic` decoded with
    /// [`Engine::row_source`].
    pub(crate) fn process_row(&mut self, topic: &str, record: &RowRecord) -> Result<Vec<Record>> {
        self.process_input(topic, Input::Row(record))
    }

    fn process_input(&mut self, topic: &str, input: Input<'_>) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for q in 0..self.queries.len() {
            // Sources are borrowed, not cloned: the reader thread decodes
            // with the same shared sources, and touching their reference
            // counts for every record made both threads fight over them.
            let Engine {
                sources, queries, ..
            } = &mut *self;
            let query = &mut queries[q];
            let left = &sources[&query.from];
            let right = query.join.as_ref().map(|j| &sources[&j.right]);
            let (side, from) = if left.topic == topic {
                (JoinSide::Left, left)
            } else if let Some(right) = right.filter(|r| r.topic == topic) {
                (JoinSide::Right, right)
            } else {
                continue;
            };
            let sink = &sources[&query.sink];
            let produced = match input {
                // Only plain stream queries read rows decoded ahead.
                Input::Row(record) => {
                    let window = record.window.filter(|_| from.window.is_some());
                    stream_row(query, sink, &record.row, record.timestamp, window)?
                }
                Input::Record(record) if query.join.is_some() => {
                    join_records(query, from, side, sink, record)?
                }
                Input::Record(record) if from.kind == SourceKind::Table => {
                    table_update(query, from, sink, record)?
                }
                Input::Record(record) => stream_update(query, from, sink, record)?,
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

impl Engine {
    /// The partition of a repartition topic with `partitions` partitions
    /// that a source record goes to: its group's, so that one task holds each
    /// group (None: the WHERE clause or a null group drops it, as the query
    /// would). A table source's updates all go to one partition (see
    /// [`Engine::repartition_count`]).
    pub fn repartition(&self, record: &Record, partitions: i32) -> Result<Option<i32>> {
        let query = self
            .queries
            .first()
            .ok_or_else(|| anyhow!("an engine without a query"))?;
        let from = &self.sources[&query.from];
        if from.kind == SourceKind::Table {
            return Ok(Some(0));
        }
        let Some(row) = decode(from, record)? else {
            return Ok(None);
        };
        if let Some(filter) = &query.select.filter {
            if eval(filter, &row, &[])? != Value::Bool(true) {
                return Ok(None);
            }
        }
        let Some(group) = grouping(&query.select, &row)? else {
            return Ok(None);
        };
        let mut text = String::new();
        group.write_json(&mut text);
        Ok(Some(
            (fnv1a(text.as_bytes()) % partitions.max(1) as u64) as i32,
        ))
    }
}

/// A hash that never changes between versions: a repartition topic outlives
/// the binary that wrote it, and a group must stay in one partition.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A stream record through a query: projected, or folded into its group's
/// aggregates (per window, or into its session).
fn stream_update(
    query: &mut Query,
    from: &Source,
    sink: &Source,
    record: &Record,
) -> Result<Vec<Record>> {
    let spare = query.spare_row.take().unwrap_or_default();
    let Some(row) = decode_reusing(from, record, spare)? else {
        // A null value passes through a plain projection as a null value.
        let passes = query.aggregation.is_none() && query.select.filter.is_none();
        return Ok(if passes && record.value.is_null() {
            let key_row = decode_key(from, &record.key);
            vec![Record {
                topic: sink.topic.clone(),
                key: project_key(&query.outputs, sink, &key_row),
                value: Value::Null,
                timestamp: record.timestamp,
                window: record.window,
                partition: 0,
                offset: 0,
            }]
        } else {
            Vec::new()
        });
    };
    let window = record.window.filter(|_| from.window.is_some());
    let produced = stream_row(query, sink, &row, record.timestamp, window);
    query.spare_row = Some(row);
    produced
}

/// A record on one side of a join: the joined rows it makes go on through
/// the query; in a table-table join, a row gone from the join is a tombstone.
fn join_records(
    query: &mut Query,
    from: &Source,
    side: JoinSide,
    sink: &Source,
    record: &Record,
) -> Result<Vec<Record>> {
    let row = decode(from, record)?;
    let state = query.join.as_mut().expect("a join query");
    // Two tables joined make a table keyed as both are: grouped, each joined
    // row replaces the key's last one in its group.
    let table_of_rows = state.tables && query.aggregation.is_some();
    let joined = join_update(state, side, row.as_ref(), &record.key, record.timestamp)?;
    let mut out = Vec::new();
    for (row, timestamp) in joined {
        if table_of_rows {
            let key_id = record.key.to_string();
            out.extend(table_row_changed(
                query, sink, key_id, row, timestamp, None,
            )?);
            continue;
        }
        match row {
            Some(row) => out.extend(stream_row(query, sink, &row, timestamp, None)?),
            None => out.push(Record {
                topic: sink.topic.clone(),
                key: record.key.clone(),
                value: Value::Null,
                timestamp,
                window: None,
                partition: 0,
                offset: 0,
            }),
        }
    }
    Ok(out)
}

/// A stream row (read from a record, or joined) through the query's WHERE,
/// then projected with its `window`, or folded into its group's aggregates.
fn stream_row(
    query: &mut Query,
    sink: &Source,
    row: &Row,
    timestamp: i64,
    window: Option<(i64, i64)>,
) -> Result<Vec<Record>> {
    if let Some(filter) = &query.select.filter {
        if eval(filter, row, &[])? != Value::Bool(true) {
            return Ok(Vec::new());
        }
    }
    let Query {
        select,
        outputs,
        aggregation,
        ..
    } = query;
    let Some(aggregation) = aggregation else {
        let mut projected = project(outputs, sink, row, &[], None, timestamp)?;
        projected.window = window;
        return Ok(vec![projected]);
    };
    let Some(group) = grouping(select, row)? else {
        return Ok(Vec::new());
    };
    aggregation.stream_time = aggregation.stream_time.max(timestamp);
    let query = QueryParts {
        select,
        outputs,
        sink,
    };
    if let Some(w) = select.window.filter(|w| w.session) {
        return session_update(aggregation, &query, row, &group.to_value(), w, timestamp);
    }
    let mut produced = Vec::new();
    let final_only = select.emit == Some(EmitMode::Final);
    // The group-and-window id is written into one buffer per query and
    // allocated only when a window opens.
    let mut id = std::mem::take(&mut aggregation.id_buffer);
    let mut group_value = None;
    for window in windows_of(select.window, timestamp, aggregation.stream_time) {
        let suffix = match &mut aggregation.window_suffix {
            Some((last, text)) if *last == window => text,
            cached => &mut cached.insert((window, window_suffix(window))).1,
        };
        write_group_id(&mut id, &group, suffix);
        let first = !aggregation.groups.contains_key(id.as_str());
        if first {
            let values = aggregation.calls.iter().map(initial).collect();
            let close = match (window, select.window) {
                (Some((_, end)), Some(w)) => Some(end + w.grace),
                _ => None,
            };
            let group = Group {
                values,
                timestamp,
                close,
            };
            aggregation.groups.insert(id.clone(), group);
            if let Some(close) = close {
                aggregation.closing.insert((close, id.clone()));
            }
        }
        aggregation.changed.mark(GROUP, &id);
        let state = aggregation
            .groups
            .get_mut(id.as_str())
            .expect("the group was just ensured");
        state.timestamp = state.timestamp.max(timestamp);
        for (call, value) in aggregation.calls.iter().zip(state.values.iter_mut()) {
            *value = accumulate(call, value, row, first, aggregation.settings)?;
        }
        if final_only {
            // The group's columns are all a final row reads besides the
            // aggregates, so the window's first row serves; only time moves.
            match aggregation.pending.get_mut(id.as_str()) {
                Some(pending) => pending.timestamp = timestamp,
                None => {
                    let pending = Pending {
                        group: group.to_value(),
                        window,
                        row: row.clone(),
                        timestamp,
                    };
                    aggregation.pending.insert(id.clone(), pending);
                }
            }
            continue;
        }
        let (values, timestamp) = (state.values.clone(), state.timestamp);
        let target = Emit {
            group: group_value.get_or_insert_with(|| group.to_value()),
            id: &id,
            window,
            timestamp,
        };
        produced.extend(emit(aggregation, &query, row, &values, target)?);
    }
    aggregation.id_buffer = id;
    produced.extend(close_windows(aggregation, &query)?);
    Ok(produced)
}

/// A group-and-window id, `{group}@{window:?}` (a state key, so its text
/// stays as it was), written without the formatting machinery, which cost
/// more than the aggregating (bench/sql.sh's profile): the group as JSON,
/// then the window's part, made once per window by [`window_suffix`].
fn write_group_id(id: &mut String, group: &Grouping<'_>, suffix: &str) {
    id.clear();
    group.write_json(id);
    id.push_str(suffix);
}

fn window_suffix(window: Option<(i64, i64)>) -> String {
    format!("@{window:?}")
}

/// A String as an io::Write for serde_json.
struct TextWriter<'a>(&'a mut String);

impl std::io::Write for TextWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = std::str::from_utf8(bytes).map_err(std::io::Error::other)?;
        self.0.push_str(text);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The parts of a query that shape its output.
struct QueryParts<'a> {
    select: &'a Select,
    outputs: &'a [(ColumnDef, Expr)],
    sink: &'a Source,
}

/// The values of the GROUP BY expressions for `row`, or None when one is
/// null: ksqlDB drops such rows.
fn grouping<'r>(select: &Select, row: &'r Row) -> Result<Option<Grouping<'r>>> {
    if let [Expr::Column(name)] = select.group_by.as_slice() {
        return Ok(row.get(name).filter(|v| !v.is_null()).map(Grouping::Column));
    }
    let mut values = Vec::new();
    for expr in &select.group_by {
        // A grouping expression that fails drops the row, as in ksqlDB.
        match eval(expr, row, &[]) {
            Ok(Value::Null) | Err(_) => return Ok(None),
            Ok(value) => values.push(value),
        }
    }
    Ok(Some(Grouping::Values(values)))
}

/// A row's group. A lone grouping column is borrowed from the row: most rows
/// join a group that exists, which needs only the group's text, not a copy.
enum Grouping<'r> {
    Column(&'r Value),
    Values(Vec<Value>),
}

impl Grouping<'_> {
    /// The group as its JSON array.
    fn to_value(&self) -> Value {
        match self {
            Grouping::Column(value) => Value::Array(vec![(*value).clone()]),
            Grouping::Values(values) => Value::Array(values.clone()),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Grouping::Values(values) => Value::Array(values),
            column => column.to_value(),
        }
    }

    /// Appends the group's JSON array text, as `to_value().to_string()` has it.
    fn write_json(&self, out: &mut String) {
        // serde_json writes valid UTF-8 in whole pieces, and a String takes any.
        match self {
            Grouping::Column(value) => {
                out.push('[');
                let _ = serde_json::to_writer(TextWriter(out), value);
                out.push(']');
            }
            Grouping::Values(values) => {
                let _ = serde_json::to_writer(TextWriter(out), values);
            }
        }
    }
}

/// A group's key as the sink writes it.
fn group_key(sink: &Source, group: &Value) -> Value {
    let keys: Vec<(&ColumnDef, Value)> = sink
        .columns
        .iter()
        .filter(|c| c.key)
        .zip(group.as_array().into_iter().flatten().cloned())
        .collect();
    encode_key(sink.key_format, &keys)
}

/// Adds a row to its group's session: merges every session within the gap of
/// `timestamp` into one, retracting the merged ones (as tombstones stamped with
/// their end), unless the merged session would already be closed.
fn session_update(
    aggregation: &mut Aggregation,
    query: &QueryParts<'_>,
    row: &Row,
    group: &Value,
    window: Window,
    timestamp: i64,
) -> Result<Vec<Record>> {
    let id = group.to_string();
    aggregation.changed.mark(SESSIONS, &id);
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
        *value = accumulate(call, value, row, first, aggregation.settings)?;
    }
    let mut out = Vec::new();
    for (old_start, old_end, _) in &merged {
        if aggregation
            .emitted
            .remove(&format!("{id}@{old_start},{old_end}"))
        {
            out.push(Record {
                topic: query.sink.topic.clone(),
                key: group_key(query.sink, group),
                value: Value::Null,
                timestamp: *old_end,
                window: Some((*old_start, *old_end)),
                partition: 0,
                offset: 0,
            });
        }
    }
    let session_id = format!("{id}@{start},{end}");
    // A session's row is stamped with its end, its latest record's time.
    let target = Emit {
        group,
        id: &session_id,
        window: Some((start, end)),
        timestamp: end,
    };
    out.extend(emit(aggregation, query, row, &values, target)?);
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
    if record.key.is_null() {
        // A table row needs a key; ksqlDB drops keyless ones.
        return Ok(Vec::new());
    }
    // A windowed table has a row per key and window.
    let window = record.window.filter(|_| from.window.is_some());
    let key_id = match window {
        Some(w) => format!("{}@{w:?}", record.key),
        None => record.key.to_string(),
    };
    let new_row = decode(from, record)?;
    table_row_changed(query, sink, key_id, new_row, record.timestamp, window)
}

/// A table's row for `key_id` replaced by `new_row` (None: deleted), the way
/// `table_update` and an aggregated table-table join see it: WHERE decides
/// whether the row is in, then the sink row follows, or the old row's group
/// loses it and the new row's group gains it.
fn table_row_changed(
    query: &mut Query,
    sink: &Source,
    key_id: String,
    mut new_row: Option<Row>,
    time: i64,
    window: Option<(i64, i64)>,
) -> Result<Vec<Record>> {
    if let (Some(row), Some(filter)) = (&new_row, &query.select.filter) {
        if eval(filter, row, &[])? != Value::Bool(true) {
            new_row = None;
        }
    }
    query.changed_rows.mark(ROW, &key_id);
    let old_row = match &new_row {
        Some(row) => query.table_rows.insert(key_id, row.clone()),
        None => query.table_rows.remove(&key_id),
    };
    let Some(aggregation) = &mut query.aggregation else {
        return Ok(match (new_row, old_row) {
            (Some(row), _) => {
                let mut projected = project(&query.outputs, sink, &row, &[], None, time)?;
                projected.window = window;
                vec![projected]
            }
            (None, Some(row)) => vec![Record {
                topic: sink.topic.clone(),
                key: project_key(&query.outputs, sink, &row),
                value: Value::Null,
                timestamp: time,
                window,
                partition: 0,
                offset: 0,
            }],
            (None, None) => Vec::new(),
        });
    };
    let parts = QueryParts {
        select: &query.select,
        outputs: &query.outputs,
        sink,
    };
    // Per group touched, the rows to retract (true) or add; an update
    // within one group changes it once.
    let mut changes: Vec<(Value, Vec<(Row, bool)>)> = Vec::new();
    for (row, retract) in [(old_row, true), (new_row, false)] {
        let Some(row) = row else { continue };
        let Some(group) = grouping(&query.select, &row)? else {
            continue;
        };
        let group = group.into_value();
        match changes.first_mut() {
            Some((first, steps)) if *first == group => steps.push((row, retract)),
            _ => changes.push((group, vec![(row, retract)])),
        }
    }
    let mut out = Vec::new();
    for (group, steps) in changes {
        let id = group.to_string();
        let first = !aggregation.groups.contains_key(&id);
        aggregation.changed.mark(GROUP, &id);
        let Group {
            mut values,
            timestamp,
            ..
        } = aggregation.groups.remove(&id).unwrap_or_else(|| Group {
            values: aggregation.calls.iter().map(initial).collect(),
            timestamp: time,
            close: None,
        });
        let timestamp = timestamp.max(time);
        for (row, retract) in &steps {
            for (call, value) in aggregation.calls.iter().zip(values.iter_mut()) {
                *value = if *retract {
                    retracted(call, value, row)?
                } else {
                    accumulate(call, value, row, first, aggregation.settings)?
                };
            }
        }
        let target = Emit {
            group: &group,
            id: &id,
            window: None,
            timestamp,
        };
        let (row, _) = steps.last().expect("a change has a step");
        out.extend(emit(aggregation, &parts, row, &values, target)?);
        let group = Group {
            values,
            timestamp,
            close: None,
        };
        aggregation.groups.insert(id, group);
    }
    Ok(out)
}

/// Where a group's new values go.
struct Emit<'a> {
    /// The GROUP BY values, as a JSON array.
    group: &'a Value,
    /// The group (and window) as the key of `Aggregation::emitted`.
    id: &'a str,
    window: Option<(i64, i64)>,
    timestamp: i64,
}

/// Forgets the windows the stream time has closed; under EMIT FINAL, emits
/// each one's final row first (HAVING applied), oldest close first.
fn close_windows(aggregation: &mut Aggregation, query: &QueryParts<'_>) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    while aggregation
        .closing
        .first()
        .is_some_and(|(close, _)| *close <= aggregation.stream_time)
    {
        let Some((_, id)) = aggregation.closing.pop_first() else {
            break;
        };
        aggregation.changed.mark(GROUP, &id);
        let values = aggregation.groups.remove(&id).map(|g| g.values);
        aggregation.emitted.remove(&id);
        if let (Some(values), Some(last)) = (values, aggregation.pending.remove(&id)) {
            let target = Emit {
                group: &last.group,
                id: &id,
                window: last.window,
                timestamp: last.timestamp,
            };
            out.extend(emit(aggregation, query, &last.row, &values, target)?);
            aggregation.emitted.remove(&id);
        }
    }
    Ok(out)
}

fn kind_word(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Stream => "stream",
        SourceKind::Table => "table",
    }
}

/// A group's new values as a sink record; when HAVING now rejects a group that
/// was emitted before, a tombstone instead; else nothing.
fn emit(
    aggregation: &mut Aggregation,
    query: &QueryParts<'_>,
    row: &Row,
    values: &[Value],
    target: Emit<'_>,
) -> Result<Option<Record>> {
    let results: Vec<(Expr, Value)> = aggregation
        .calls
        .iter()
        .zip(values)
        .map(|(call, state)| (call.clone(), result(call, state)))
        .collect();
    let mut row = row.clone();
    if let Some((start, end)) = target.window {
        row.insert("WINDOWSTART".into(), Value::from(start));
        row.insert("WINDOWEND".into(), Value::from(end));
    }
    let kept = match &query.select.having {
        Some(having) => eval(having, &row, &results)? == Value::Bool(true),
        None => true,
    };
    if kept {
        aggregation.emitted.insert(target.id.to_string());
        let group = target.group.as_array().map(Vec::as_slice);
        let mut record = project(
            query.outputs,
            query.sink,
            &row,
            &results,
            group,
            target.timestamp,
        )?;
        record.window = target.window;
        return Ok(Some(record));
    }
    if !aggregation.emitted.remove(target.id) {
        return Ok(None);
    }
    Ok(Some(Record {
        topic: query.sink.topic.clone(),
        key: group_key(query.sink, target.group),
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
fn windows_of(
    window: Option<Window>,
    timestamp: i64,
    stream_time: i64,
) -> impl Iterator<Item = Option<(i64, i64)>> {
    // Computed, not collected: this runs for every record.
    let (oldest, count, w) = match window {
        None => (0, 1, None),
        Some(w) => {
            let (mut oldest, mut count) = (0, 0);
            let mut start = timestamp - timestamp.rem_euclid(w.advance);
            while start > timestamp - w.size && start >= 0 {
                (oldest, count) = (start, count + 1);
                start -= w.advance;
            }
            (oldest, count, Some(w))
        }
    };
    (0..count).filter_map(move |i| match w {
        None => Some(None),
        Some(w) => {
            let start = oldest + i * w.advance;
            (start + w.size + w.grace > stream_time).then_some(Some((start, start + w.size)))
        }
    })
}

/// Whether a single value column is wrapped in a JSON object: so by
/// default; `WRAP_SINGLE_VALUE=false` needs exactly one value column.
fn wrap_single_value(
    properties: &Properties,
    format: Format,
    columns: &[ColumnDef],
) -> Result<bool> {
    let wrap = match property(properties, "WRAP_SINGLE_VALUE") {
        None => return Ok(true),
        Some(Value::Bool(wrap)) => *wrap,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => bail!("Property WRAP_SINGLE_VALUE must be a boolean, not {other}"),
    };
    if !format.has_nested_types() {
        bail!(
            "Format '{}' does not support 'WRAP_SINGLE_VALUE' set to '{wrap}'.",
            format.name()
        );
    }
    if !wrap && columns.iter().filter(|c| !c.key).count() != 1 {
        bail!("'WRAP_SINGLE_VALUE' is only valid for single-field value schemas");
    }
    Ok(wrap)
}

/// Whether `WINDOW_TYPE` declares a windowed source; `WINDOW_SIZE` must
/// come with TUMBLING and HOPPING, and be a valid duration.
fn window_type(properties: &Properties) -> Result<Option<Window>> {
    let Some(kind) = text_property(properties, "WINDOW_TYPE")? else {
        return Ok(None);
    };
    let mut window = Window {
        size: 0,
        advance: 0,
        grace: 0,
        session: true,
    };
    let size = text_property(properties, "WINDOW_SIZE")?;
    match (kind.to_ascii_uppercase().as_str(), size) {
        ("SESSION", Some(_)) => bail!("'WINDOW_SIZE' should not be set for SESSION windows."),
        ("SESSION", None) => {}
        ("TUMBLING" | "HOPPING", Some(size)) => {
            let invalid = |reason: String| {
                anyhow!(
                    "Configuration WINDOW_SIZE is invalid: Invalid duration: '{size}'. {reason}"
                )
            };
            let (amount, unit) = size
                .trim()
                .split_once(char::is_whitespace)
                .ok_or_else(|| invalid("Not a number and a time unit".into()))?;
            let amount = amount
                .parse::<i64>()
                .map_err(|_| invalid(format!("Not a number: '{amount}'")))?;
            let unit = unit.trim().to_ascii_uppercase();
            let Some(at) = TIME_UNITS
                .iter()
                .position(|u| *u == unit.trim_end_matches('S'))
            else {
                return Err(invalid(format!("Unknown time unit: '{unit}'")));
            };
            window.size = amount * UNIT_MILLIS[at];
            window.advance = window.size;
            window.session = false;
        }
        ("TUMBLING" | "HOPPING", None) => {
            bail!("'WINDOW_SIZE' is required for TUMBLING and HOPPING windows.")
        }
        (other, _) => bail!("WINDOW_TYPE must be SESSION, TUMBLING or HOPPING, not {other}"),
    }
    Ok(Some(window))
}

/// The time units of a duration, singular.
const TIME_UNITS: [&str; 5] = ["MILLISECOND", "SECOND", "MINUTE", "HOUR", "DAY"];
const UNIT_MILLIS: [i64; 5] = [1, 1000, 60_000, 3_600_000, 86_400_000];

/// Refuses key and value columns the source's formats cannot hold.
fn check_formats(source: &Source) -> Result<()> {
    let keys: Vec<&ColumnDef> = source.columns.iter().filter(|c| c.key).collect();
    let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
    if source.key_format == Format::Kafka {
        let described: Vec<String> = keys
            .iter()
            .map(|c| format!("`{}` {} KEY", c.name, c.ty))
            .collect();
        let reason = match keys.as_slice() {
            [_, _, ..] => Some(format!(
                "The 'KAFKA' format only supports a single field. Got: [{}]",
                described.join(", ")
            )),
            [only] if !kafka_supports(&only.ty) => Some(format!(
                "The 'KAFKA' format does not support type '{}'",
                type_family(&only.ty)
            )),
            _ => None,
        };
        if let Some(reason) = reason {
            bail!(
                "Key format does not support schema.\nformat: KAFKA\nschema: Persistence{{columns=[{}], features=[]}}\nreason: {reason}",
                described.join(", ")
            );
        }
    }
    if let Some(key) = keys.iter().find(|c| contains_map(&c.ty)) {
        bail!(
            "Map keys, including types that contain maps, are not supported as they may lead to unexpected behavior due to inconsistent serialization. Key column name: `{}`. Column type: {}. See https://github.com/confluentinc/ksql/issues/6621 for more.",
            key.name,
            key.ty
        );
    }
    let json = |f: Format| f == Format::Json;
    let has_non_string_map_keys = keys
        .iter()
        .filter(|_| json(source.key_format))
        .chain(values.iter().filter(|_| json(source.value_format)))
        .any(|c| has_non_string_map_key(&c.ty));
    if has_non_string_map_keys {
        bail!("JSON only supports MAP types with STRING keys");
    }
    source.key_format.check(&keys)?;
    source.value_format.check(&values)
}

fn contains_map(ty: &SqlType) -> bool {
    match ty {
        SqlType::Map(..) => true,
        SqlType::Array(element) => contains_map(element),
        SqlType::Struct(fields) => fields.iter().any(|(_, t)| contains_map(t)),
        _ => false,
    }
}

fn has_non_string_map_key(ty: &SqlType) -> bool {
    match ty {
        SqlType::Map(key, value) => **key != SqlType::String || has_non_string_map_key(value),
        SqlType::Array(element) => has_non_string_map_key(element),
        SqlType::Struct(fields) => fields.iter().any(|(_, t)| has_non_string_map_key(t)),
        _ => false,
    }
}

/// The primitive types the KAFKA format can serialize.
fn kafka_supports(ty: &SqlType) -> bool {
    matches!(
        ty,
        SqlType::Int | SqlType::BigInt | SqlType::Double | SqlType::String | SqlType::Bytes
    )
}

/// A type's name without its parameters: `DECIMAL`, `ARRAY`.
fn type_family(ty: &SqlType) -> String {
    let name = ty.to_string();
    name.split(['(', '<'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A table source's rows can change, so only aggregates that can take a
/// row's contribution back apply to it.
fn check_table_aggregates(calls: &[Expr]) -> Result<()> {
    let mut refused: Vec<String> = Vec::new();
    for call in calls {
        if let Expr::Function { name, .. } = call {
            if !RETRACTABLE.contains(&name.as_str()) && !refused.contains(name) {
                refused.push(name.clone());
            }
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    bail!(
        "The aggregation functions {} cannot be applied to a table source, only to a stream source.",
        listing(&refused)
    )
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

/// A DECIMAL column's value rounded to the column's scale: rows hold
/// DECIMALs as doubles, so arithmetic on them leaves binary tails
/// (1.1 * 1.1 = 1.2100000000000002) and quotients more digits than the
/// result type has.
fn to_scale(column: &ColumnDef, value: Value) -> Value {
    match column.ty {
        SqlType::Decimal { .. } => coerce(&value, &column.ty),
        _ => value,
    }
}

/// The sink record for `row`: every output column computed, keys into the
/// key and the rest into the value, in the sink's formats. A group's key
/// columns take the values it was grouped by (`group`, in key order), so no
/// expression is evaluated twice for one row.
fn project(
    outputs: &[(ColumnDef, Expr)],
    sink: &Source,
    row: &Row,
    aggregates: &[(Expr, Value)],
    group: Option<&[Value]>,
    timestamp: i64,
) -> Result<Record> {
    let mut keys = Vec::new();
    let mut values = Vec::new();
    for (column, expr) in outputs {
        if !column.key {
            values.push((column, to_scale(column, eval(expr, row, aggregates)?)));
            continue;
        }
        let value = match group.and_then(|g| g.get(keys.len())) {
            Some(grouped) => grouped.clone(),
            None => eval(expr, row, aggregates)?,
        };
        keys.push((column, to_scale(column, value)));
    }
    Ok(Record {
        topic: sink.topic.clone(),
        key: encode_key(sink.key_format, &keys),
        value: encode_value(sink, &values),
        timestamp,
        window: None,
        partition: 0,
        offset: 0,
    })
}

/// Just the sink key for `row` (for a tombstone, whose value columns are unknown).
fn project_key(outputs: &[(ColumnDef, Expr)], sink: &Source, row: &Row) -> Value {
    let mut keys = Vec::new();
    for (column, expr) in outputs.iter().filter(|(c, _)| c.key) {
        keys.push((column, eval(expr, row, &[]).unwrap_or(Value::Null)));
    }
    encode_key(sink.key_format, &keys)
}

/// An engine that has run `script`, for the crate's tests.
#[cfg(test)]
pub(crate) fn engine_with(script: &str) -> Engine {
    let mut engine = Engine::default();
    for statement in crate::parser::parse(script).unwrap() {
        engine.execute(&statement).unwrap();
    }
    engine
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;
    use serde_json::json;

    /// A record as a test feeds it: partition 0, offset 0, no window.
    fn input(topic: &str, key: Value, value: Value, timestamp: i64) -> Record {
        Record {
            topic: topic.into(),
            key,
            value,
            timestamp,
            window: None,
            partition: 0,
            offset: 0,
        }
    }

    /// What one record at time 0 makes the engine write, as (key, value).
    fn fed(engine: &mut Engine, topic: &str, key: Value, value: Value) -> Vec<(Value, Value)> {
        let out = engine.process(&input(topic, key, value, 0)).unwrap();
        out.into_iter().map(|r| (r.key, r.value)).collect()
    }

    #[test]
    fn group_ids_read_as_their_formatted_text() {
        let values = vec![json!("Rupert \"R\" Ünal"), json!(7), json!(null)];
        let lone = json!("Zoë \\ \u{1}");
        let groupings = [
            (Grouping::Values(values.clone()), Value::Array(values)),
            (Grouping::Column(&lone), json!([lone.clone()])),
        ];
        for (grouping, group) in &groupings {
            assert_eq!(&grouping.to_value(), group);
            for window in [
                None,
                Some((0, 10_000)),
                Some((-5, i64::MAX)),
                Some((i64::MIN, 1)),
            ] {
                let mut id = "stale".to_string();
                write_group_id(&mut id, grouping, &window_suffix(window));
                assert_eq!(id, format!("{group}@{window:?}"));
            }
        }
    }

    #[test]
    fn decimal_results_have_their_types_scale() {
        let mut engine = engine_with(
            "CREATE STREAM T (A DECIMAL(2, 1), B DECIMAL(3, 2)) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM S AS SELECT A + A AS SUM, B * B AS PRODUCT, A / 3 AS QUOTIENT FROM T;",
        );
        let out = engine
            .process(&input(
                "t",
                Value::Null,
                serde_json::json!({"A": 0.1, "B": 1.1}),
                0,
            ))
            .unwrap();
        assert_eq!(
            out[0].value,
            serde_json::json!({"SUM": 0.2, "PRODUCT": 1.21, "QUOTIENT": 0.033333333333})
        );
    }

    #[test]
    fn a_filtering_projection_over_delimited_values() {
        let mut engine = engine_with(
            "CREATE STREAM TEST (K STRING KEY, ID bigint, NAME varchar) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE STREAM S1 AS SELECT K, name, id * 2 AS twice FROM test WHERE id > 100;",
        );
        let record = |key: &str, value: &str| input("t", Value::from(key), Value::from(value), 7);
        assert!(engine.process(&record("0", "0,zero")).unwrap().is_empty());
        let out = engine.process(&record("101", "101,\"a,b\"")).unwrap();
        assert_eq!(
            out,
            vec![input(
                "S1",
                Value::from("101"),
                Value::from("\"a,b\",202"),
                7
            )]
        );
    }

    #[test]
    fn grouped_counts_and_sums_update_per_record_and_having_retracts() {
        let mut engine = engine_with(
            "CREATE STREAM TEST (ID BIGINT KEY, NAME varchar, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE T1 AS SELECT id, count(*), sum(value) AS total FROM test GROUP BY id HAVING sum(value) > 100;",
        );
        let mut feed = |key: i64, value: &str| {
            engine
                .process(&input("t", Value::from(key), Value::from(value), 0))
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
        let mut engine = engine_with(
            "CREATE STREAM TEST (ID BIGINT KEY, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE S2 AS SELECT ID, max(value) FROM test WINDOW TUMBLING (SIZE 30 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY id;",
        );
        let mut feed = |value: &str, timestamp: i64| {
            engine
                .process(&input("t", Value::from(0), Value::from(value), timestamp))
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
    fn an_aggregate_row_carries_its_latest_inputs_time() {
        let mut engine = engine_with(
            "CREATE STREAM TEST (ID BIGINT KEY, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE W AS SELECT ID, COUNT(*) FROM test WINDOW TUMBLING (SIZE 1 SECOND) GROUP BY id;
             CREATE TABLE N AS SELECT ID, COUNT(*) FROM test GROUP BY id;",
        );
        let mut feed = |timestamp: i64| {
            engine
                .process(&input("t", Value::from(0), Value::from("1"), timestamp))
                .unwrap()
                .into_iter()
                .map(|r| r.timestamp)
                .collect::<Vec<_>>()
        };
        assert_eq!(feed(12_345), [12_345, 12_345]);
        assert_eq!(
            feed(12_211),
            [12_345, 12_345],
            "a late record keeps the later time"
        );
    }

    #[test]
    fn pseudo_columns_are_readable_and_reserved() {
        let mut engine = engine_with(
            "CREATE STREAM I (K STRING KEY, V INT) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM O AS SELECT K, ROWPARTITION AS P, ROWOFFSET + 1 AS NEXT FROM I;",
        );
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
        let mut engine = engine_with(
            "CREATE STREAM I (K STRING KEY, V INT, N STRING) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM O AS SELECT K, CASE WHEN V < 10 THEN 'small' WHEN V < 100 THEN 'medium' ELSE 'large' END AS SIZE,
               CAST(V AS STRING) AS S, CAST(V AS DOUBLE) / 4 AS Q, N LIKE 'a_c%' AS M,
               N LIKE 'a!_c%' ESCAPE '!' AS E FROM I;",
        );
        let out = engine
            .process(&input(
                "t",
                Value::from("k"),
                serde_json::json!({"V": 50, "N": "abcdef"}),
                0,
            ))
            .unwrap();
        assert_eq!(
            out[0].value,
            serde_json::json!({"SIZE": "medium", "S": "50", "Q": 12.5, "M": true, "E": false})
        );
    }

    #[test]
    fn sessions_merge_and_retract_what_they_replace() {
        let mut engine = engine_with(
            "CREATE STREAM TEST (ID BIGINT KEY, VALUE bigint) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE S2 AS SELECT ID, count(*) FROM test WINDOW SESSION (30 SECONDS) GROUP BY id;",
        );
        let mut feed = |timestamp: i64| {
            engine
                .process(&input("t", Value::from(0), Value::from("1"), timestamp))
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
        let mut engine = engine_with(
            "CREATE TABLE INPUT (ID STRING PRIMARY KEY, NAME STRING) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE OUTPUT AS SELECT NAME, COUNT(1) FROM INPUT GROUP BY NAME;",
        );
        let mut feed = |key: &str, value: Value| {
            engine
                .process(&input("t", Value::from(key), value, 0))
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
            ("CREATE TABLE O AS SELECT A FROM I GROUP BY A;", "GROUP BY requires aggregate functions in either the SELECT or HAVING clause."),
            ("CREATE TABLE O AS SELECT A + B, COUNT(*) FROM I GROUP BY A;", "Non-aggregate SELECT expression(s) not part of GROUP BY: (A + B)"),
            ("CREATE TABLE O AS SELECT A, B, COUNT(*) FROM I GROUP BY A, B, K;", "The query used to build `O` must include the grouping expression K in its projection"),
        ] {
            let message = engine.execute(&parse(sql).unwrap()[0]).unwrap_err().to_string();
            assert!(message.starts_with(error), "{sql}: {message}");
        }
    }

    #[test]
    fn several_grouping_expressions_make_a_multi_column_key() {
        let mut engine = engine_with(
            "CREATE STREAM I (K STRING KEY, A INT, B STRING) WITH (kafka_topic='t', format='JSON');
             CREATE TABLE J AS SELECT B, A, COUNT(*) AS N FROM I GROUP BY A, B;
             CREATE STREAM D (K STRING KEY, A INT, B STRING) WITH (kafka_topic='d', value_format='JSON', key_format='DELIMITED');
             CREATE TABLE E AS SELECT A, B, COUNT(*) AS N FROM D GROUP BY B, A;",
        );
        let mut feed = |topic: &str, a: Value| {
            engine
                .process(&input(
                    topic,
                    Value::from("k"),
                    serde_json::json!({"A": a, "B": "x"}),
                    0,
                ))
                .unwrap()
                .into_iter()
                .map(|r| (r.key, r.value))
                .collect::<Vec<_>>()
        };
        feed("t", Value::from(1));
        assert_eq!(
            feed("t", Value::from(1)),
            [(
                serde_json::json!({"A": 1, "B": "x"}),
                serde_json::json!({"N": 2})
            )]
        );
        assert!(
            feed("t", Value::Null).is_empty(),
            "a null grouping value drops the row"
        );
        assert_eq!(
            feed("d", Value::from(1)),
            [(Value::from("x,1"), serde_json::json!({"N": 1}))]
        );
    }

    #[test]
    fn complex_values_are_read_through_subscripts_fields_and_lambdas() {
        let mut engine = engine_with(
            "CREATE STREAM I (K STRING KEY, A ARRAY<INT>, M MAP<STRING, INT>, S STRUCT<X STRING>) WITH (kafka_topic='t', format='JSON');
             CREATE STREAM O AS SELECT K, A[1] AS FIRST, A[-1] AS LAST, M['b'] AS B, S->X, FILTER(A, v => v > 1) AS BIG,
               ARRAY[1, 2] AS ARR, STRUCT(Y := A[2]) AS ST, MAP('k' := 3) AS MP,
               REDUCE(A, 0, (s, x) => s + x) AS TOTAL, A = ARRAY[1, 2, 3] AS SAME FROM I;",
        );
        let out = engine
            .process(&input(
                "t",
                Value::from("k"),
                serde_json::json!({"a": [1, 2, 3], "m": {"b": 7}, "s": {"x": "y"}}),
                0,
            ))
            .unwrap();
        assert_eq!(
            out[0].value,
            serde_json::json!({"FIRST": 1, "LAST": 3, "B": 7, "X": "y", "BIG": [2, 3],
                "ARR": [1, 2], "ST": {"Y": 2}, "MP": {"k": 3}, "TOTAL": 6, "SAME": true})
        );
    }

    #[test]
    fn a_table_update_within_one_group_changes_it_once() {
        let mut engine = engine_with(
            "CREATE TABLE T (K INT PRIMARY KEY, G INT, V INT) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE TABLE O AS SELECT G, SUM(V) AS S FROM T GROUP BY G;",
        );
        let mut feed = |value: &str| {
            engine
                .process(&input("t", Value::from(1), Value::from(value), 0))
                .unwrap()
                .into_iter()
                .map(|r| r.value)
                .collect::<Vec<_>>()
        };
        assert_eq!(feed("2,10"), [Value::from("10")]);
        assert_eq!(feed("2,20"), [Value::from("20")]);
    }

    #[test]
    fn windowed_sources_expose_their_bounds_and_pass_windows_on() {
        let mut engine = engine_with(
            "CREATE STREAM W (ID INT KEY, N BIGINT) WITH (kafka_topic='w', value_format='JSON', window_type='Session');
             CREATE STREAM STARTS AS SELECT * FROM W WHERE WINDOWSTART = WINDOWEND;",
        );
        let mut feed = |window: (i64, i64)| {
            engine
                .process(&Record {
                    topic: "w".into(),
                    key: Value::from(5),
                    value: serde_json::json!({"N": 1}),
                    timestamp: 0,
                    window: Some(window),
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
                .into_iter()
                .map(|r| r.window)
                .collect::<Vec<_>>()
        };
        assert_eq!(feed((7, 7)), [Some((7, 7))]);
        assert!(feed((0, 7)).is_empty());
        let size = parse("CREATE STREAM X (N INT) WITH (kafka_topic='x', value_format='JSON', window_type='Tumbling', window_size='30 bobs');").unwrap();
        let error = engine.execute(&size[0]).unwrap_err().to_string();
        assert!(error.ends_with("Unknown time unit: 'BOBS'"), "{error}");
    }

    #[test]
    fn pull_and_limit_rules_speak_ksqldb() {
        let mut engine = engine_with(
            "CREATE TABLE PLAIN (ID INT PRIMARY KEY, N BIGINT) WITH (kafka_topic='t', value_format='JSON');
             CREATE SOURCE TABLE READ_ONLY (ID INT PRIMARY KEY, N BIGINT) WITH (kafka_topic='r', value_format='JSON');
             CREATE TABLE DERIVED AS SELECT * FROM READ_ONLY;",
        );
        let error = |engine: &mut Engine, sql: &str| -> String {
            match parse(sql) {
                Ok(statements) => engine.execute(&statements[0]).unwrap_err().to_string(),
                Err(e) => e.to_string(),
            }
        };
        assert!(error(&mut engine, "SELECT * FROM PLAIN;")
            .starts_with("The `PLAIN` table isn't queryable. To derive a queryable table, you can do 'CREATE TABLE QUERYABLE_PLAIN AS SELECT * FROM PLAIN'."));
        for queryable in [
            "SELECT * FROM READ_ONLY;",
            "SELECT * FROM DERIVED;",
            "SELECT * FROM PLAIN EMIT CHANGES;",
        ] {
            assert!(
                engine.execute(&parse(queryable).unwrap()[0]).is_ok(),
                "{queryable}"
            );
        }
        assert!(error(&mut engine, "SELECT * FROM READ_ONLY LIMIT -1;")
            .starts_with("Pull queries don't support negative integers in the LIMIT clause."));
        assert_eq!(
            error(
                &mut engine,
                "CREATE TABLE L AS SELECT * FROM READ_ONLY LIMIT 2;"
            ),
            "CREATE TABLE AS SELECT statements don't support LIMIT clause."
        );
    }

    #[test]
    fn a_windowed_table_keeps_a_row_per_key_and_window() {
        use serde_json::json;
        let mut engine = engine_with(
            "CREATE TABLE T (ID INT PRIMARY KEY, N BIGINT) WITH (kafka_topic='t', value_format='JSON', window_type='Tumbling', window_size='10 seconds');
             CREATE TABLE C AS SELECT * FROM T;",
        );
        let mut feed = |window: (i64, i64), value: Value| {
            engine
                .process(&Record {
                    topic: "t".into(),
                    key: Value::from(5),
                    value,
                    timestamp: window.0,
                    window: Some(window),
                    partition: 0,
                    offset: 0,
                })
                .unwrap()
                .into_iter()
                .map(|r| (r.window, r.value))
                .collect::<Vec<_>>()
        };
        let first = (0, 10_000);
        let second = (10_000, 20_000);
        assert_eq!(
            feed(first, json!({"N": 1})),
            [(Some(first), json!({"N": 1}))]
        );
        assert_eq!(
            feed(second, json!({"N": 2})),
            [(Some(second), json!({"N": 2}))]
        );
        // A tombstone deletes only its own window's row.
        assert_eq!(feed(first, Value::Null), [(Some(first), Value::Null)]);
        assert!(feed(first, Value::Null).is_empty());
    }

    #[test]
    fn stream_stream_joins_match_within_the_window_and_key_by_the_join_expression() {
        let mut engine = engine_with(
            "CREATE STREAM A (ID INT KEY, FOO STRING) WITH (kafka_topic='a', value_format='JSON');
             CREATE STREAM B (ID INT KEY, BAR STRING) WITH (kafka_topic='b', value_format='JSON');
             CREATE STREAM J AS SELECT X.ID, FOO, B.BAR FROM A X JOIN B WITHIN 5 SECONDS ON X.ID = B.ID;",
        );
        let mut feed = |topic: &str, value: Value, timestamp: i64| {
            engine
                .process(&input(topic, Value::from(1), value, timestamp))
                .unwrap()
                .into_iter()
                .map(|r| (r.key, r.value, r.timestamp))
                .collect::<Vec<_>>()
        };
        assert!(feed("a", serde_json::json!({"FOO": "f"}), 1_000).is_empty());
        assert_eq!(
            feed("b", serde_json::json!({"BAR": "b"}), 3_000),
            [(
                Value::from(1),
                serde_json::json!({"FOO": "f", "B_BAR": "b"}),
                3_000
            )]
        );
        assert!(
            feed("b", serde_json::json!({"BAR": "late"}), 9_000).is_empty(),
            "8 s after the left record: outside the window"
        );
    }

    #[test]
    fn stream_table_left_joins_look_the_table_up() {
        let mut engine = engine_with(
            "CREATE STREAM S (K STRING KEY, T STRING) WITH (kafka_topic='s', value_format='JSON');
             CREATE TABLE T (ID STRING PRIMARY KEY, NAME STRING) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM J AS SELECT * FROM S LEFT JOIN T ON S.T = T.ID;",
        );
        let mut feed = |topic: &str, key: &str, value| fed(&mut engine, topic, key.into(), value);
        assert!(feed("t", "1", serde_json::json!({"NAME": "one"})).is_empty());
        assert_eq!(
            feed("s", "k", serde_json::json!({"T": "1"})),
            [(
                Value::from("1"),
                serde_json::json!({"S_K": "k", "T_ID": "1", "T_NAME": "one"})
            )]
        );
        assert_eq!(
            feed("s", "k", serde_json::json!({"T": "2"})),
            [(
                Value::from("2"),
                serde_json::json!({"S_K": "k", "T_ID": null, "T_NAME": null})
            )]
        );
    }

    #[test]
    fn a_table_table_join_aggregates_each_keys_latest_joined_row() {
        let mut engine = engine_with(
            "CREATE TABLE T1 (ID BIGINT PRIMARY KEY, TOTAL INT) WITH (kafka_topic='t1', value_format='JSON');
             CREATE TABLE T2 (ID BIGINT PRIMARY KEY, TOTAL INT) WITH (kafka_topic='t2', value_format='JSON');
             CREATE TABLE OUTPUT AS SELECT T1.ID, SUM(T2.TOTAL) AS SUM, COUNT(*) AS N
               FROM T1 LEFT JOIN T2 ON T1.ID = T2.ID GROUP BY T1.ID;",
        );
        let mut feed = |topic: &str, key: i64, value| fed(&mut engine, topic, key.into(), value);
        let sum = |key: i64, sum: i64| (json!(key), json!({"SUM": sum, "N": 1}));
        // No match yet: the left row alone, whose SUM of nulls is 0.
        assert_eq!(feed("t1", 0, json!({"TOTAL": 100})), [sum(0, 0)]);
        // Each change on the right replaces the key's joined row: the old one
        // leaves the group (N stays 1), the new one comes in.
        assert_eq!(feed("t2", 0, json!({"TOTAL": 5})), [sum(0, 5)]);
        assert_eq!(feed("t2", 0, json!({"TOTAL": 20})), [sum(0, 20)]);
        assert_eq!(feed("t2", 0, Value::Null), [sum(0, 0)]);
    }

    #[test]
    fn insert_values_writes_a_record_and_source_streams_are_read_only() {
        let mut engine = engine_with(
            "CREATE STREAM S (ID INT KEY, NAME STRING) WITH (kafka_topic='s', value_format='JSON');
             INSERT INTO S (ID, NAME) VALUES (1, 'a');
             CREATE SOURCE STREAM R (ID INT KEY, NAME STRING) WITH (kafka_topic='r', value_format='JSON');",
        );
        let inserted = engine.take_inserted();
        assert_eq!(
            (inserted[0].key.clone(), inserted[0].value.clone()),
            (Value::from(1), serde_json::json!({"NAME": "a"}))
        );
        for (sql, error) in [
            ("INSERT INTO R VALUES (1, 'b');", "Cannot insert values into read-only stream: R"),
            ("INSERT INTO \"r\" VALUES (1, 'b');", "Cannot insert values into an unknown stream/table: `r`\nDid you mean R?"),
            ("ALTER STREAM R ADD COLUMN X INT;", "Cannot alter stream 'R': ALTER operations are not supported on source streams."),
            (
                "CREATE OR REPLACE STREAM R (ID INT KEY) WITH (kafka_topic='r', value_format='JSON');",
                "Cannot add stream 'R': CREATE OR REPLACE is not supported on source streams.",
            ),
        ] {
            let message = engine.execute(&parse(sql).unwrap()[0]).unwrap_err().to_string();
            assert!(message.starts_with(error), "{sql}: {message}");
        }
    }

    #[test]
    fn format_errors_quote_the_statement_as_ksqldb_prints_it() {
        let mut engine = Engine::default();
        let create = parse("CREATE STREAM I (K STRING KEY, A INT, B INT) WITH (kafka_topic='t', value_format='JSON');").unwrap();
        engine.execute(&create[0]).unwrap();
        let statement =
            parse("CREATE TABLE O AS SELECT A, B AS X, COUNT(*) FROM I GROUP BY A, B;").unwrap();
        let message = engine.execute(&statement[0]).unwrap_err().to_string();
        assert!(
            message.ends_with(
                "Statement: CREATE TABLE O AS SELECT\n  I.A A,\n  I.B X,\n  COUNT(*) KSQL_COL_0\nFROM I I\nGROUP BY I.A, I.B\nEMIT CHANGES"
            ),
            "{message}"
        );
    }
}

//! Pull queries: a SELECT without EMIT, answered from what a table holds now
//! (its latest row per key and window, a [`View`]) or from the records a
//! stream has. The planner reads the WHERE clause as ksqlDB does — key
//! lookups (`=`, `IN`, every column of a multi-column key), WINDOWSTART and
//! WINDOWEND bounds, or a table scan when `ksql.query.pull.table.scan.enabled`
//! allows one — with ksqlDB's rules and messages. Rows come in a state
//! store's order: partition, then the key's serialized bytes, then window.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::engine::{Engine, Executed, Record, Source};
use crate::eval::{eval, Row};
use crate::format::encode_key;
use crate::join::resolve;
use crate::parser::{BinaryOp, ColumnDef, Expr, Select, SourceKind, SqlType, Statement};
use crate::plan::{children, children_mut, PSEUDO_COLUMNS};
use crate::time::parse_partial_datetime;
use crate::types::{coerce, java_text};

/// ksqlDB's help after a pull query's refusal.
const SYNTAX_HELP: &str =
    "See https://cnfl.io/queries for more info.\nAdd EMIT CHANGES if you intended to issue a push query.";

/// The properties that shape pull queries, ksqlDB's defaults unless set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullSettings {
    /// `ksql.query.pull.table.scan.enabled`: a WHERE clause that is not a key
    /// lookup scans the table (else it is refused).
    pub table_scan: bool,
    /// `ksql.query.pull.limit.clause.enabled`.
    pub limit_clause: bool,
}

impl Default for PullSettings {
    fn default() -> Self {
        PullSettings {
            table_scan: true,
            limit_clause: true,
        }
    }
}

impl PullSettings {
    /// Takes in one property, given as text or as JSON (`true`, `"false"`);
    /// others are left to whoever reads them.
    pub fn set(&mut self, name: &str, value: &Value) {
        let enabled = match value {
            Value::Bool(b) => *b,
            Value::String(s) => s.eq_ignore_ascii_case("true"),
            _ => return,
        };
        match name {
            "ksql.query.pull.table.scan.enabled" => self.table_scan = enabled,
            "ksql.query.pull.limit.clause.enabled" => self.limit_clause = enabled,
            _ => {}
        }
    }
}

/// A pull query, planned: its transient query (alone in an engine) and the
/// keys it looks up, or none to read every row.
pub struct Pull {
    engine: Engine,
    id: String,
    topic: String,
    kind: SourceKind,
    columns: Vec<ColumnDef>,
    /// Serialized keys to look up, in the WHERE clause's order; None scans.
    keys: Option<Vec<Vec<u8>>>,
    limit: Option<u64>,
}

/// What a pull query returns: rows in its columns' order and, for a stream,
/// how it ended (`Limit Reached` or `Query Completed`, as ksqlDB says).
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    pub rows: Vec<Vec<Value>>,
    pub final_message: Option<&'static str>,
}

/// Where a table's row sits in its store: partition, serialized key, window.
type Slot = (i32, Vec<u8>, Option<(i64, i64)>);

/// A table's rows as its state store holds them: the latest per key and
/// window, ordered by partition, serialized key, window.
#[derive(Debug, Clone, Default)]
pub struct View {
    partitions: i32,
    rows: BTreeMap<Slot, Record>,
}

impl View {
    /// An empty view of a topic with `partitions` partitions.
    pub fn new(partitions: i32) -> View {
        View {
            partitions: partitions.max(1),
            rows: BTreeMap::new(),
        }
    }

    /// A record of the table's topic (its `partition` set), `key` its
    /// serialized key without the window: it replaces its key's (and
    /// window's) row, a tombstone deletes it.
    pub fn apply(&mut self, key: Vec<u8>, record: Record) {
        let at = (record.partition, key, record.window);
        if record.value.is_null() {
            self.rows.remove(&at);
        } else {
            self.rows.insert(at, record);
        }
    }

    /// Every row of one serialized key, in window order.
    fn rows_of<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = &'a Record> + 'a {
        let partition = partition_for(key, self.partitions);
        let key = key.to_vec();
        self.rows
            .range((partition, key.clone(), None)..)
            .take_while(move |((p, k, _), _)| *p == partition && *k == key)
            .map(|(_, record)| record)
    }
}

/// The partition Kafka's default partitioner (Java's murmur2) gives a key.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions.max(1)
}

/// Kafka's murmur2 hash (`Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

impl Pull {
    /// The transient query's id (ksqlDB's header names it).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic whose rows (a table's view, or a stream's records) it reads.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// A table pull reads a [`View`]; a stream pull every record.
    pub fn reads_table(&self) -> bool {
        self.kind == SourceKind::Table
    }

    /// The columns of its rows.
    pub fn columns(&self) -> &[ColumnDef] {
        &self.columns
    }

    /// Runs it over a table's view: the looked-up keys' rows, or all of
    /// them, in the view's order. A table pull has no final message.
    pub fn from_table(&self, view: &View) -> Result<Pulled> {
        let rows: Vec<&Record> = match &self.keys {
            None => view.rows.values().collect(),
            Some(keys) => {
                // ksqlDB looks keys up partition by partition, the partitions
                // in the order their first key comes, each key once.
                let mut partitions: Vec<(i32, Vec<&Vec<u8>>)> = Vec::new();
                for key in keys {
                    let p = partition_for(key, view.partitions);
                    match partitions.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, keys)) if keys.contains(&key) => {}
                        Some((_, keys)) => keys.push(key),
                        None => partitions.push((p, vec![key])),
                    }
                }
                partitions
                    .iter()
                    .flat_map(|(_, keys)| keys.iter().flat_map(|key| view.rows_of(key)))
                    .collect()
            }
        };
        let (rows, _) = self.project(rows)?;
        Ok(Pulled {
            rows,
            final_message: None,
        })
    }

    /// Runs it over a stream's records (in partition, then offset order):
    /// it ends when LIMIT is reached or the records are.
    pub fn from_stream<'a>(&self, records: impl IntoIterator<Item = &'a Record>) -> Result<Pulled> {
        let (rows, limited) = self.project(records)?;
        Ok(Pulled {
            rows,
            final_message: Some(if limited {
                "Limit Reached"
            } else {
                "Query Completed"
            }),
        })
    }

    /// The rows the transient query makes of `records` (its WHERE applied),
    /// up to LIMIT; and whether LIMIT stopped it.
    fn project<'a>(
        &self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> Result<(Vec<Vec<Value>>, bool)> {
        let limit = self.limit.unwrap_or(u64::MAX) as usize;
        let mut engine = self.engine.clone();
        let mut rows = Vec::new();
        if limit == 0 {
            return Ok((rows, true));
        }
        for record in records {
            for out in engine.process(record)? {
                if out.value.is_null() {
                    continue;
                }
                rows.push(engine.display_row(&self.id, &out));
                if rows.len() == limit {
                    return Ok((rows, true));
                }
            }
        }
        Ok((rows, false))
    }
}

impl Engine {
    /// Plans a pull query (a SELECT without EMIT): ksqlDB's checks, then the
    /// keys its WHERE clause looks up or a scan.
    pub fn plan_pull(&mut self, select: &Select, settings: PullSettings) -> Result<Pull> {
        if !select.joins.is_empty() {
            bail!("Pull queries don't support JOIN clauses. {SYNTAX_HELP}");
        }
        if select.limit.is_some() && !settings.limit_clause {
            bail!("LIMIT clause in pull queries is currently disabled. You can enable them by setting ksql.query.pull.limit.clause.enabled=true. {SYNTAX_HELP}");
        }
        let (mut select, from, _) = resolve(select, &self.sources)?;
        let windowed = from.window.is_some();
        if let Some(filter) = &mut select.filter {
            if !windowed {
                if let Some(bound) = window_bound_in(filter) {
                    bail!("WHERE column '{bound}' cannot be resolved.");
                }
            }
            window_bounds_as_millis(filter)?;
        }
        let Executed::Transient { id, .. } = self.execute(&Statement::Query(select.clone()))?
        else {
            unreachable!("a SELECT registers a transient query")
        };
        let engine = self.only(&id).expect("the query was just registered");
        // A pull query's window bounds are its rows' keys, as in ksqlDB.
        let mut columns = self.shown_columns(&id);
        for column in columns.iter_mut().filter(|c| is_window_bound(&c.name)) {
            column.key = windowed;
        }
        let keys = match from.kind {
            SourceKind::Table => self.lookup_keys(&from, select.filter.as_ref(), settings),
            SourceKind::Stream => Ok(None),
        };
        self.execute(&Statement::Terminate {
            query: Some(id.clone()),
        })?;
        Ok(Pull {
            engine,
            id,
            topic: from.topic.clone(),
            kind: from.kind,
            columns,
            keys: keys?,
            limit: select.limit,
        })
    }

    /// The serialized keys a table pull's WHERE clause looks up, or None
    /// when it needs a table scan (refused unless scans are enabled).
    fn lookup_keys(
        &self,
        from: &Source,
        filter: Option<&Expr>,
        settings: PullSettings,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        let windowed = from.window.is_some();
        let Some(filter) = filter else {
            if settings.table_scan {
                return Ok(None);
            }
            return Err(invalid_where("Missing WHERE clause", windowed));
        };
        let keys: Vec<&ColumnDef> = from.columns.iter().filter(|c| c.key).collect();
        let disjuncts = disjuncts(filter);
        for disjunct in &disjuncts {
            let mut check = Check {
                from,
                keys: &keys,
                settings,
                seen: vec![false; keys.len()],
                scan: false,
            };
            for atom in disjunct {
                check.atom(atom)?;
            }
            let seen = check.seen.iter().filter(|s| **s).count();
            let refusal = if check.scan {
                None
            } else if seen == 0 {
                Some(format!(
                    "WHERE clause missing key column for disjunct: {}",
                    conjunction(disjunct)
                ))
            } else if seen != keys.len() {
                let specified: Vec<&str> = keys
                    .iter()
                    .zip(&check.seen)
                    .filter(|(_, s)| **s)
                    .map(|(k, _)| k.name.as_str())
                    .collect();
                Some(format!(
                    "Multi-column sources must specify every key in the WHERE clause. Specified: [{}] Expected: {}",
                    specified.join(", "),
                    key_list(&keys)
                ))
            } else {
                continue;
            };
            match refusal {
                Some(message) if !settings.table_scan => {
                    return Err(invalid_where(&message, windowed))
                }
                _ => return Ok(None),
            }
        }
        let mut lookups = Vec::new();
        for disjunct in &disjuncts {
            if windowed {
                check_window_bounds(disjunct)?;
            }
            let Some(values) = key_values(disjunct, &keys)? else {
                // A range on the key: a scan with the WHERE clause as its filter.
                return Ok(None);
            };
            let typed: Vec<(&ColumnDef, Value)> = keys.iter().copied().zip(values).collect();
            let key = encode_key(from.key_format, &typed);
            if let Some(bytes) = self.key_bytes(&from.topic, &key)? {
                lookups.push(bytes);
            }
        }
        Ok(Some(lookups))
    }
}

/// ksqlDB's refusal of a pull query's WHERE clause, with its explanation.
fn invalid_where(message: &str, windowed: bool) -> anyhow::Error {
    let window_help = if windowed {
        "\n - (optionally) limits the time bounds of the windowed table.\n\t Bounds on [`WINDOWSTART`, `WINDOWEND`] are supported\n\t Supported operators are [EQUAL, GREATER_THAN, GREATER_THAN_OR_EQUAL, LESS_THAN, LESS_THAN_OR_EQUAL]"
    } else {
        ""
    };
    anyhow!(
        "{message}. {SYNTAX_HELP}\nPull queries require a WHERE clause that:\n - includes a key equality expression, e.g. `SELECT * FROM X WHERE <key-column> = Y;`.\n - in the case of a multi-column key, is a conjunction of equality expressions that cover all key columns.\n - to support range expressions, e.g.,  SELECT * FROM X WHERE <key-column> < Y;`, range scans need to be enabled by setting ksql.query.pull.range.scan.enabled=true{window_help}\nIf more flexible queries are needed, , table scans can be enabled by setting ksql.query.pull.table.scan.enabled=true."
    )
}

/// Key columns as ksqlDB lists a schema's key: `` [`ID` STRING KEY] ``.
fn key_list(keys: &[&ColumnDef]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| format!("`{}` {} KEY", k.name, k.ty))
        .collect();
    format!("[{}]", keys.join(", "))
}

/// A WHERE clause as an OR of ANDs (ksqlDB's disjunctive normal form): each
/// disjunct is its atoms; `x IN (a, b)` is `x = a OR x = b`, and
/// `x BETWEEN a AND b` is `x >= a AND x <= b`.
fn disjuncts(expr: &Expr) -> Vec<Vec<Expr>> {
    match expr {
        Expr::Binary(BinaryOp::Or, a, b) => {
            let mut all = disjuncts(a);
            all.extend(disjuncts(b));
            all
        }
        Expr::Binary(BinaryOp::And, a, b) => {
            let (left, right) = (disjuncts(a), disjuncts(b));
            let mut all = Vec::with_capacity(left.len() * right.len());
            for l in &left {
                for r in &right {
                    all.push(l.iter().chain(r).cloned().collect());
                }
            }
            all
        }
        Expr::In {
            expr,
            list,
            negated: false,
        } => list
            .iter()
            .map(|item| {
                vec![Expr::Binary(
                    BinaryOp::Eq,
                    expr.clone(),
                    Box::new(item.clone()),
                )]
            })
            .collect(),
        Expr::Between {
            expr,
            low,
            high,
            negated: false,
        } => vec![vec![
            Expr::Binary(BinaryOp::GtEq, expr.clone(), low.clone()),
            Expr::Binary(BinaryOp::LtEq, expr.clone(), high.clone()),
        ]],
        other => vec![vec![other.clone()]],
    }
}

/// A disjunct's atoms joined by AND again, as ksqlDB prints it.
fn conjunction(atoms: &[Expr]) -> Expr {
    let mut atoms = atoms.iter().cloned();
    let first = atoms.next().unwrap_or(Expr::Literal(Value::Bool(true)));
    atoms.fold(first, |all, atom| {
        Expr::Binary(BinaryOp::And, Box::new(all), Box::new(atom))
    })
}

fn is_comparison(op: BinaryOp) -> bool {
    matches!(
        op,
        BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq
    )
}

fn is_window_bound(name: &str) -> bool {
    name == "WINDOWSTART" || name == "WINDOWEND"
}

/// A comparison's column and its other side: the right side if it is a
/// column (as ksqlDB looks there first), else the left; None if neither is.
fn column_side<'a>(left: &'a Expr, right: &'a Expr) -> Option<(&'a str, &'a Expr)> {
    match (left, right) {
        (_, Expr::Column(c)) => Some((c, left)),
        (Expr::Column(c), _) => Some((c, right)),
        _ => None,
    }
}

fn reads_a_column(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(_) | Expr::Qualified { .. })
        || children(expr).into_iter().any(reads_a_column)
}

/// The first WINDOWSTART or WINDOWEND an expression reads.
fn window_bound_in(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(c) if is_window_bound(c) => Some(c.clone()),
        _ => children(expr).into_iter().find_map(window_bound_in),
    }
}

/// Text compared with WINDOWSTART or WINDOWEND is a datetime
/// (`'2020-02-23T23:45:12.000-0100'`): replaced by its epoch milliseconds,
/// so the WHERE clause compares numbers.
fn window_bounds_as_millis(expr: &mut Expr) -> Result<()> {
    if let Expr::Binary(op, left, right) = expr {
        let text_side = match (&**left, &**right) {
            (Expr::Column(c), Expr::Literal(Value::String(text))) if is_window_bound(c) => {
                Some((text.clone(), &mut **right))
            }
            (Expr::Literal(Value::String(text)), Expr::Column(c)) if is_window_bound(c) => {
                Some((text.clone(), &mut **left))
            }
            _ => None,
        };
        if let Some((text, side)) = text_side.filter(|_| is_comparison(*op)) {
            let millis = parse_partial_datetime(&text)
                .ok_or_else(|| invalid_where(&format!("Failed to parse datetime: {text}"), true))?;
            *side = Expr::Literal(Value::from(millis));
            return Ok(());
        }
    }
    children_mut(expr)
        .into_iter()
        .try_for_each(window_bounds_as_millis)
}

/// ksqlDB's checks of one disjunct's atoms.
struct Check<'a> {
    from: &'a Source,
    keys: &'a [&'a ColumnDef],
    settings: PullSettings,
    /// Which key columns the disjunct compares.
    seen: Vec<bool>,
    /// Something in it needs a table scan (which scans allow).
    scan: bool,
}

impl Check<'_> {
    fn windowed(&self) -> bool {
        self.from.window.is_some()
    }

    /// Needs a table scan: fine when scans are enabled, else refused.
    fn scan_or(&mut self, message: &str) -> Result<()> {
        if self.settings.table_scan {
            self.scan = true;
            Ok(())
        } else {
            Err(invalid_where(message, self.windowed()))
        }
    }

    fn atom(&mut self, atom: &Expr) -> Result<()> {
        let Expr::Binary(op, left, right) = atom else {
            if let Expr::Like { expr, .. } = atom {
                if !matches!(**expr, Expr::Column(_)) {
                    return self.scan_or("Like condition must be between strings");
                }
                return Ok(());
            }
            return Err(invalid_where(
                &format!("Unsupported expression in WHERE clause: {atom}"),
                false,
            ));
        };
        if !is_comparison(*op) {
            return Err(invalid_where(
                &format!("Unsupported expression in WHERE clause: {atom}"),
                false,
            ));
        }
        let Some((column, other)) = column_side(left, right) else {
            return self.scan_or("A comparison must directly reference a key column");
        };
        if reads_a_column(other) {
            return self
                .scan_or("A comparison must be between a key column and a resolvable expression");
        }
        if is_window_bound(column) {
            if *op == BinaryOp::NotEq {
                return Err(invalid_where(
                    &format!("Unsupported {column} bounds: NOT_EQUAL"),
                    true,
                ));
            }
            if !self.windowed() {
                return Err(invalid_where(
                    "Cannot use WINDOWSTART/WINDOWEND on non-windowed source",
                    false,
                ));
            }
            return Ok(());
        }
        let Some(at) = self.keys.iter().position(|k| k.name == column) else {
            let known = PSEUDO_COLUMNS.contains(&column)
                || self.from.columns.iter().any(|c| c.name == column);
            if !known {
                return Err(invalid_where(
                    &format!("Bound on non-existent column {column}"),
                    self.windowed(),
                ));
            }
            return Ok(());
        };
        if *op == BinaryOp::NotEq {
            let message = format!(
                "Bound on key columns '{}' must currently be '='",
                key_list(self.keys)
            );
            self.scan_or(&message)?;
        }
        if self.seen[at] && !self.settings.table_scan {
            return Err(invalid_where(
                "A comparison condition on the key column cannot be combined with other comparisons such as an IN predicate",
                self.windowed(),
            ));
        }
        self.seen[at] = true;
        Ok(())
    }
}

/// ksqlDB's checks of a disjunct's WINDOWSTART and WINDOWEND bounds: each
/// a number, at most one of each kind per bound, and an equality alone.
fn check_window_bounds(disjunct: &[Expr]) -> Result<()> {
    // Per bound: whether an equality, an upper and a lower bound were seen.
    let mut seen: [[bool; 3]; 2] = [[false; 3]; 2];
    for atom in disjunct {
        let Expr::Binary(op, left, right) = atom else {
            continue;
        };
        let Some((column, other)) = column_side(left, right) else {
            continue;
        };
        let Some(bound) = ["WINDOWSTART", "WINDOWEND"]
            .iter()
            .position(|b| *b == column)
        else {
            continue;
        };
        let is_number = eval(other, &Row::default(), &[])
            .ok()
            .is_some_and(|v| v.is_i64() || v.is_u64());
        if !is_number {
            return Err(invalid_where(
                "Window bounds must resolve to an INT, BIGINT, or STRING containing a datetime.",
                true,
            ));
        }
        // With the column on the right, `a < WINDOWSTART` is a lower bound.
        let flipped = matches!(**right, Expr::Column(_));
        let (kind, name) = match (op, flipped) {
            (BinaryOp::Eq, _) => (0, "EQUAL"),
            (BinaryOp::Lt | BinaryOp::LtEq, false) | (BinaryOp::Gt | BinaryOp::GtEq, true) => {
                (1, "LESS_THAN")
            }
            _ => (2, "GREATER_THAN"),
        };
        if std::mem::replace(&mut seen[bound][kind], true) {
            return Err(invalid_where(
                &format!("Duplicate {column} bounds on: {name}"),
                true,
            ));
        }
        if seen[bound][0] && (seen[bound][1] || seen[bound][2]) {
            return Err(invalid_where(
                &format!("`{atom}` cannot be combined with other {column} bounds"),
                true,
            ));
        }
    }
    Ok(())
}

/// The key a disjunct looks up, a value per key column (the first equality
/// on each), or None when some key column is only bounded by a range.
fn key_values(disjunct: &[Expr], keys: &[&ColumnDef]) -> Result<Option<Vec<Value>>> {
    let mut values: Vec<Option<(BinaryOp, Value)>> = vec![None; keys.len()];
    for atom in disjunct {
        let Expr::Binary(op, left, right) = atom else {
            continue;
        };
        let Some((column, other)) = column_side(left, right) else {
            continue;
        };
        let Some(at) = keys.iter().position(|k| k.name == column) else {
            continue;
        };
        let key = resolve_key(other, keys[at], atom)?;
        match &values[at] {
            Some((BinaryOp::Eq, _)) => {}
            Some(_) if *op != BinaryOp::Eq => {}
            _ => values[at] = Some((*op, key)),
        }
    }
    Ok(values
        .into_iter()
        .map(|v| v.filter(|(op, _)| *op == BinaryOp::Eq).map(|(_, v)| v))
        .collect())
}

/// The value a key column is compared with, of the column's type: ksqlDB
/// refuses null and anything that is not already of that type (an integer
/// may stand for a DOUBLE, text never for a number).
fn resolve_key(expr: &Expr, key: &ColumnDef, atom: &Expr) -> Result<Value> {
    let value = match expr {
        Expr::Literal(value) => value.clone(),
        other => coerce(&eval(other, &Row::default(), &[])?, &key.ty),
    };
    if value.is_null() {
        bail!("Primary key columns can not be NULL: {atom}");
    }
    strictly(&value, &key.ty).ok_or_else(|| {
        anyhow!(
            "'{}' can not be converted to the type of the key column: {} {} KEY",
            java_text(&value),
            key.name,
            key.ty
        )
    })
}

/// `value` as a value of `ty` when it is one without conversion.
fn strictly(value: &Value, ty: &SqlType) -> Option<Value> {
    let fits = match (value, ty) {
        (Value::Number(n), SqlType::Int | SqlType::BigInt) => n.is_i64() || n.is_u64(),
        (Value::Number(_), SqlType::Double | SqlType::Decimal { .. }) => true,
        (Value::String(_), SqlType::String) => true,
        (Value::Bool(_), SqlType::Boolean) => true,
        (Value::Array(_), SqlType::Array(_)) | (Value::Object(_), SqlType::Struct(_)) => true,
        _ => false,
    };
    fits.then(|| coerce(value, ty))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::engine_with;
    use crate::parser::parse;

    const STREAM: &str =
        "CREATE STREAM INPUT (ID STRING KEY, V INT) WITH (kafka_topic='i', value_format='JSON');";

    /// An engine whose AGGREGATE counts INPUT's records per ID (per
    /// second-long window if `window`), fed `inputs` (key, timestamp), and
    /// the view of AGGREGATE over 4 partitions.
    fn aggregate(window: &str, inputs: &[(&str, i64)]) -> (Engine, View) {
        let mut engine = engine_with(&format!(
            "{STREAM} CREATE TABLE AGGREGATE AS SELECT ID, COUNT(1) AS COUNT FROM INPUT {window} GROUP BY ID;"
        ));
        let mut view = View::new(4);
        for (key, timestamp) in inputs {
            let input = Record {
                topic: "i".into(),
                key: Value::from(*key),
                value: serde_json::json!({"V": 1}),
                timestamp: *timestamp,
                window: None,
                partition: 0,
                offset: 0,
            };
            for mut out in engine.process(&input).unwrap() {
                let key = engine.key_bytes(&out.topic, &out.key).unwrap().unwrap();
                out.partition = partition_for(&key, 4);
                view.apply(key, out);
            }
        }
        (engine, view)
    }

    fn pull(
        engine: &mut Engine,
        view: &View,
        sql: &str,
        settings: PullSettings,
    ) -> Result<Vec<Vec<Value>>> {
        let Statement::Query(select) = parse(sql)?.remove(0) else {
            panic!("not a SELECT: {sql}")
        };
        Ok(engine.plan_pull(&select, settings)?.from_table(view)?.rows)
    }

    fn ids(rows: &[Vec<Value>]) -> Vec<&str> {
        rows.iter()
            .map(|r| r[0].as_str().unwrap_or_default())
            .collect()
    }

    #[test]
    fn murmur2_places_keys_as_kafkas_default_partitioner() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        assert_eq!(murmur2(b"21"), (-973_932_308i32) as u32);
        assert_eq!(murmur2(b"foobar"), (-790_332_482i32) as u32);
        assert_eq!(
            murmur2(b"a-little-bit-long-string"),
            (-985_981_536i32) as u32
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
        assert_eq!(partition_for(b"10", 4), 2);
        assert_eq!(partition_for(b"11", 4), 0);
    }

    #[test]
    fn key_lookups_read_their_keys_and_scans_read_partition_then_key_order() {
        let inputs = [
            ("8", 1),
            ("9", 2),
            ("10", 3),
            ("10", 4),
            ("11", 5),
            ("12", 6),
        ];
        let (mut engine, view) = aggregate("", &inputs);
        let on = PullSettings::default();
        let rows = pull(
            &mut engine,
            &view,
            "SELECT * FROM AGGREGATE WHERE ID='10';",
            on,
        )
        .unwrap();
        assert_eq!(rows, [[Value::from("10"), Value::from(2)]]);
        // IN: partition by partition as the keys first name them ('8' on 3, '10' on 2).
        let rows = pull(
            &mut engine,
            &view,
            "SELECT ID FROM AGGREGATE WHERE ID IN ('8', '10', 'x');",
            on,
        )
        .unwrap();
        assert_eq!(ids(&rows), ["8", "10"]);
        let rows = pull(
            &mut engine,
            &view,
            "SELECT ID, ROWTIME FROM AGGREGATE WHERE ID = '10' OR ID = '9';",
            on,
        )
        .unwrap();
        assert_eq!(
            rows[0],
            [Value::from("10"), Value::from(4)],
            "the latest input's time"
        );
        let rows = pull(&mut engine, &view, "SELECT * FROM AGGREGATE;", on).unwrap();
        assert_eq!(ids(&rows), ["11", "10", "12", "8", "9"]);
        let rows = pull(
            &mut engine,
            &view,
            "SELECT * FROM AGGREGATE WHERE COUNT > 1 LIMIT 5;",
            on,
        )
        .unwrap();
        assert_eq!(ids(&rows), ["10"]);
    }

    #[test]
    fn window_bounds_take_numbers_and_datetimes() {
        let inputs = [
            ("10", 12_345),
            ("10", 13_345),
            ("10", 14_345),
            ("11", 13_000),
        ];
        let (mut engine, view) = aggregate("WINDOW TUMBLING (SIZE 1 SECOND)", &inputs);
        let on = PullSettings::default();
        let starts = |engine: &mut Engine, filter: &str| -> Vec<Value> {
            let sql = format!("SELECT * FROM AGGREGATE WHERE ID='10' AND {filter};");
            pull(engine, &view, &sql, on)
                .unwrap()
                .into_iter()
                .map(|r| r[1].clone())
                .collect()
        };
        assert_eq!(
            starts(&mut engine, "WINDOWSTART = 13000"),
            [Value::from(13_000)]
        );
        assert_eq!(
            starts(&mut engine, "13000 <= WINDOWSTART"),
            [Value::from(13_000), Value::from(14_000)]
        );
        assert_eq!(
            starts(&mut engine, "WINDOWSTART > 12000 AND WINDOWEND <= 14000"),
            [Value::from(13_000)]
        );
        assert_eq!(
            starts(&mut engine, "WINDOWSTART < '1970-01-01T00:00:13.000'"),
            [Value::from(12_000)]
        );
        assert_eq!(
            starts(&mut engine, "WINDOWSTART = '1970-01-01T01:00:14.000+0100'"),
            [Value::from(14_000)]
        );
        let columns = {
            let Statement::Query(select) =
                parse("SELECT ID, WINDOWSTART, COUNT FROM AGGREGATE WHERE ID='10';")
                    .unwrap()
                    .remove(0)
            else {
                unreachable!()
            };
            engine.plan_pull(&select, on).unwrap().columns().to_vec()
        };
        assert!(columns[1].key, "a pull query's window bounds are keys");
    }

    #[test]
    fn refusals_speak_ksqldb() {
        let (mut engine, view) = aggregate("", &[]);
        let off = PullSettings {
            table_scan: false,
            limit_clause: false,
        };
        let error =
            |engine: &mut Engine, sql: &str| pull(engine, &view, sql, off).unwrap_err().to_string();
        for (sql, message) in [
            ("SELECT * FROM AGGREGATE WHERE COUNT = 100;", "WHERE clause missing key column for disjunct: (COUNT = 100). See https://cnfl.io/queries"),
            ("SELECT * FROM AGGREGATE WHERE ID != '100';", "Bound on key columns '[`ID` STRING KEY]' must currently be '='. "),
            ("SELECT * FROM AGGREGATE WHERE CONCAT(ID, 'x') = 'y';", "A comparison must directly reference a key column."),
            ("SELECT * FROM AGGREGATE WHERE ID = CAST(COUNT AS STRING);", "A comparison must be between a key column and a resolvable expression."),
            ("SELECT * FROM AGGREGATE WHERE '0' < ID AND ID < '100';", "A comparison condition on the key column cannot be combined with other comparisons such as an IN predicate"),
            ("SELECT * FROM AGGREGATE WHERE ID IN (NULL);", "Primary key columns can not be NULL: (ID = null)"),
            ("SELECT * FROM AGGREGATE WHERE ID IN (10);", "'10' can not be converted to the type of the key column: ID STRING KEY"),
            ("SELECT * FROM AGGREGATE WHERE ID = '1' AND WINDOWSTART = 1;", "WHERE column 'WINDOWSTART' cannot be resolved"),
            ("SELECT * FROM AGGREGATE A JOIN INPUT I ON A.ID = I.ID;", "Pull queries don't support JOIN clauses."),
            ("SELECT * FROM AGGREGATE WHERE ID = '1' LIMIT 1;", "LIMIT clause in pull queries is currently disabled."),
            ("SELECT * FROM AGGREGATE;", "Missing WHERE clause. "),
        ] {
            let got = error(&mut engine, sql);
            assert!(got.contains(message), "{sql}: {got}");
        }
        let mut multi = engine_with(
            "CREATE STREAM I (ID INT KEY, COL INT) WITH (kafka_topic='m', format='JSON');
             CREATE TABLE T AS SELECT ID, COL, COUNT(1) AS N FROM I GROUP BY ID, COL;",
        );
        let got = pull(
            &mut multi,
            &View::new(1),
            "SELECT * FROM T WHERE ID = 10;",
            off,
        )
        .unwrap_err();
        assert!(got.to_string().starts_with("Multi-column sources must specify every key in the WHERE clause. Specified: [ID] Expected: [`ID` INTEGER KEY, `COL` INTEGER KEY]"), "{got}");
        let scanned = pull(
            &mut multi,
            &View::new(1),
            "SELECT * FROM T WHERE ID = 10;",
            PullSettings::default(),
        );
        assert_eq!(
            scanned.unwrap(),
            Vec::<Vec<Value>>::new(),
            "with scans on, a scan"
        );
    }

    #[test]
    fn a_stream_pull_ends_at_its_limit_or_its_records() {
        let mut engine = engine_with(STREAM);
        let records: Vec<Record> = (0..3)
            .map(|i| Record {
                topic: "i".into(),
                key: Value::from(i.to_string()),
                value: serde_json::json!({"V": i}),
                timestamp: i,
                window: None,
                partition: 0,
                offset: i,
            })
            .collect();
        let mut run = |sql: &str| {
            let Statement::Query(select) = parse(sql).unwrap().remove(0) else {
                unreachable!()
            };
            let pull = engine.plan_pull(&select, PullSettings::default()).unwrap();
            assert!(!pull.reads_table());
            let pulled = pull.from_stream(&records).unwrap();
            (pulled.rows.len(), pulled.final_message)
        };
        assert_eq!(
            run("SELECT * FROM INPUT LIMIT 2;"),
            (2, Some("Limit Reached"))
        );
        assert_eq!(
            run("SELECT * FROM INPUT LIMIT 0;"),
            (0, Some("Limit Reached"))
        );
        assert_eq!(
            run("SELECT * FROM INPUT WHERE V > 0;"),
            (2, Some("Query Completed"))
        );
    }
}

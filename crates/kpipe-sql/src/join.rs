//! Joins: resolving a SELECT's column references against its sources, and
//! matching rows of two sources as records arrive. A joined row names every
//! column `ALIAS_COLUMN` (`I1.BAR` reads `I1_BAR`), as ksqlDB's join schema does.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::engine::Source;
use crate::eval::{compare, eval, Row};
use crate::parser::{ColumnDef, Expr, JoinKind, Select, SelectItem, SourceKind};
use crate::plan::{children, children_mut, PSEUDO_COLUMNS};

/// ksqlDB's default grace for late records: a day.
const DEFAULT_GRACE_MS: i64 = 24 * 3600 * 1000;

/// One source of a query, with the name its columns are qualified by.
struct Side<'a> {
    qualifier: String,
    name: &'a str,
    source: &'a Source,
}

impl Side<'_> {
    fn has(&self, column: &str) -> bool {
        self.source.columns.iter().any(|c| c.name == column) || PSEUDO_COLUMNS.contains(&column)
    }

    fn answers_to(&self, qualifier: &str) -> bool {
        self.qualifier == qualifier || self.name == qualifier
    }
}

/// A running join's state: each side's rows so far (a window's worth for a
/// stream, the latest per key for a table).
#[derive(Debug, Clone)]
pub(crate) struct JoinState {
    /// The joined (right) source's name.
    pub(crate) right: String,
    kind: JoinKind,
    within: Option<(i64, i64)>,
    left_qualifier: String,
    right_qualifier: String,
    /// Each side's ON expression, over that side's qualified row.
    left_key: Expr,
    right_key: Expr,
    left_rows: Vec<(Value, i64, Row)>,
    right_rows: Vec<(Value, i64, Row)>,
    /// The columns of each side, to fill with nulls when a LEFT join has no match.
    right_columns: Vec<String>,
    /// Whether both sides are tables (so the result is a table too).
    pub(crate) tables: bool,
    stream_time: i64,
}

/// Which side of a join a record arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JoinSide {
    Left,
    Right,
}

/// The SELECT with its qualified column references resolved, the source it
/// reads (for a join, one whose columns are the joined row's), and the
/// join's initial state.
pub(crate) fn resolve(
    select: &Select,
    sources: &crate::engine::Sources,
) -> Result<(Select, Source, Option<JoinState>)> {
    let lookup = |name: &str| {
        sources
            .get(name)
            .map(|s| &**s)
            .ok_or_else(|| anyhow::anyhow!("{name} does not exist."))
    };
    let left = Side {
        qualifier: select
            .from_alias
            .clone()
            .unwrap_or_else(|| select.from.clone()),
        name: &select.from,
        source: lookup(&select.from)?,
    };
    let Some(join) = select.joins.first() else {
        let mut resolved = select.clone();
        rewrite_select(&mut resolved, &|e| single_source(e, &left), &[&left]);
        return Ok((resolved, left.source.clone(), None));
    };
    if select.joins.len() > 1 {
        bail!("Joining more than two sources is not supported yet");
    }
    let right = Side {
        qualifier: join.alias.clone().unwrap_or_else(|| join.source.clone()),
        name: &join.source,
        source: lookup(&join.source)?,
    };
    let sides = [&left, &right];
    let (left_key, right_key) = join_keys(&join.on, &left, &right)?;
    let kinds = (left.source.kind, right.source.kind);
    match (kinds, join.kind, join.within) {
        ((SourceKind::Stream, SourceKind::Stream), JoinKind::Inner, Some(_)) => {}
        ((SourceKind::Stream, SourceKind::Stream), JoinKind::Inner, None) => {
            bail!("Stream-Stream joins must have a WITHIN clause specified. None was provided.")
        }
        ((SourceKind::Stream, SourceKind::Stream), ..) => {
            bail!("Only INNER stream-stream joins are supported yet")
        }
        ((_, SourceKind::Table), JoinKind::Inner | JoinKind::Left, None) => {}
        ((_, SourceKind::Table), _, Some(_)) => {
            bail!("A join with a table does not take a WITHIN clause.")
        }
        _ => bail!("Only INNER and LEFT joins of a stream or table with a table are supported yet"),
    }
    let mut columns = Vec::new();
    for side in sides {
        for column in &side.source.columns {
            columns.push(ColumnDef {
                name: format!("{}_{}", side.qualifier, column.name),
                ty: column.ty.clone(),
                key: false,
            });
        }
    }
    let joined = Source {
        kind: if kinds == (SourceKind::Table, SourceKind::Table) {
            SourceKind::Table
        } else {
            SourceKind::Stream
        },
        columns,
        ..left.source.clone()
    };
    let mut resolved = select.clone();
    let resolve_expr = |e: &Expr| joined_column(e, &sides);
    // Unaliased plain columns keep their plain name in the result.
    for item in &mut resolved.items {
        if let SelectItem::Expr {
            expr: Expr::Column(c),
            alias: alias @ None,
        } = item
        {
            *alias = Some(c.clone());
        }
    }
    rewrite_select(&mut resolved, &resolve_expr, &sides);
    if resolved.group_by.is_empty() && resolved.partition_by.is_empty() {
        // The result is keyed by the join expression.
        resolved.partition_by = vec![left_key.clone()];
    }
    let right_columns = right
        .source
        .columns
        .iter()
        .map(|c| c.name.clone())
        .chain(PSEUDO_COLUMNS.map(String::from))
        .map(|c| format!("{}_{c}", right.qualifier))
        .collect();
    Ok((
        resolved,
        joined,
        Some(JoinState {
            right: join.source.clone(),
            kind: join.kind,
            within: join.within,
            left_qualifier: left.qualifier.clone(),
            right_qualifier: right.qualifier.clone(),
            left_key,
            right_key,
            left_rows: Vec::new(),
            right_rows: Vec::new(),
            right_columns,
            tables: kinds == (SourceKind::Table, SourceKind::Table),
            stream_time: 0,
        }),
    ))
}

/// Applies `resolve` to every expression of the SELECT, and names each
/// `source.*` by its side's qualifier (`*` when there is one source).
fn rewrite_select(
    select: &mut Select,
    resolve: &dyn Fn(&Expr) -> Option<Expr>,
    sides: &[&Side<'_>],
) {
    for item in &mut select.items {
        match item {
            SelectItem::Expr { expr, .. } => *expr = rewrite(expr, resolve),
            SelectItem::AllOf(source) => match sides.iter().find(|s| s.answers_to(source)) {
                Some(_) if sides.len() == 1 => *item = SelectItem::All,
                Some(side) => *source = side.qualifier.clone(),
                None => {}
            },
            SelectItem::All => {}
        }
    }
    for expr in select
        .filter
        .iter_mut()
        .chain(select.having.iter_mut())
        .chain(select.group_by.iter_mut())
        .chain(select.partition_by.iter_mut())
    {
        *expr = rewrite(expr, resolve);
    }
}

/// `expr` with every sub-expression `resolve` answers for replaced.
pub(crate) fn rewrite(expr: &Expr, resolve: &dyn Fn(&Expr) -> Option<Expr>) -> Expr {
    if let Some(replaced) = resolve(expr) {
        return replaced;
    }
    let mut copy = expr.clone();
    for (child, original) in children_mut(&mut copy).into_iter().zip(children(expr)) {
        *child = rewrite(original, resolve);
    }
    copy
}

/// A single source's qualified column as a plain one.
fn single_source(expr: &Expr, side: &Side<'_>) -> Option<Expr> {
    match expr {
        Expr::Qualified { source, column } if side.answers_to(source) && side.has(column) => {
            Some(Expr::Column(column.clone()))
        }
        _ => None,
    }
}

/// A column of a joined row: `A.X` and an unambiguous `X` read `A_X`.
fn joined_column(expr: &Expr, sides: &[&Side<'_>]) -> Option<Expr> {
    match expr {
        Expr::Qualified { source, column } => sides
            .iter()
            .find(|s| s.answers_to(source) && s.has(column))
            .map(|s| Expr::Column(format!("{}_{column}", s.qualifier))),
        Expr::Column(column) if !PSEUDO_COLUMNS.contains(&column.as_str()) => sides
            .iter()
            .find(|s| s.has(column))
            .map(|s| Expr::Column(format!("{}_{column}", s.qualifier))),
        _ => None,
    }
}

/// The ON condition's two sides, each over its own source's qualified row
/// (left first), refused unless each reads exactly one source.
fn join_keys(on: &Expr, left: &Side<'_>, right: &Side<'_>) -> Result<(Expr, Expr)> {
    let Expr::Binary(crate::parser::BinaryOp::Eq, a, b) = on else {
        bail!("Unsupported join expression: {on}. Only equality joins are supported.");
    };
    let sides = [left, right];
    let resolve = |e: &Expr| joined_column(e, &sides);
    let mut reads_left = Vec::new();
    for original in [a, b] {
        let resolved = rewrite(original, &resolve);
        let on_left = references(&resolved, &format!("{}_", left.qualifier));
        let on_right = references(&resolved, &format!("{}_", right.qualifier));
        if on_left == on_right {
            bail!(
                "Invalid comparison expression '{original}' in join '{on}'. Each side of the join comparision must contain references from exactly one source."
            );
        }
        reads_left.push((on_left, resolved));
    }
    match (reads_left.remove(0), reads_left.remove(0)) {
        ((true, a), (false, b)) => Ok((a, b)),
        ((false, a), (true, b)) => Ok((b, a)),
        _ => bail!(
            "Invalid join condition: {on}. Each side of the join comparision must contain references from exactly one source."
        ),
    }
}

/// Whether `expr` reads a column whose name starts with `prefix`.
fn references(expr: &Expr, prefix: &str) -> bool {
    match expr {
        Expr::Column(c) => c.starts_with(prefix),
        _ => children(expr).into_iter().any(|c| references(c, prefix)),
    }
}

/// A row of one side with its columns qualified: `X` becomes `ALIAS_X`.
fn qualified(row: &Row, qualifier: &str) -> Row {
    row.iter()
        .map(|(k, v)| (format!("{qualifier}_{k}"), v.clone()))
        .collect()
}

/// A change on one side of a join: the joined rows it makes (each with its
/// timestamp), or for table-table joins a None for a row that is gone.
pub(crate) fn join_update(
    state: &mut JoinState,
    side: JoinSide,
    row: Option<&Row>,
    key: &Value,
    timestamp: i64,
) -> Result<Vec<(Option<Row>, i64)>> {
    let tables = state.tables;
    state.stream_time = state.stream_time.max(timestamp);
    let (qualifier, key_expr) = match side {
        JoinSide::Left => (&state.left_qualifier, &state.left_key),
        JoinSide::Right => (&state.right_qualifier, &state.right_key),
    };
    let row = row.map(|r| qualified(r, qualifier));
    let join_key = match &row {
        Some(row) => eval(key_expr, row, &[])?,
        None => key.clone(),
    };
    let stream_stream = state.within.is_some();
    let stored = match side {
        JoinSide::Left => &mut state.left_rows,
        JoinSide::Right => &mut state.right_rows,
    };
    let is_stream_side = stream_stream || (side == JoinSide::Left && !tables);
    if is_stream_side {
        if let (Some(row), Some((before, after))) = (&row, state.within) {
            let horizon = state.stream_time - before.max(after) - DEFAULT_GRACE_MS;
            stored.retain(|(_, ts, _)| *ts >= horizon);
            stored.push((join_key.clone(), timestamp, row.clone()));
        }
    } else {
        // A table side: the row replaces (or a tombstone deletes) its key's row.
        stored.retain(|(k, _, _)| k != &join_key);
        if let Some(row) = &row {
            stored.push((join_key.clone(), timestamp, row.clone()));
        }
    }
    let same_key =
        |k: &Value| !join_key.is_null() && compare(k, &join_key).is_some_and(|o| o.is_eq());
    let mut out = Vec::new();
    match side {
        JoinSide::Left => {
            let matches: Vec<&(Value, i64, Row)> = state
                .right_rows
                .iter()
                .filter(|(k, ts, _)| {
                    same_key(k)
                        && state.within.is_none_or(|(before, after)| {
                            *ts >= timestamp - before && *ts <= timestamp + after
                        })
                })
                .collect();
            let Some(left) = row else {
                return Ok(vec![(None, timestamp)]);
            };
            if matches.is_empty() && state.kind == JoinKind::Left {
                let mut joined = left.clone();
                for column in &state.right_columns {
                    joined.insert(column.clone(), Value::Null);
                }
                out.push((Some(with_time(joined, timestamp)), timestamp));
            } else if matches.is_empty() && tables {
                out.push((None, timestamp));
            }
            for (_, ts, right) in matches {
                let mut joined = left.clone();
                joined.extend(right.clone());
                let time = if stream_stream {
                    timestamp.max(*ts)
                } else {
                    timestamp
                };
                out.push((Some(with_time(joined, time)), time));
            }
        }
        JoinSide::Right if stream_stream || tables => {
            let matches: Vec<&(Value, i64, Row)> = state
                .left_rows
                .iter()
                .filter(|(k, ts, _)| {
                    same_key(k)
                        && state.within.is_none_or(|(before, after)| {
                            timestamp >= *ts - before && timestamp <= *ts + after
                        })
                })
                .collect();
            for (_, ts, left) in matches {
                let mut joined = left.clone();
                match &row {
                    Some(right) => joined.extend(right.clone()),
                    None if state.kind == JoinKind::Left => {
                        for column in &state.right_columns {
                            joined.insert(column.clone(), Value::Null);
                        }
                    }
                    None => {
                        out.push((None, timestamp));
                        continue;
                    }
                }
                let time = timestamp.max(*ts);
                out.push((Some(with_time(joined, time)), time));
            }
        }
        // A stream-table join's table side only updates the lookup.
        JoinSide::Right => {}
    }
    Ok(out)
}

/// A joined row's ROWTIME is the result's time.
fn with_time(mut row: Row, timestamp: i64) -> Row {
    row.insert("ROWTIME".into(), Value::from(timestamp));
    row
}

//! What a query's SELECT means before it runs: its output columns (names,
//! types, which are keys and in what order) and ksqlDB's checks on grouping
//! and projections, with ksqlDB's messages.

use std::fmt;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::aggregate::{aggregate_calls, is_aggregate};
use crate::engine::Source;
use crate::join::rewrite;
use crate::parser::{BinaryOp, ColumnDef, Expr, Properties, Select, SelectItem, SourceKind};
use crate::types::{column_type, type_of};

/// Columns every record has besides its own.
pub(crate) const PSEUDO_COLUMNS: [&str; 3] = ["ROWTIME", "ROWPARTITION", "ROWOFFSET"];

/// Columns a windowed result has.
const WINDOW_BOUNDS: [&str; 2] = ["WINDOWSTART", "WINDOWEND"];

/// The SELECT's items with `*` expanded: each an expression and its alias.
pub(crate) fn projection(select: &Select, from: &Source) -> Vec<(Expr, Option<String>)> {
    let mut items = Vec::new();
    for item in &select.items {
        match item {
            SelectItem::All => items.extend(
                from.columns
                    .iter()
                    .map(|c| (Expr::Column(c.name.clone()), None)),
            ),
            // A join's columns of one source (single sources resolve `x.*` to `*`).
            SelectItem::AllOf(source) => items.extend(
                from.columns
                    .iter()
                    .filter(|c| c.name.starts_with(&format!("{source}_")))
                    .map(|c| (Expr::Column(c.name.clone()), None)),
            ),
            SelectItem::Expr { expr, alias } => items.push((expr.clone(), alias.clone())),
        }
    }
    items
}

/// The sink's columns: key columns first (in GROUP BY or PARTITION BY
/// order, else in the source's key order), then the value columns as
/// selected. PARTITION BY expressions left out of the projection are keys
/// all the same.
/// Each comes with the expression that computes it; `sink` names the result in messages.
/// Under the new query planner a plain projection may leave key columns out
/// (the sink is then unkeyed) and orders its key columns as selected.
/// A transient SELECT may name the pseudo columns unaliased (seed 03:
/// `SELECT ROWPARTITION, ROWOFFSET, * FROM payments EMIT CHANGES`).
pub(crate) fn output_columns(
    select: &Select,
    from: &Source,
    sink: &str,
    new_planner: bool,
    transient: bool,
) -> Result<Vec<(ColumnDef, Expr)>> {
    let grouped = !select.group_by.is_empty();
    // ksqlDB does not resolve WINDOWSTART/WINDOWEND in a join's projection
    // (confluentinc/ksql#5931).
    let windowed =
        (grouped || select.window.is_some() || from.window.is_some()) && select.joins.is_empty();
    let key_exprs = if grouped {
        &select.group_by
    } else {
        &select.partition_by
    };
    let mut keys: Vec<(usize, ColumnDef, &Expr)> = Vec::new();
    let mut values: Vec<(ColumnDef, Expr)> = Vec::new();
    let mut generated = 0;
    let items = projection(select, from);
    for (expr, alias) in &items {
        if let Some(alias) = alias.as_deref().filter(|a| PSEUDO_COLUMNS.contains(a)) {
            bail!(
                "`{alias}` is a reserved column name. You cannot use it as an alias for a column."
            );
        }
        if let Some(alias) = alias
            .as_deref()
            .filter(|a| windowed && WINDOW_BOUNDS.contains(a))
        {
            bail!(
                "`{alias}` is a reserved column name. You cannot use it as an alias for a column."
            );
        }
        if let Expr::Qualified { .. } = expr {
            bail!("SELECT column '{expr}' cannot be resolved.");
        }
        if let Expr::Literal(Value::Null) = expr {
            bail!("Can't infer a type of null. Please explicitly cast it to a required type, e.g. CAST(null AS VARCHAR).");
        }
        if let Expr::Column(c) = expr {
            let pseudo = PSEUDO_COLUMNS.contains(&c.as_str());
            if pseudo && alias.is_none() && !transient {
                bail!("Reserved column name in select: `{c}`. Please remove or alias the column.");
            }
            let window_bound = WINDOW_BOUNDS.contains(&c.as_str());
            let known = if window_bound {
                windowed
            } else {
                column_type(c, &from.columns).is_some()
            };
            if !known {
                bail!("SELECT column '{c}' cannot be resolved.");
            }
        }
        let name = match (alias, expr) {
            (Some(alias), _) => alias.clone(),
            (None, Expr::Column(c)) => c.clone(),
            (None, Expr::Field { field, .. }) => field.clone(),
            _ => {
                generated += 1;
                format!("KSQL_COL_{}", generated - 1)
            }
        };
        let column = ColumnDef {
            name,
            ty: type_of(expr, &from.columns)?,
            key: false,
        };
        // Grouped, the key is what rows are grouped by; otherwise the source's key.
        let key_position = if !key_exprs.is_empty() {
            key_exprs.iter().position(|g| g == expr)
        } else {
            let source_key = match expr {
                Expr::Column(c) => from
                    .columns
                    .iter()
                    .filter(|d| d.key)
                    .position(|d| d.name == *c),
                _ => None,
            };
            // The new planner orders keys as selected.
            source_key.map(|p| if new_planner { keys.len() } else { p })
        };
        match key_position {
            Some(position) => {
                if let Some((_, other, _)) = keys.iter().find(|(p, _, _)| *p == position) {
                    if grouped {
                        bail!(
                            "The projection contains a key column more than once: `{}` and `{}`.",
                            other.name,
                            column.name
                        );
                    }
                    bail!(
                        "The projection contains a key column (`{expr}`) more than once, aliased as: {} and {}.",
                        other.name,
                        column.name
                    );
                }
                keys.push((
                    position,
                    ColumnDef {
                        key: true,
                        ..column
                    },
                    expr,
                ));
            }
            None => values.push((column, expr.clone())),
        }
    }
    let missing: Vec<String> = if grouped {
        select
            .group_by
            .iter()
            .enumerate()
            .filter(|(i, _)| !keys.iter().any(|(p, _, _)| p == i))
            .map(|(_, g)| g.to_string())
            .collect()
    } else {
        // Any key column missing, ksqlDB names them all.
        let source_keys: Vec<String> = from
            .columns
            .iter()
            .filter(|c| c.key)
            .map(|c| c.name.clone())
            .collect();
        let rekeyed = !select.partition_by.is_empty();
        // A SELECT's rows need not carry their keys.
        if keys.len() < source_keys.len() && !new_planner && !rekeyed && !transient {
            source_keys
        } else {
            Vec::new()
        }
    };
    if !missing.is_empty() {
        let what = match (grouped, missing.len()) {
            (true, 1) => "grouping expression",
            (true, _) => "grouping expressions",
            (false, 1) => "key column",
            (false, _) => "key columns",
        };
        bail!(
            "The query used to build `{sink}` must include the {what} {} in its projection (eg, SELECT {}...).",
            listing(&missing),
            missing.join(", ")
        );
    }
    for (position, expr) in select.partition_by.iter().enumerate() {
        if keys.iter().any(|(p, _, _)| *p == position) {
            continue;
        }
        let name = match expr {
            Expr::Column(c) => c.clone(),
            Expr::Field { field, .. } => field.clone(),
            _ => {
                generated += 1;
                format!("KSQL_COL_{}", generated - 1)
            }
        };
        let ty = type_of(expr, &from.columns)?;
        keys.push((
            position,
            ColumnDef {
                name,
                ty,
                key: true,
            },
            expr,
        ));
    }
    if values.is_empty() && !transient {
        bail!("The projection contains no value columns.");
    }
    for (i, (value, _)) in values.iter().enumerate() {
        let clashes = values[..i].iter().any(|(v, _)| v.name == value.name)
            || keys.iter().any(|(_, k, _)| k.name == value.name);
        if clashes {
            bail!(
                "Duplicate value columns found in schema: `{}` {}",
                value.name,
                value.ty
            );
        }
    }
    keys.sort_by_key(|(position, _, _)| *position);
    Ok(keys
        .into_iter()
        .map(|(_, c, e)| (c, e.clone()))
        .chain(values)
        .collect())
}

/// A CREATE ... AS SELECT as ksqlDB prints it back in messages: every
/// column qualified by its source, every item named, one item a line.
pub(crate) fn statement_text(
    kind: SourceKind,
    name: &str,
    properties: &Properties,
    select: &Select,
    outputs: &[(ColumnDef, Expr)],
) -> String {
    let source = select.from_alias.as_deref().unwrap_or(&select.from);
    let qualify = |expr: &Expr| qualified(expr, source);
    let mut text = format!(
        "CREATE {} {name}",
        match kind {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    );
    if !properties.is_empty() {
        let properties: Vec<String> = properties
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}='{s}'"),
                other => format!("{k}={other}"),
            })
            .collect();
        text.push_str(&format!(" WITH ({})", properties.join(", ")));
    }
    // Items in the order selected (keys were moved first in `outputs`).
    let mut items: Vec<&(ColumnDef, Expr)> = outputs.iter().collect();
    let selected = projection_order(select, outputs);
    items.sort_by_key(|(column, _)| selected.iter().position(|n| *n == column.name));
    let items: Vec<String> = items
        .iter()
        .map(|(column, expr)| format!("  {} {}", qualify(expr), column.name))
        .collect();
    text.push_str(&format!(
        " AS SELECT\n{}\nFROM {} {source}",
        items.join(",\n"),
        select.from
    ));
    if let Some(filter) = &select.filter {
        text.push_str(&format!("\nWHERE {}", qualify(filter)));
    }
    if !select.group_by.is_empty() {
        let groups: Vec<String> = select
            .group_by
            .iter()
            .map(|g| qualify(g).to_string())
            .collect();
        text.push_str(&format!("\nGROUP BY {}", groups.join(", ")));
    }
    if let Some(having) = &select.having {
        text.push_str(&format!("\nHAVING {}", qualify(having)));
    }
    text.push_str("\nEMIT CHANGES");
    text
}

/// The output column names in the order the SELECT lists them.
fn projection_order(select: &Select, outputs: &[(ColumnDef, Expr)]) -> Vec<String> {
    let mut names = Vec::new();
    for item in &select.items {
        if let SelectItem::Expr { expr, alias } = item {
            let found = outputs.iter().find(|(column, e)| {
                e == expr
                    && alias.as_ref().is_none_or(|a| *a == column.name)
                    && !names.contains(&column.name)
            });
            if let Some((column, _)) = found {
                names.push(column.name.clone());
            }
        }
    }
    names
}

/// `expr` with its plain columns qualified by `source`.
fn qualified(expr: &Expr, source: &str) -> Expr {
    rewrite(expr, &|e| match e {
        Expr::Column(c)
            if !PSEUDO_COLUMNS.contains(&c.as_str()) && !WINDOW_BOUNDS.contains(&c.as_str()) =>
        {
            Some(Expr::Qualified {
                source: source.to_string(),
                column: c.clone(),
            })
        }
        _ => None,
    })
}

/// `A`, `A and B`, `A, B and C`, as ksqlDB lists names.
pub(crate) fn listing(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [only] => only.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// ksqlDB's rules for a grouped SELECT, with its words.
pub(crate) fn check_grouping(select: &Select, from: &Source) -> Result<()> {
    for (i, group) in select.group_by.iter().enumerate() {
        let mut calls = Vec::new();
        aggregate_calls(group, &mut calls)?;
        if let Some(Expr::Function { name, .. }) = calls.first() {
            bail!(
                "GROUP BY does not support aggregate functions: {name} is an aggregate function."
            );
        }
        if select.group_by[..i].contains(group) {
            bail!("Duplicate GROUP BY expression: {}.{group}", select.from);
        }
    }
    let items = projection(select, from);
    let mut calls = Vec::new();
    for (expr, _) in &items {
        aggregate_calls(expr, &mut calls)?;
    }
    if let Some(having) = &select.having {
        aggregate_calls(having, &mut calls)?;
    }
    for call in &calls {
        if let Expr::Function { args, .. } = call {
            let mut nested = Vec::new();
            for arg in args {
                aggregate_calls(arg, &mut nested)?;
            }
            if !nested.is_empty() {
                bail!("Aggregate functions can not be nested: {call}");
            }
        }
    }
    if calls.is_empty() {
        bail!("GROUP BY requires aggregate functions in either the SELECT or HAVING clause.");
    }
    check_ungrouped_projection(&items, &select.group_by)?;
    if let Some(having) = &select.having {
        let ungrouped = ungrouped_columns(having, &select.group_by);
        if !ungrouped.is_empty() {
            bail!(
                "Non-aggregate HAVING expression not part of GROUP BY: {}",
                ungrouped.join(", ")
            );
        }
    }
    Ok(())
}

/// Refuses selected expressions that read columns neither grouped by nor aggregated.
fn check_ungrouped_projection(items: &[(Expr, Option<String>)], group_by: &[Expr]) -> Result<()> {
    let ungrouped: Vec<String> = items
        .iter()
        .filter(|(expr, _)| !ungrouped_columns(expr, group_by).is_empty())
        .map(|(expr, _)| expr.to_string())
        .collect();
    if !ungrouped.is_empty() {
        bail!(
            "Non-aggregate SELECT expression(s) not part of GROUP BY: {}\nEither add the column(s) to the GROUP BY or remove them from the SELECT.",
            ungrouped.join(", ")
        );
    }
    Ok(())
}

/// Refuses aggregate calls in a SELECT without GROUP BY, as ksqlDB words it
/// for CREATE TABLE and CREATE STREAM.
pub(crate) fn check_no_aggregates(kind: SourceKind, select: &Select, from: &Source) -> Result<()> {
    let items = projection(select, from);
    let mut calls = Vec::new();
    for (expr, _) in &items {
        aggregate_calls(expr, &mut calls)?;
    }
    let Some(Expr::Function { name, .. }) = calls.first() else {
        return Ok(());
    };
    if kind == SourceKind::Stream {
        bail!("Use of aggregate function {name} requires a GROUP BY clause.");
    }
    check_ungrouped_projection(&items, &[])?;
    // ksqlDB's aggregate analysis has counted `COUNT(*)` as `COUNT(ROWTIME)` by now.
    let calls: Vec<String> = calls
        .iter()
        .map(|call| match call {
            Expr::Function {
                name, star: true, ..
            } => format!("{name}(ROWTIME)"),
            other => other.to_string(),
        })
        .collect();
    bail!(
        "CREATE TABLE AS SELECT statement does not support aggregate function [{}] without a GROUP BY clause.",
        calls.join(", ")
    )
}

/// The columns `expr` reads outside aggregate calls and outside
/// sub-expressions that are grouped by.
fn ungrouped_columns(expr: &Expr, group_by: &[Expr]) -> Vec<String> {
    if group_by.contains(expr) || is_aggregate(expr) {
        return Vec::new();
    }
    match expr {
        Expr::Column(c)
            if PSEUDO_COLUMNS.contains(&c.as_str()) || WINDOW_BOUNDS.contains(&c.as_str()) =>
        {
            Vec::new()
        }
        Expr::Column(c) => vec![c.clone()],
        _ => children(expr)
            .into_iter()
            .flat_map(|child| ungrouped_columns(child, group_by))
            .collect(),
    }
}

/// The first column `expr` reads that is neither one of `columns` nor a
/// pseudo column (lambda parameters are in scope in their lambda's body).
pub(crate) fn unresolved_column(expr: &Expr, columns: &[ColumnDef]) -> Option<String> {
    match expr {
        Expr::Column(c) => {
            let known = columns.iter().any(|d| d.name == *c)
                || PSEUDO_COLUMNS.contains(&c.as_str())
                || WINDOW_BOUNDS.contains(&c.as_str());
            (!known).then(|| c.clone())
        }
        Expr::Qualified { .. } => Some(expr.to_string()),
        Expr::Lambda { params, body } => {
            let mut scope = columns.to_vec();
            scope.extend(params.iter().map(|p| ColumnDef {
                name: p.clone(),
                ty: crate::parser::SqlType::String,
                key: false,
            }));
            unresolved_column(body, &scope)
        }
        _ => children(expr)
            .into_iter()
            .find_map(|child| unresolved_column(child, columns)),
    }
}

/// The direct sub-expressions of an expression, shared (`&`, with
/// `as_deref` and `iter`) or to replace (`&mut`, with `as_deref_mut` and
/// `iter_mut`): one list of the variants for both.
macro_rules! direct_children {
    ($expr:expr, [$($mutability:tt)?], $as_deref:ident, $iter:ident) => {
        match $expr {
            Expr::Column(_) | Expr::Literal(_) | Expr::Qualified { .. } => Vec::new(),
            Expr::Not(e)
            | Expr::Negate(e)
            | Expr::IsNull { expr: e, .. }
            | Expr::Cast { expr: e, .. } => vec![&$($mutability)? **e],
            Expr::Field { base, .. } => vec![&$($mutability)? **base],
            Expr::Lambda { body, .. } => vec![&$($mutability)? **body],
            Expr::Binary(_, a, b)
            | Expr::Like {
                expr: a,
                pattern: b,
                ..
            }
            | Expr::Subscript { base: a, index: b }
            | Expr::DistinctFrom {
                left: a, right: b, ..
            } => vec![&$($mutability)? **a, &$($mutability)? **b],
            Expr::Between {
                expr, low, high, ..
            } => vec![&$($mutability)? **expr, &$($mutability)? **low, &$($mutability)? **high],
            Expr::In { expr, list, .. } => std::iter::once(&$($mutability)? **expr).chain(list.$iter()).collect(),
            Expr::Case {
                operand,
                branches,
                otherwise,
            } => operand
                .$as_deref()
                .into_iter()
                .chain(branches.$iter().flat_map(|(w, t)| [w, t]))
                .chain(otherwise.$as_deref())
                .collect(),
            Expr::Array(items) => items.$iter().collect(),
            Expr::Map(entries) => entries.$iter().flat_map(|(k, v)| [k, v]).collect(),
            Expr::Struct(fields) => fields.$iter().map(|(_, e)| e).collect(),
            Expr::Function { args, .. } => args.$iter().collect(),
        }
    };
}

/// The direct sub-expressions of `expr`.
pub(crate) fn children(expr: &Expr) -> Vec<&Expr> {
    direct_children!(expr, [], as_deref, iter)
}

/// The direct sub-expressions of `expr`, to replace.
pub(crate) fn children_mut(expr: &mut Expr) -> Vec<&mut Expr> {
    direct_children!(expr, [mut], as_deref_mut, iter_mut)
}

/// Expressions as ksqlDB prints them in messages: `(A + B)`, `SUBSTRING(S, 0, 1)`.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &[Expr]| {
            items
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Expr::Column(c) => f.write_str(c),
            Expr::Qualified { source, column } => write!(f, "{source}.{column}"),
            Expr::Literal(Value::String(s)) => write!(f, "'{}'", s.replace('\'', "''")),
            Expr::Literal(v) => write!(f, "{v}"),
            Expr::Not(e) => write!(f, "(NOT {e})"),
            Expr::Negate(e) => write!(f, "-{e}"),
            Expr::Binary(op, a, b) => write!(f, "({a} {} {b})", operator(*op)),
            Expr::IsNull { expr, negated } => {
                write!(f, "({expr} IS {}NULL)", if *negated { "NOT " } else { "" })
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => write!(
                f,
                "({expr} {}BETWEEN {low} AND {high})",
                if *negated { "NOT " } else { "" }
            ),
            Expr::In {
                expr,
                list: items,
                negated,
            } => write!(
                f,
                "({expr} {}IN ({}))",
                if *negated { "NOT " } else { "" },
                list(items)
            ),
            Expr::Case {
                operand,
                branches,
                otherwise,
            } => {
                f.write_str("(CASE")?;
                if let Some(operand) = operand {
                    write!(f, " {operand}")?;
                }
                for (when, then) in branches {
                    write!(f, " WHEN {when} THEN {then}")?;
                }
                if let Some(otherwise) = otherwise {
                    write!(f, " ELSE {otherwise}")?;
                }
                f.write_str(" END)")
            }
            Expr::Cast { expr, ty } => write!(f, "CAST({expr} AS {ty})"),
            Expr::Like {
                expr,
                pattern,
                negated,
                escape,
            } => {
                let escape = escape.map(|c| format!(" ESCAPE '{c}'")).unwrap_or_default();
                write!(
                    f,
                    "({expr} {}LIKE {pattern}{escape})",
                    if *negated { "NOT " } else { "" }
                )
            }
            Expr::Subscript { base, index } => write!(f, "{base}[{index}]"),
            Expr::Field { base, field } => write!(f, "{base}->{field}"),
            Expr::Array(items) => write!(f, "ARRAY[{}]", list(items)),
            Expr::Map(entries) => {
                let entries: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{k}:={v}")).collect();
                write!(f, "MAP({})", entries.join(", "))
            }
            Expr::Struct(fields) => {
                let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}:={v}")).collect();
                write!(f, "STRUCT({})", fields.join(", "))
            }
            Expr::Lambda { params, body } => match params.as_slice() {
                [only] => write!(f, "{only} => {body}"),
                _ => write!(f, "({}) => {body}", params.join(", ")),
            },
            Expr::DistinctFrom {
                left,
                right,
                negated,
            } => write!(
                f,
                "({left} IS {}DISTINCT FROM {right})",
                if *negated { "NOT " } else { "" }
            ),
            Expr::Function {
                name, star: true, ..
            } => write!(f, "{name}(*)"),
            Expr::Function { name, args, .. } => write!(f, "{name}({})", list(args)),
        }
    }
}

pub(crate) fn operator(op: BinaryOp) -> &'static str {
    use BinaryOp as B;
    match op {
        B::Or => "OR",
        B::And => "AND",
        B::Eq => "=",
        B::NotEq => "<>",
        B::Lt => "<",
        B::LtEq => "<=",
        B::Gt => ">",
        B::GtEq => ">=",
        B::Add => "+",
        B::Sub => "-",
        B::Mul => "*",
        B::Div => "/",
        B::Rem => "%",
    }
}

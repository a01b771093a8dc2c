//! Aggregate functions: which calls aggregate, and how each one folds a row
//! into its running value, merges two sessions' values or retracts a row.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::eval::{arithmetic, compare, eval, Row};
use crate::functions::{double, is_scalar, text};
use crate::parser::{BinaryOp, Expr, SqlType};
use crate::plan::children;

pub(crate) const AGGREGATES: [&str; 16] = [
    "TOPK",
    "TOPKDISTINCT",
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "EARLIEST_BY_OFFSET",
    "LATEST_BY_OFFSET",
    "AVG",
    "COUNT_DISTINCT",
    "COLLECT_LIST",
    "COLLECT_SET",
    "STDDEV_SAMP",
    "STDDEV_SAMPLE",
    "HISTOGRAM",
    "SUM_LIST",
];

/// The aggregates that can take a row's contribution back, so apply to table sources.
pub(crate) const RETRACTABLE: [&str; 5] = ["COUNT", "SUM", "AVG", "COLLECT_LIST", "HISTOGRAM"];

/// Aggregates whose running state is a STRUCT or an ARRAY, which DELIMITED
/// and KAFKA values cannot hold.
pub(crate) const COMPLEX_STATE: [&str; 8] = [
    "AVG",
    "STDDEV_SAMP",
    "STDDEV_SAMPLE",
    "TOPK",
    "TOPKDISTINCT",
    "COLLECT_LIST",
    "COLLECT_SET",
    "COUNT_DISTINCT",
];

pub(crate) fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function { name, .. } if AGGREGATES.contains(&name.as_str()))
}

/// Settings of aggregate functions (ksqlDB's `ksql.functions.*` properties).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AggregateSettings {
    /// `ksql.functions.collect_list.limit`: COLLECT_LIST keeps at most this many.
    pub(crate) collect_list_limit: usize,
}

impl Default for AggregateSettings {
    fn default() -> Self {
        AggregateSettings {
            collect_list_limit: 1000,
        }
    }
}

/// The type an aggregate returns for arguments `args` of types `types`.
pub(crate) fn aggregate_type(name: &str, args: &[Expr], types: &[SqlType]) -> SqlType {
    let arg = types.first().cloned().unwrap_or(SqlType::BigInt);
    match name {
        "COUNT" | "COUNT_DISTINCT" => SqlType::BigInt,
        "AVG" | "STDDEV_SAMP" | "STDDEV_SAMPLE" => SqlType::Double,
        "TOPK" | "TOPKDISTINCT" if args.len() > 2 => SqlType::Array(Box::new(SqlType::Struct(
            std::iter::once(("sort_col".to_string(), arg))
                .chain(
                    types[1..types.len() - 1]
                        .iter()
                        .enumerate()
                        .map(|(i, ty)| (format!("col{i}"), ty.clone())),
                )
                .collect(),
        ))),
        "TOPK" | "TOPKDISTINCT" | "COLLECT_LIST" | "COLLECT_SET" => SqlType::Array(Box::new(arg)),
        "EARLIEST_BY_OFFSET" | "LATEST_BY_OFFSET" if keeps_several(args) => {
            SqlType::Array(Box::new(arg))
        }
        "SUM_LIST" => match arg {
            SqlType::Array(element) => *element,
            other => other,
        },
        "HISTOGRAM" => SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::BigInt)),
        _ => arg,
    }
}

/// Two sessions' states of one aggregate call, `older` first, merged into one.
pub(crate) fn merge(call: &Expr, older: &Value, newer: &Value) -> Value {
    let Expr::Function { name, .. } = call else {
        unreachable!("only calls are merged")
    };
    if let "EARLIEST_BY_OFFSET" | "LATEST_BY_OFFSET" = name.as_str() {
        return merge_by_offset(call, older, newer);
    }
    match name.as_str() {
        _ if older.is_null() => newer.clone(),
        _ if newer.is_null() => older.clone(),
        "COUNT" | "SUM" | "SUM_LIST" => arithmetic(BinaryOp::Add, older, newer),
        "AVG" | "STDDEV_SAMP" | "STDDEV_SAMPLE" => merge_moments(older, newer),
        "HISTOGRAM" => {
            let mut merged = older.as_object().cloned().unwrap_or_default();
            for (k, v) in newer.as_object().into_iter().flatten() {
                let sum = arithmetic(BinaryOp::Add, merged.get(k).unwrap_or(&Value::from(0)), v);
                merged.insert(k.clone(), sum);
            }
            Value::Object(merged)
        }
        "COLLECT_LIST" | "COLLECT_SET" | "COUNT_DISTINCT" => {
            let mut merged = older.as_array().cloned().unwrap_or_default();
            for v in newer.as_array().into_iter().flatten() {
                if name == "COLLECT_LIST" || !merged.contains(v) {
                    merged.push(v.clone());
                }
            }
            Value::Array(merged)
        }
        "MIN" if compare(newer, older).is_some_and(|o| o.is_lt()) => newer.clone(),
        "MAX" if compare(newer, older).is_some_and(|o| o.is_gt()) => newer.clone(),
        "MIN" | "MAX" => older.clone(),
        _ => newer.clone(),
    }
}

/// Collects the aggregate calls in `expr`, and refuses unknown functions.
pub(crate) fn aggregate_calls(expr: &Expr, calls: &mut Vec<Expr>) -> Result<()> {
    if is_aggregate(expr) {
        if !calls.contains(expr) {
            calls.push(expr.clone());
        }
        return Ok(());
    }
    if let Expr::Function { name, .. } = expr {
        if !is_scalar(name) {
            bail!("Can't find any functions with the name '{name}'");
        }
    }
    children(expr)
        .into_iter()
        .try_for_each(|child| aggregate_calls(child, calls))
}

/// An aggregate call's name, arguments and first argument's value for `row`
/// (`COUNT(*)` and `COUNT()` count every row: their argument is `true`).
pub(crate) fn call_argument<'a>(call: &'a Expr, row: &Row) -> Result<(&'a str, &'a [Expr], Value)> {
    let Expr::Function { name, args, star } = call else {
        unreachable!("only calls aggregate")
    };
    let arg = match args.first() {
        Some(a) if !*star => eval(a, row, &[])?,
        _ => Value::Bool(true),
    };
    Ok((name, args, arg))
}

/// The next state of an aggregate call after `row`.
pub(crate) fn accumulate(
    call: &Expr,
    current: &Value,
    row: &Row,
    first: bool,
    settings: AggregateSettings,
) -> Result<Value> {
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
        "EARLIEST_BY_OFFSET" | "LATEST_BY_OFFSET" => by_offset(name, args, current, arg, first),
        "SUM_LIST" => arg
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| !v.is_null())
            .fold(current.clone(), |sum, v| {
                if sum.is_null() {
                    v.clone()
                } else {
                    arithmetic(BinaryOp::Add, &sum, v)
                }
            }),
        "AVG" | "STDDEV_SAMP" | "STDDEV_SAMPLE" => moments(current, &arg, 1.0),
        "COLLECT_LIST" => {
            let mut list = current.as_array().cloned().unwrap_or_default();
            if list.len() < settings.collect_list_limit {
                list.push(arg);
            }
            Value::Array(list)
        }
        "COLLECT_SET" | "COUNT_DISTINCT" => {
            let mut set = current.as_array().cloned().unwrap_or_default();
            if !arg.is_null() && !set.contains(&arg) {
                set.push(arg);
            }
            Value::Array(set)
        }
        "HISTOGRAM" => {
            let mut counts = current.as_object().cloned().unwrap_or_default();
            if let Some(text) = text(&arg) {
                let count = counts.get(&text).and_then(Value::as_i64).unwrap_or(0);
                counts.insert(text, Value::from(count + 1));
            }
            Value::Object(counts)
        }
        "TOPK" | "TOPKDISTINCT" => {
            let k = match args.last() {
                Some(Expr::Literal(k)) if args.len() > 1 => k.as_u64().unwrap_or(0) as usize,
                _ => bail!("{name} takes a column, other columns to carry and a number: {name}(col, [other, ..], k)"),
            };
            let carried = &args[1..args.len() - 1];
            let mut top = current.as_array().cloned().unwrap_or_default();
            let repeated = name == "TOPKDISTINCT" && top.contains(&arg);
            if !arg.is_null() && !repeated {
                top.push(if carried.is_empty() {
                    arg
                } else {
                    // With other columns, each entry is a struct sorted by `sort_col`.
                    let mut entry = serde_json::Map::from_iter([("sort_col".to_string(), arg)]);
                    for (i, expr) in carried.iter().enumerate() {
                        entry.insert(format!("col{i}"), eval(expr, row, &[])?);
                    }
                    Value::Object(entry)
                });
            }
            let sort_key = |v: &Value| v.get("sort_col").cloned().unwrap_or_else(|| v.clone());
            // Highest first; ties keep their arrival order.
            top.sort_by(|a, b| {
                compare(&sort_key(b), &sort_key(a)).unwrap_or(std::cmp::Ordering::Equal)
            });
            top.truncate(k);
            Value::Array(top)
        }
        _ => arg,
    })
}

/// EARLIEST/LATEST_BY_OFFSET(col [, n] [, ignore_nulls]): how many values
/// to keep (None: one, not in an array) and whether nulls are skipped (by default).
fn offset_options(args: &[Expr]) -> (Option<usize>, bool) {
    let mut keep = None;
    let mut ignore_nulls = true;
    for arg in &args[1.min(args.len())..] {
        match arg {
            Expr::Literal(Value::Number(n)) => keep = n.as_u64().map(|n| n as usize),
            Expr::Literal(Value::Bool(b)) => ignore_nulls = *b,
            _ => {}
        }
    }
    (keep, ignore_nulls)
}

fn keeps_several(args: &[Expr]) -> bool {
    offset_options(args).0.is_some()
}

/// The next state of EARLIEST_BY_OFFSET or LATEST_BY_OFFSET after `arg`.
fn by_offset(name: &str, args: &[Expr], current: &Value, arg: Value, first: bool) -> Value {
    let (keep, ignore_nulls) = offset_options(args);
    if arg.is_null() && ignore_nulls {
        return match keep {
            Some(_) if current.is_null() => Value::Array(Vec::new()),
            _ => current.clone(),
        };
    }
    let earliest = name == "EARLIEST_BY_OFFSET";
    let Some(keep) = keep else {
        // Nothing kept yet: the first row, or only nulls that do not count.
        let nothing_yet = first || (ignore_nulls && current.is_null());
        return if earliest && !nothing_yet {
            current.clone()
        } else {
            arg
        };
    };
    let mut values = current.as_array().cloned().unwrap_or_default();
    if !earliest || values.len() < keep {
        values.push(arg);
    }
    let excess = values.len().saturating_sub(keep);
    values.drain(..excess);
    Value::Array(values)
}

/// Two sessions' EARLIEST/LATEST_BY_OFFSET states, the older first.
fn merge_by_offset(call: &Expr, older: &Value, newer: &Value) -> Value {
    let Expr::Function { name, args, .. } = call else {
        unreachable!("only calls are merged")
    };
    let earliest = name == "EARLIEST_BY_OFFSET";
    match offset_options(args) {
        (None, true) if earliest && !older.is_null() => older.clone(),
        (None, true) if !earliest && newer.is_null() => older.clone(),
        (None, true) if earliest => newer.clone(),
        (None, _) if earliest => older.clone(),
        (None, _) => newer.clone(),
        (Some(keep), _) => {
            let mut values: Vec<Value> = older.as_array().into_iter().flatten().cloned().collect();
            values.extend(newer.as_array().into_iter().flatten().cloned());
            if earliest {
                values.truncate(keep);
            } else {
                let excess = values.len().saturating_sub(keep);
                values.drain(..excess);
            }
            Value::Array(values)
        }
    }
}

/// The count, sum and sum of squared deviations (M2) AVG and STDDEV keep,
/// with `arg` added (`weight` 1) or taken back from the count and sum
/// (`weight` -1, for AVG); nulls do not count. M2 follows Youngs and
/// Cramer's update, as ksqlDB's does (so results match to the last digit).
fn moments(current: &Value, arg: &Value, weight: f64) -> Value {
    let get = |k: &str| current.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let Some(x) = arg.as_f64() else {
        return if current.is_null() {
            serde_json::json!({"COUNT": 0.0, "SUM": 0.0, "M2": 0.0})
        } else {
            current.clone()
        };
    };
    let (count, sum) = (get("COUNT") + weight, get("SUM") + weight * x);
    let mut m2 = get("M2");
    if weight > 0.0 && count > 1.0 {
        let t = count * x - sum;
        m2 += t * t / (count * (count - 1.0));
    }
    serde_json::json!({"COUNT": count, "SUM": sum, "M2": m2})
}

/// Two sessions' AVG/STDDEV states as one (Chan et al.'s combination of M2).
fn merge_moments(older: &Value, newer: &Value) -> Value {
    let get = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (na, sa, ma) = (get(older, "COUNT"), get(older, "SUM"), get(older, "M2"));
    let (nb, sb, mb) = (get(newer, "COUNT"), get(newer, "SUM"), get(newer, "M2"));
    let mut m2 = ma + mb;
    if na > 0.0 && nb > 0.0 {
        let t = nb * sa - na * sb;
        m2 += t * t / (na * nb * (na + nb));
    }
    serde_json::json!({"COUNT": na + nb, "SUM": sa + sb, "M2": m2})
}

/// What an aggregate reports for its state.
pub(crate) fn result(call: &Expr, state: &Value) -> Value {
    let Expr::Function { name, .. } = call else {
        unreachable!("only calls aggregate")
    };
    let get = |k: &str| state.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (n, sum, m2) = (get("COUNT"), get("SUM"), get("M2"));
    match name.as_str() {
        "AVG" if n == 0.0 => Value::Null,
        "AVG" => double(sum / n),
        // ksqlDB's STDDEV_SAMP reports the sample variance; STDDEV_SAMPLE its root.
        "STDDEV_SAMP" | "STDDEV_SAMPLE" if n < 2.0 => double(0.0),
        "STDDEV_SAMP" => double(m2 / (n - 1.0)),
        "STDDEV_SAMPLE" => double((m2 / (n - 1.0)).sqrt()),
        "COUNT_DISTINCT" => Value::from(state.as_array().map_or(0, Vec::len)),
        _ => state.clone(),
    }
}

/// What an aggregate's state is before its first row.
pub(crate) fn initial(call: &Expr) -> Value {
    match call {
        // ksqlDB's SUM starts at 0 and passes over nulls: a group of nulls sums to 0.
        Expr::Function { name, .. } if name == "COUNT" || name == "SUM" => Value::from(0),
        Expr::Function { name, .. } if name == "COUNT_DISTINCT" => Value::Array(Vec::new()),
        _ => Value::Null,
    }
}

/// A state without `row`'s contribution (for the RETRACTABLE aggregates).
pub(crate) fn retracted(call: &Expr, current: &Value, row: &Row) -> Result<Value> {
    let (name, _, arg) = call_argument(call, row)?;
    Ok(match name {
        "COUNT" => Value::from(current.as_i64().unwrap_or(0) - i64::from(!arg.is_null())),
        "AVG" => moments(current, &arg, -1.0),
        "COLLECT_LIST" => {
            let mut list = current.as_array().cloned().unwrap_or_default();
            if let Some(i) = list.iter().position(|v| *v == arg) {
                list.remove(i);
            }
            Value::Array(list)
        }
        "HISTOGRAM" => {
            let mut counts = current.as_object().cloned().unwrap_or_default();
            if let Some(text) = text(&arg) {
                match counts.get(&text).and_then(Value::as_i64) {
                    Some(count) if count > 1 => {
                        counts.insert(text, Value::from(count - 1));
                    }
                    _ => {
                        counts.remove(&text);
                    }
                }
            }
            Value::Object(counts)
        }
        _ if arg.is_null() => current.clone(),
        _ => arithmetic(BinaryOp::Sub, current, &arg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn call(sql: &str) -> Expr {
        let statement = &parse(&format!("CREATE TABLE T AS SELECT {sql} FROM S;")).unwrap()[0];
        let crate::parser::Statement::CreateAs { select, .. } = statement else {
            panic!()
        };
        let crate::parser::SelectItem::Expr { expr, .. } = &select.items[0] else {
            panic!()
        };
        expr.clone()
    }

    fn fold(sql: &str, inputs: &[Value], settings: AggregateSettings) -> Value {
        let call = call(sql);
        let mut state = initial(&call);
        for (i, v) in inputs.iter().enumerate() {
            let row: Row = [("V".to_string(), v.clone())].into_iter().collect();
            state = accumulate(&call, &state, &row, i == 0, settings).unwrap();
        }
        result(&call, &state)
    }

    #[test]
    fn averages_deviations_distinct_counts_and_lists() {
        let values: Vec<Value> = [10.0, 12.0, 13.0].into_iter().map(Value::from).collect();
        let settings = AggregateSettings::default();
        assert_eq!(fold("AVG(V)", &values, settings), Value::from(35.0 / 3.0));
        assert_eq!(
            fold("STDDEV_SAMP(V)", &values[..2], settings),
            Value::from(2.0)
        );
        assert_eq!(
            fold("STDDEV_SAMPLE(V)", &values[..2], settings),
            Value::from(2f64.sqrt())
        );
        let names = [
            Value::from("a"),
            Value::from("b"),
            Value::from("a"),
            Value::Null,
        ];
        assert_eq!(fold("COUNT_DISTINCT(V)", &names, settings), Value::from(2));
        let with_null = [Value::from(1), Value::Null, Value::from(3)];
        assert_eq!(
            fold("LATEST_BY_OFFSET(V, 2, false)", &with_null, settings),
            serde_json::json!([null, 3])
        );
        assert_eq!(
            fold("EARLIEST_BY_OFFSET(V, 2)", &with_null, settings),
            serde_json::json!([1, 3])
        );
        assert_eq!(
            fold("LATEST_BY_OFFSET(V, false)", &with_null[..2], settings),
            Value::Null
        );
        let top = fold("TOPK(V, 'x', 1)", &values, settings);
        assert_eq!(top, serde_json::json!([{"sort_col": 13.0, "col0": "x"}]));
        let lists = [serde_json::json!([1, 2]), serde_json::json!([3, null])];
        assert_eq!(fold("SUM_LIST(V)", &lists, settings), Value::from(6));
        assert_eq!(
            fold(
                "COLLECT_LIST(V)",
                &names,
                AggregateSettings {
                    collect_list_limit: 2
                }
            ),
            serde_json::json!(["a", "b"])
        );
    }
}

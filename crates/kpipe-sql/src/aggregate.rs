//! Aggregate functions: which calls aggregate, and how each one folds a row
//! into its running value, merges two sessions' values or retracts a row.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::eval::{arithmetic, compare, eval, Row};
use crate::functions::SCALARS;
use crate::parser::{BinaryOp, Expr};

pub(crate) const AGGREGATES: [&str; 8] = [
    "TOPK",
    "TOPKDISTINCT",
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "EARLIEST_BY_OFFSET",
    "LATEST_BY_OFFSET",
];

pub(crate) fn is_aggregate(expr: &Expr) -> bool {
    matches!(expr, Expr::Function { name, .. } if AGGREGATES.contains(&name.as_str()))
}

/// Two sessions' values of one aggregate call, `older` first, merged into one.
pub(crate) fn merge(call: &Expr, older: &Value, newer: &Value) -> Value {
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

/// Collects the aggregate calls in `expr`, and refuses unknown functions.
pub(crate) fn aggregate_calls(expr: &Expr, calls: &mut Vec<Expr>) -> Result<()> {
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

/// The next value of an aggregate call after `row`.
pub(crate) fn accumulate(call: &Expr, current: &Value, row: &Row, first: bool) -> Result<Value> {
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
pub(crate) fn initial(call: &Expr) -> Value {
    match call {
        Expr::Function { name, .. } if name == "COUNT" => Value::from(0),
        _ => Value::Null,
    }
}

/// COUNT or SUM without `row`'s contribution (the only aggregates a table update can undo).
pub(crate) fn retracted(call: &Expr, current: &Value, row: &Row) -> Result<Value> {
    let (name, _, arg) = call_argument(call, row)?;
    Ok(match name {
        "COUNT" => Value::from(current.as_i64().unwrap_or(0) - i64::from(!arg.is_null())),
        _ if arg.is_null() => current.clone(),
        _ => arithmetic(BinaryOp::Sub, current, &arg),
    })
}

pub(crate) fn describe_call(call: &Expr) -> String {
    match call {
        Expr::Function { name, .. } => name.clone(),
        _ => String::new(),
    }
}

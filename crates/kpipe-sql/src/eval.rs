//! Expression evaluation over a row, with SQL's null rules.

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use crate::aggregate::is_aggregate;
use crate::functions::scalar;
use crate::parser::{BinaryOp, Expr};
use crate::types::cast;

pub(crate) use crate::row::Row;

/// SQL's three-valued logic: null in, null out (AND/OR excepted). Aggregate
/// calls take their current values from `aggregates`.
pub(crate) fn eval(expr: &Expr, row: &Row, aggregates: &[(Expr, Value)]) -> Result<Value> {
    let eval = |e: &Expr| eval(e, row, aggregates);
    Ok(match expr {
        Expr::Function { name, args, .. }
            if args.iter().any(|a| matches!(a, Expr::Lambda { .. })) =>
        {
            higher_order(name, args, row, aggregates)?
        }
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
        Expr::Qualified { .. } => bail!("column '{expr}' cannot be resolved."),
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
                found |= same_value(&v, &eval(item)?);
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
        Expr::Cast { expr, ty } => cast(&eval(expr)?, ty),
        Expr::Subscript { base, index } => match (eval(base)?, eval(index)?) {
            (Value::Array(items), Value::Number(n)) => {
                // From 1; negative counts back from the end.
                let i = n.as_i64().unwrap_or(0);
                let position = if i > 0 { i - 1 } else { items.len() as i64 + i };
                usize::try_from(position)
                    .ok()
                    .and_then(|p| items.get(p).cloned())
                    .unwrap_or(Value::Null)
            }
            (Value::Object(entries), key) => crate::functions::text(&key)
                .and_then(|k| entries.get(&k).cloned())
                .unwrap_or(Value::Null),
            _ => Value::Null,
        },
        Expr::Field { base, field } => match eval(base)? {
            Value::Object(object) => crate::types::field(&object, field)
                .cloned()
                .unwrap_or(Value::Null),
            _ => Value::Null,
        },
        Expr::Array(items) => Value::Array(items.iter().map(eval).collect::<Result<_>>()?),
        Expr::Map(entries) => {
            let mut map = Map::new();
            for (k, v) in entries {
                if let Some(k) = crate::functions::text(&eval(k)?) {
                    map.insert(k, eval(v)?);
                }
            }
            Value::Object(map)
        }
        Expr::Struct(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, e)| Ok((name.clone(), eval(e)?)))
                .collect::<Result<_>>()?,
        ),
        Expr::Lambda { .. } => {
            bail!("a lambda can only be an argument of FILTER, TRANSFORM or REDUCE")
        }
        Expr::DistinctFrom {
            left,
            right,
            negated,
        } => {
            let (a, b) = (eval(left)?, eval(right)?);
            let same = match (&a, &b) {
                (Value::Null, Value::Null) => true,
                (Value::Null, _) | (_, Value::Null) => false,
                _ => compare(&a, &b).is_some_and(|o| o.is_eq()),
            };
            Value::Bool(same == *negated)
        }
        Expr::Like {
            expr,
            pattern,
            negated,
            escape,
        } => match (eval(expr)?, eval(pattern)?) {
            (Value::String(text), Value::String(pattern)) => {
                let chars: Vec<char> = text.chars().collect();
                let pattern = like_pattern(&pattern, *escape);
                Value::Bool(like(&chars, &pattern) != *negated)
            }
            _ => Value::Null,
        },
    })
}

/// FILTER, TRANSFORM and REDUCE: a collection with lambdas applied to its
/// elements (arrays) or entries (maps, the lambda taking key and value).
fn higher_order(
    name: &str,
    args: &[Expr],
    row: &Row,
    aggregates: &[(Expr, Value)],
) -> Result<Value> {
    let collection = eval(&args[0], row, aggregates)?;
    let apply = |lambda: &Expr, values: &[Value]| -> Result<Value> {
        let Expr::Lambda { params, body } = lambda else {
            bail!("{name} expects a lambda, not {lambda}");
        };
        let mut scope = row.clone();
        for (param, value) in params.iter().zip(values) {
            scope.insert(param.clone(), value.clone());
        }
        eval(body, &scope, aggregates)
    };
    Ok(match (name, &collection, args) {
        (_, Value::Null, _) => Value::Null,
        ("FILTER", Value::Array(items), [_, lambda]) => {
            let mut kept = Vec::new();
            for item in items {
                if apply(lambda, std::slice::from_ref(item))? == Value::Bool(true) {
                    kept.push(item.clone());
                }
            }
            Value::Array(kept)
        }
        ("FILTER", Value::Object(entries), [_, lambda]) => {
            let mut kept = Map::new();
            for (k, v) in entries {
                if apply(lambda, &[Value::from(k.as_str()), v.clone()])? == Value::Bool(true) {
                    kept.insert(k.clone(), v.clone());
                }
            }
            Value::Object(kept)
        }
        ("TRANSFORM", Value::Array(items), [_, lambda]) => Value::Array(
            items
                .iter()
                .map(|item| apply(lambda, std::slice::from_ref(item)))
                .collect::<Result<_>>()?,
        ),
        ("TRANSFORM", Value::Object(entries), [_, key, value]) => {
            let mut mapped = Map::new();
            for (k, v) in entries {
                let entry = [Value::from(k.as_str()), v.clone()];
                if let Some(k) = crate::functions::text(&apply(key, &entry)?) {
                    mapped.insert(k, apply(value, &entry)?);
                }
            }
            Value::Object(mapped)
        }
        ("REDUCE", Value::Array(items), [_, initial, lambda]) => {
            let mut state = eval(initial, row, aggregates)?;
            for item in items {
                state = apply(lambda, &[state, item.clone()])?;
            }
            state
        }
        ("REDUCE", Value::Object(entries), [_, initial, lambda]) => {
            let mut state = eval(initial, row, aggregates)?;
            for (k, v) in entries {
                state = apply(lambda, &[state, Value::from(k.as_str()), v.clone()])?;
            }
            state
        }
        _ => bail!(
            "Function '{name}' does not accept parameters ({})",
            args.len()
        ),
    })
}

/// A LIKE pattern's parts: a literal character, `_` (any one) or `%` (any run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LikePart {
    Char(char),
    One,
    Any,
}

/// A LIKE pattern's text as parts; the `escape` character makes the next one literal.
fn like_pattern(pattern: &str, escape: Option<char>) -> Vec<LikePart> {
    let mut parts = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        parts.push(match c {
            c if Some(c) == escape => LikePart::Char(chars.next().unwrap_or(c)),
            '%' => LikePart::Any,
            '_' => LikePart::One,
            c => LikePart::Char(c),
        });
    }
    parts
}

/// SQL LIKE: `%` any run, `_` any one character.
fn like(text: &[char], pattern: &[LikePart]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((LikePart::Any, rest)) => (0..=text.len()).any(|i| like(&text[i..], rest)),
        Some((LikePart::One, rest)) => !text.is_empty() && like(&text[1..], rest),
        Some((LikePart::Char(c), rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

/// IN's equality: numbers by value (text standing for a number or boolean
/// too, as ksqlDB coerces IN's literals), arrays element by element, maps
/// and structs field by field (an absent field is null, and nulls match).
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Number(_), Value::String(s)) | (Value::String(s), Value::Number(_)) => {
            let number = if a.is_number() { a } else { b };
            s.trim()
                .parse::<f64>()
                .is_ok_and(|f| number.as_f64() == Some(f))
        }
        (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
            crate::types::parse_boolean(s) == Some(*x)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).all(|k| {
            same_value(
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
            )
        }),
        _ => compare(a, b).is_some_and(|o| o.is_eq()),
    }
}

pub(crate) fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(_), Value::Number(_)) => as_f64(a)?.partial_cmp(&as_f64(b)?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

pub(crate) fn binary(op: BinaryOp, a: Value, b: Value) -> Value {
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
        // A comparison with null is false in ksqlDB, not unknown.
        B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq if a.is_null() || b.is_null() => {
            Value::Bool(false)
        }
        // Arrays, maps and structs are equal element by element, field by field.
        B::Eq | B::NotEq if a.is_array() || a.is_object() => {
            Value::Bool(same_value(&a, &b) == (op == B::Eq))
        }
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

pub(crate) fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
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

pub(crate) fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

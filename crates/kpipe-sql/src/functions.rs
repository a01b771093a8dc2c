//! ksqlDB's scalar function library.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::parser::SqlType;

/// The scalar functions known so far.
pub(crate) const SCALARS: &[&str] = &[
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
    "FILTER",
    "TRANSFORM",
    "REDUCE",
];

/// The type a scalar function returns for arguments of `args`' types (a
/// lambda's type is its body's).
pub(crate) fn return_type(name: &str, args: &[SqlType]) -> Result<SqlType> {
    if !SCALARS.contains(&name) {
        bail!("Can't find any functions with the name '{name}'");
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or(SqlType::String);
    Ok(match name {
        "LEN" | "SIGN" => SqlType::Int,
        "CONCAT" | "INITCAP" | "LCASE" | "UCASE" | "TRIM" | "SUBSTRING" => SqlType::String,
        "ROUND" if args.len() > 1 => arg(0),
        "ROUND" => match arg(0) {
            SqlType::Double => SqlType::BigInt,
            SqlType::Decimal { precision, scale } => SqlType::Decimal {
                precision: precision - scale + 1,
                scale: 0,
            },
            other => other,
        },
        "EXP" | "LN" | "SQRT" | "CBRT" | "SIN" | "COS" | "TAN" | "ASIN" | "ACOS" | "ATAN"
        | "SINH" | "COSH" | "TANH" | "DEGREES" | "RADIANS" | "POWER" => SqlType::Double,
        "TRANSFORM" => match arg(0) {
            SqlType::Map(..) => SqlType::Map(Box::new(arg(1)), Box::new(arg(2))),
            _ => SqlType::Array(Box::new(arg(1))),
        },
        "REDUCE" => arg(1),
        _ => arg(0),
    })
}

/// A DOUBLE result; NaN and the infinities are written as ksqlDB's JSON writes them.
pub(crate) fn double(f: f64) -> Value {
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

pub(crate) fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A scalar function of ksqlDB's library; null in, null out unless it says otherwise.
pub(crate) fn scalar(name: &str, args: &[Value]) -> Result<Value> {
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
pub(crate) fn round_half_up(f: f64, places: i64) -> f64 {
    let scale = 10f64.powi(places as i32);
    (f * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

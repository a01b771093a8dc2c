//! ksqlDB's scalar function library.

use anyhow::{bail, Result};
use serde_json::Value;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use crate::eval::compare;
use crate::parser::SqlType;

/// The scalar functions known so far.
pub(crate) const SCALARS: &[&str] = &[
    "ABS",
    "FROM_UNIXTIME",
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
    "ARRAY_LENGTH",
    "ARRAY_MIN",
    "ARRAY_MAX",
    "INSTR",
    "TRUNC",
    "LOG",
    "COT",
    "ATAN2",
    "PI",
    "NULLIF",
    "CONCAT_WS",
    "RANDOM",
    "EXTRACTJSONFIELD",
    "TIMESTAMPTOSTRING",
    "FORMAT_TIMESTAMP",
    "PARSE_DATE",
    "GEO_DISTANCE",
];

/// A function body: argument values in, a value out (or a failure that drops the row).
pub(crate) type FunctionBody = Box<dyn Fn(&[Value]) -> Result<Value> + Send + Sync>;

/// A scalar function added at run time, as ksqlDB loads UDFs: its return
/// type for given argument types, and its body.
pub(crate) struct UserFunction {
    pub(crate) return_type: fn(&[SqlType]) -> SqlType,
    pub(crate) call: FunctionBody,
}

type UserFunctions = RwLock<HashMap<String, Arc<UserFunction>>>;

/// The functions added at run time, by (upper-case) name; like ksqlDB's
/// function registry, one for the process.
fn user_functions() -> &'static UserFunctions {
    static FUNCTIONS: OnceLock<UserFunctions> = OnceLock::new();
    FUNCTIONS.get_or_init(Default::default)
}

/// Adds (or replaces) a scalar function.
pub(crate) fn register(name: &str, function: UserFunction) {
    user_functions()
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert(name.to_ascii_uppercase(), Arc::new(function));
}

fn user_function(name: &str) -> Option<Arc<UserFunction>> {
    user_functions()
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(name)
        .cloned()
}

/// Whether `name` is a scalar function, built in or added.
pub(crate) fn is_scalar(name: &str) -> bool {
    SCALARS.contains(&name) || user_function(name).is_some()
}

/// The type a scalar function returns for arguments of `args`' types (a
/// lambda's type is its body's).
pub(crate) fn return_type(name: &str, args: &[SqlType]) -> Result<SqlType> {
    if let Some(function) = user_function(name) {
        return Ok((function.return_type)(args));
    }
    if !SCALARS.contains(&name) {
        bail!("Can't find any functions with the name '{name}'");
    }
    if args.is_empty() && matches!(name, "COALESCE" | "IFNULL" | "CONCAT") {
        bail!("Function '{name}' does not accept parameters ()");
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or(SqlType::String);
    Ok(match name {
        "LEN" | "SIGN" | "ARRAY_LENGTH" | "INSTR" => SqlType::Int,
        "FROM_UNIXTIME" => SqlType::Timestamp,
        "PARSE_DATE" => SqlType::Date,
        "CONCAT" | "CONCAT_WS" | "INITCAP" | "LCASE" | "UCASE" | "TRIM" | "SUBSTRING"
        | "EXTRACTJSONFIELD" | "TIMESTAMPTOSTRING" | "FORMAT_TIMESTAMP" => SqlType::String,
        "ARRAY_MIN" | "ARRAY_MAX" => match arg(0) {
            SqlType::Array(element) => *element,
            other => other,
        },
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
        | "SINH" | "COSH" | "TANH" | "DEGREES" | "RADIANS" | "POWER" | "LOG" | "COT" | "ATAN2"
        | "PI" | "RANDOM" | "GEO_DISTANCE" => SqlType::Double,
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

/// A pseudo-random number in [0, 1), from the clock's nanoseconds.
fn random_fraction() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos) / 1e9
}

/// EXTRACTJSONFIELD: the value at a JSONPath like `$.a.b[0]` in JSON text;
/// text values come back unquoted, others as JSON text.
fn extract_json_field(json: &str, path: &str) -> Value {
    // The first JSON value in the text; anything after it is ignored, as Jackson does.
    let first = serde_json::Deserializer::from_str(json)
        .into_iter::<Value>()
        .next();
    let Some(Ok(mut value)) = first else {
        return Value::Null;
    };
    let Some(path) = path.strip_prefix('$') else {
        return Value::Null;
    };
    for step in path.split('.').filter(|s| !s.is_empty()) {
        let (field, indexes) = step.split_once('[').unwrap_or((step, ""));
        if !field.is_empty() {
            value = value.get(field).cloned().unwrap_or(Value::Null);
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let index = index.trim_end_matches(']');
            value = match index.parse::<usize>() {
                Ok(i) => value.get(i).cloned().unwrap_or(Value::Null),
                Err(_) => value
                    .get(index.trim_matches(['\'', '"']))
                    .cloned()
                    .unwrap_or(Value::Null),
            };
        }
    }
    match value {
        Value::Null => Value::Null,
        Value::String(s) => Value::String(s),
        other => Value::String(other.to_string()),
    }
}

/// A scalar function of ksqlDB's library; null in, null out unless it says otherwise.
pub(crate) fn scalar(name: &str, args: &[Value]) -> Result<Value> {
    if let Some(function) = user_function(name) {
        return (function.call)(args);
    }
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
        "PI" => double(std::f64::consts::PI),
        "RANDOM" => double(random_fraction()),
        "NULLIF" => {
            if arg(0) == arg(1) {
                Value::Null
            } else {
                arg(0)
            }
        }
        "CONCAT_WS" => {
            let Some(separator) = text(&arg(0)) else {
                return Ok(Value::Null);
            };
            Value::String(
                args[1..]
                    .iter()
                    .filter_map(text)
                    .collect::<Vec<_>>()
                    .join(&separator),
            )
        }
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
        // A TIMESTAMP is its epoch milliseconds; display formats it.
        "FROM_UNIXTIME" => arg(0).as_i64().map_or(Value::Null, Value::from),
        "LEN" => Value::from(text(&arg(0)).map_or(0, |s| s.chars().count())),
        "ARRAY_LENGTH" => Value::from(arg(0).as_array().map_or(0, Vec::len)),
        "ARRAY_MIN" | "ARRAY_MAX" => {
            let wanted = if name == "ARRAY_MIN" {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let mut best = Value::Null;
            for v in arg(0)
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| !v.is_null())
            {
                if best.is_null() || compare(v, &best) == Some(wanted) {
                    best = v.clone();
                }
            }
            best
        }
        "INSTR" => {
            let (Some(haystack), Some(needle)) = (text(&arg(0)), text(&arg(1))) else {
                return Ok(Value::Null);
            };
            // 1-based character position, 0 when absent.
            Value::from(
                haystack
                    .find(&needle)
                    .map_or(0, |byte| haystack[..byte].chars().count() + 1),
            )
        }
        // Epoch milliseconds (a TIMESTAMP is one too) in a Java pattern and zone.
        "TIMESTAMPTOSTRING" | "FORMAT_TIMESTAMP" => {
            let (Some(millis), Some(pattern)) = (arg(0).as_i64(), text(&arg(1))) else {
                return Ok(Value::Null);
            };
            let zone = text(&arg(2));
            Value::from(crate::time::format_millis(
                millis,
                &pattern,
                zone.as_deref(),
            )?)
        }
        // Days since the epoch, null when the text holds no date in the pattern.
        "PARSE_DATE" => {
            let (Some(date), Some(pattern)) = (text(&arg(0)), text(&arg(1))) else {
                return Ok(Value::Null);
            };
            crate::time::parse_date(&date, &pattern).map_or(Value::Null, Value::from)
        }
        "EXTRACTJSONFIELD" => {
            let (Some(json), Some(path)) = (text(&arg(0)), text(&arg(1))) else {
                return Ok(Value::Null);
            };
            extract_json_field(&json, &path)
        }
        "TRUNC" => match (arg(0), args.get(1).and_then(Value::as_i64)) {
            (Value::Number(n), _) if n.is_i64() => Value::Number(n),
            (Value::Number(n), None) => n
                .as_f64()
                .map_or(Value::Null, |f| Value::from(f.trunc() as i64)),
            (Value::Number(n), Some(places)) => n.as_f64().map_or(Value::Null, |f| {
                let scale = 10f64.powi(places as i32);
                double((f * scale).trunc() / scale)
            }),
            _ => Value::Null,
        },
        "LOG" if args.len() == 1 => arg(0).as_f64().map_or(Value::Null, |x| double(x.ln())),
        "LOG" => match (arg(0).as_f64(), arg(1).as_f64()) {
            (Some(base), Some(x)) => double(x.ln() / base.ln()),
            _ => Value::Null,
        },
        "COT" => arg(0)
            .as_f64()
            .map_or(Value::Null, |x| double(1.0 / x.tan())),
        "GEO_DISTANCE" => {
            let points: Option<Vec<f64>> = args.iter().take(4).map(Value::as_f64).collect();
            let radius = match text(&arg(4)).map(|u| u.to_ascii_lowercase()).as_deref() {
                None | Some("km" | "kilometers" | "kilometres") => 6371.0,
                Some("mi" | "miles") => 3959.0,
                Some(unit) => bail!(
                    "GeoDistance function units parameter must be one of 'KM' or 'MI'. Got: {unit}"
                ),
            };
            match points.as_deref() {
                Some(&[lat1, lon1, lat2, lon2]) => {
                    double(radius * haversine(lat1, lon1, lat2, lon2))
                }
                _ => Value::Null,
            }
        }
        "ATAN2" => match (arg(0).as_f64(), arg(1).as_f64()) {
            (Some(y), Some(x)) => double(y.atan2(x)),
            _ => Value::Null,
        },
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

/// Rounds to `places` decimals (negative: tens, hundreds..) with halves
/// going up (-1.5 to -1), as ksqlDB's ROUND does: on the double's shortest
/// decimal digits (BigDecimal.valueOf), so no binary error creeps in.
/// The central angle between two points given in degrees (the haversine
/// formula), which GEO_DISTANCE scales by the Earth's radius.
fn haversine(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (lat1, lat2) = (lat1.to_radians(), lat2.to_radians());
    let half_lat = (lat2 - lat1) / 2.0;
    let half_lon = (lon2 - lon1).to_radians() / 2.0;
    let a = half_lat.sin().powi(2) + lat1.cos() * lat2.cos() * half_lon.sin().powi(2);
    2.0 * a.sqrt().asin()
}

pub(crate) fn round_half_up(f: f64, places: i64) -> f64 {
    if !f.is_finite() {
        return f;
    }
    let text = format!("{}", f.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    // How many leading digits survive.
    let kept = whole.len() as i64 + places;
    if kept >= digits.len() as i64 {
        return f;
    }
    let kept = kept.max(0) as usize;
    let first_dropped = digits[kept];
    let beyond_half = digits[kept + 1..].iter().any(|d| *d != 0);
    // Away from zero for positives at a half, towards zero for negatives.
    let up = first_dropped > 5 || (first_dropped == 5 && (f > 0.0 || beyond_half));
    let mut magnitude: f64 = digits[..kept]
        .iter()
        .fold(0.0, |n, d| n * 10.0 + f64::from(*d));
    if up {
        magnitude += 1.0;
    }
    let exponent = whole.len() as i64 - kept as i64;
    let rounded = if exponent >= 0 {
        magnitude * 10f64.powi(exponent as i32)
    } else {
        // Divide by an exact power of ten, the way parsing the digits would.
        format!("{magnitude}e{exponent}")
            .parse()
            .unwrap_or(magnitude)
    };
    // No negative zero.
    (if f < 0.0 { -rounded } else { rounded }) + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_functions_follow_ksqldb() {
        let v = |s: &str| Value::from(s);
        let (mountain_view, san_francisco) = ([37.4133, -122.1162], [37.7749, -122.4194]);
        let points: Vec<Value> = mountain_view
            .into_iter()
            .chain(san_francisco)
            .map(Value::from)
            .collect();
        let km = scalar("GEO_DISTANCE", &points).unwrap().as_f64().unwrap();
        assert!((km - 48.273).abs() < 0.001, "{km}");
        let miles = [points.clone(), vec![v("MI")]].concat();
        let miles = scalar("GEO_DISTANCE", &miles).unwrap().as_f64().unwrap();
        assert!((miles - 29.997).abs() < 0.001, "{miles}");
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
        let ints = serde_json::json!([3, null, 1]);
        assert_eq!(scalar("ARRAY_MIN", &[ints]).unwrap(), Value::from(1));
        assert_eq!(
            scalar("INSTR", &[v("banana"), v("na")]).unwrap(),
            Value::from(3)
        );
        assert_eq!(
            scalar(
                "EXTRACTJSONFIELD",
                &[v(r#"{"a": {"b": [5, "x"]}}"#), v("$.a.b[1]")]
            )
            .unwrap(),
            v("x")
        );
        assert_eq!(
            scalar("ROUND", &[Value::from(-1.5)]).unwrap(),
            Value::from(-1),
            "halves go up, as in Java"
        );
        let round =
            |f: f64, places: i64| scalar("ROUND", &[Value::from(f), Value::from(places)]).unwrap();
        assert_eq!(
            round(1.005, 2),
            Value::from(1.01),
            "on decimal digits, not binary ones"
        );
        assert_eq!(round(-2.5, 0), Value::from(-2.0));
        assert_eq!(round(1234.5, -2), Value::from(1200.0));
        assert_eq!(
            scalar("EXTRACTJSONFIELD", &[v(r#"{"a": 1}}"#), v("$.a")]).unwrap(),
            v("1"),
            "text after the JSON value is ignored"
        );
        assert_eq!(
            scalar("TRUNC", &[Value::from(-1.7)]).unwrap(),
            Value::from(-1)
        );
    }

    #[test]
    fn functions_added_at_run_time_are_called_and_typed() {
        register(
            "TWICE_FOR_TEST",
            UserFunction {
                return_type: |_| SqlType::BigInt,
                call: Box::new(|args| Ok(Value::from(args[0].as_i64().unwrap_or(0) * 2))),
            },
        );
        assert!(is_scalar("TWICE_FOR_TEST"));
        assert_eq!(
            scalar("TWICE_FOR_TEST", &[Value::from(21)]).unwrap(),
            Value::from(42)
        );
        assert_eq!(
            return_type("TWICE_FOR_TEST", &[SqlType::Int]).unwrap(),
            SqlType::BigInt
        );
    }
}

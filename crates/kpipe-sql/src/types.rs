//! SQL types: their names as ksqlDB writes them, how a topic's JSON or text
//! turns into a typed value (`coerce`), CAST, and the type of an expression.

use std::fmt;

use anyhow::{anyhow, bail, Result};
use serde_json::{Map, Value};

use crate::aggregate::{aggregate_type, is_aggregate};
use crate::decimal::Decimal;
use crate::functions::{double, return_type};
use crate::parser::{BinaryOp, ColumnDef, Expr, SqlType};
use crate::time::parse_partial_datetime;

const MILLIS_PER_DAY: i64 = 86_400_000;

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Int => f.write_str("INTEGER"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Double => f.write_str("DOUBLE"),
            SqlType::String => f.write_str("STRING"),
            SqlType::Boolean => f.write_str("BOOLEAN"),
            SqlType::Decimal { precision, scale } => write!(f, "DECIMAL({precision}, {scale})"),
            SqlType::Bytes => f.write_str("BYTES"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Time => f.write_str("TIME"),
            SqlType::Array(element) => write!(f, "ARRAY<{element}>"),
            SqlType::Map(key, value) => write!(f, "MAP<{key}, {value}>"),
            SqlType::Struct(fields) => {
                f.write_str("STRUCT<")?;
                for (i, (name, ty)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{name}` {ty}")?;
                }
                f.write_str(">")
            }
        }
    }
}

impl SqlType {
    /// Whether values of this type have no parts (ARRAY, MAP and STRUCT do).
    pub(crate) fn is_primitive(&self) -> bool {
        !matches!(
            self,
            SqlType::Array(_) | SqlType::Map(..) | SqlType::Struct(_)
        )
    }
}

/// [`coerce`] of a value no longer needed: text stays where it is.
pub(crate) fn coerce_owned(value: Value, ty: &SqlType) -> Value {
    match (ty, value) {
        (SqlType::String | SqlType::Bytes, text @ Value::String(_)) => text,
        (_, value) => coerce(&value, ty),
    }
}

/// A value read from a topic (JSON, or the text of a DELIMITED field) as a
/// value of `ty`; what does not convert becomes null.
pub(crate) fn coerce(value: &Value, ty: &SqlType) -> Value {
    match (ty, value) {
        (_, Value::Null) => Value::Null,
        (
            SqlType::Int | SqlType::BigInt | SqlType::Timestamp | SqlType::Date | SqlType::Time,
            Value::Number(n),
        ) => n
            .as_i64()
            // A fractional number is truncated, as Java's intValue() does.
            .or_else(|| n.as_f64().map(|f| f.trunc() as i64))
            .map_or(Value::Null, Value::from),
        (
            SqlType::Int | SqlType::BigInt | SqlType::Timestamp | SqlType::Date | SqlType::Time,
            Value::String(s),
        ) => s.trim().parse::<i64>().map_or(Value::Null, Value::from),
        (SqlType::Double, Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        (SqlType::Double, Value::String(s)) => {
            s.trim().parse::<f64>().map_or(Value::Null, Value::from)
        }
        (SqlType::Decimal { scale, .. }, _) => {
            decimal(value, *scale).map_or(Value::Null, decimal_number)
        }
        (SqlType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (SqlType::Boolean, Value::String(s)) => parse_boolean(s).map_or(Value::Null, Value::Bool),
        (SqlType::String | SqlType::Bytes, Value::String(s)) => Value::String(s.clone()),
        (SqlType::String, other) => Value::String(other.to_string()),
        (SqlType::Array(element), Value::Array(items)) => {
            Value::Array(items.iter().map(|v| coerce(v, element)).collect())
        }
        (SqlType::Map(_, value_type), Value::Object(entries)) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), coerce(v, value_type)))
                .collect(),
        ),
        (SqlType::Struct(fields), Value::Object(object)) => Value::Object(
            fields
                .iter()
                .map(|(name, ty)| {
                    let value = field(object, name).map_or(Value::Null, |v| coerce(v, ty));
                    (name.clone(), value)
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Text as a BOOLEAN the way ksqlDB reads it: any start of `true` or `yes`,
/// or of `false` or `no`, in any case.
pub(crate) fn parse_boolean(text: &str) -> Option<bool> {
    let text = text.trim().to_ascii_lowercase();
    if text.is_empty() {
        None
    } else if "true".starts_with(&text) || "yes".starts_with(&text) {
        Some(true)
    } else if "false".starts_with(&text) || "no".starts_with(&text) {
        Some(false)
    } else {
        None
    }
}

/// A number, or numeric text, as a DECIMAL of `scale`: rounded on its
/// decimal digits (a double's shortest ones), so 1.005 rounds up as
/// BigDecimal does, not down as its binary value would.
pub(crate) fn decimal(value: &Value, scale: u32) -> Option<Decimal> {
    let parsed = match value {
        Value::Number(n) => Decimal::parse(&n.to_string()),
        Value::String(s) => Decimal::parse(s.trim()),
        _ => None,
    };
    parsed?.rescale(scale)
}

/// A DECIMAL as rows hold it, a JSON number: a whole one (scale 0) as an
/// integer, exact up to 19 digits and written without an exponent; any
/// other as the nearest double.
fn decimal_number(d: Decimal) -> Value {
    match i64::try_from(d.unscaled()) {
        Ok(whole) if d.scale() == 0 => Value::from(whole),
        _ => Value::from(d.to_f64()),
    }
}

/// CAST(value AS ty); a value that does not convert becomes null.
pub(crate) fn cast(value: &Value, ty: &SqlType) -> Value {
    match (ty, value) {
        (SqlType::Int | SqlType::BigInt, Value::Number(n)) if !n.is_i64() => n
            .as_f64()
            .map_or(Value::Null, |f| Value::from(f.trunc() as i64)),
        // Narrowing to INTEGER wraps around, as Java's (int) cast does.
        (SqlType::Int, Value::Number(n)) => Value::from(n.as_i64().unwrap_or_default() as i32),
        (SqlType::Double, Value::Number(n)) => n.as_f64().map_or(Value::Null, double),
        (SqlType::String, Value::Number(_) | Value::Array(_) | Value::Object(_)) => {
            Value::from(java_text(value))
        }
        (SqlType::Array(element), Value::Array(items)) => {
            Value::Array(items.iter().map(|v| cast(v, element)).collect())
        }
        (SqlType::Map(_, value_type), Value::Object(entries)) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), cast(v, value_type)))
                .collect(),
        ),
        // ISO-8601 text, as ksqlDB casts it; a zone offset is honoured, UTC without one.
        (SqlType::Timestamp, Value::String(s)) => {
            parse_partial_datetime(s.trim()).map_or(Value::Null, Value::from)
        }
        (SqlType::Date, Value::String(s)) => parse_partial_datetime(s.trim())
            .filter(|millis| millis % MILLIS_PER_DAY == 0)
            .map_or(Value::Null, |millis| Value::from(millis / MILLIS_PER_DAY)),
        // A number with more whole digits than the DECIMAL holds is null.
        (SqlType::Decimal { precision, scale }, _) => decimal(value, *scale)
            .filter(|d| d.precision() <= *precision)
            .map_or(Value::Null, decimal_number),
        _ => coerce(value, ty),
    }
}

/// A value as Java's toString() writes it: doubles as `1.0` or `1.0E10`,
/// lists as `[a, b]` and maps as `{k=v}`.
pub(crate) fn java_text(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        Value::Number(n) => java_double(n.as_f64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(java_text).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{k}={}", java_text(v)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        other => other.to_string(),
    }
}

/// A double as Java's Double.toString writes it: plain between 10^-3 and
/// 10^7 (always with a fraction), else `d.dddE±n`.
pub(crate) fn java_double(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let magnitude = f.abs();
    if magnitude == 0.0 || (1e-3..1e7).contains(&magnitude) {
        let plain = f.to_string();
        return if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        };
    }
    let scientific = format!("{f:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.to_string()
    } else {
        format!("{mantissa}.0")
    };
    format!("{mantissa}E{exponent}")
}

/// What an expression's value is typed as, given the columns in scope (and
/// the pseudo columns every row has).
pub(crate) fn type_of(expr: &Expr, columns: &[ColumnDef]) -> Result<SqlType> {
    let of = |e: &Expr| type_of(e, columns);
    Ok(match expr {
        Expr::Column(name) => column_type(name, columns)
            .ok_or_else(|| anyhow!("column '{name}' cannot be resolved."))?,
        Expr::Qualified { .. } => bail!("column '{expr}' cannot be resolved."),
        Expr::Literal(v) => literal_type(v),
        Expr::Not(_)
        | Expr::IsNull { .. }
        | Expr::Between { .. }
        | Expr::In { .. }
        | Expr::Like { .. }
        | Expr::DistinctFrom { .. } => SqlType::Boolean,
        Expr::Negate(inner) => of(inner)?,
        Expr::Binary(op, left, right) => {
            use BinaryOp as B;
            match op {
                B::Add | B::Sub | B::Mul | B::Div | B::Rem => {
                    arithmetic_type(*op, &of(left)?, &of(right)?)
                }
                _ => SqlType::Boolean,
            }
        }
        Expr::Case {
            branches,
            otherwise,
            ..
        } => {
            let mut results = branches.iter().map(|(_, t)| t).chain(otherwise.as_deref());
            match results.find(|then| !is_null_literal(then)) {
                Some(then) => of(then)?,
                None => bail!("Invalid Case expression. All case branches have NULL type"),
            }
        }
        Expr::Cast { ty, .. } => ty.clone(),
        Expr::Subscript { base, .. } => match of(base)? {
            SqlType::Array(element) => *element,
            SqlType::Map(_, value) => *value,
            other => bail!("Subscripts can only be applied to an ARRAY or a MAP, not {other}"),
        },
        Expr::Field { base, field } => match of(base)? {
            SqlType::Struct(fields) => fields
                .into_iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(field))
                .map(|(_, ty)| ty)
                .ok_or_else(|| anyhow!("Could not find field '{field}' in '{base:?}'."))?,
            other => bail!("Expected STRUCT type, got: {other}"),
        },
        Expr::Array(items) => SqlType::Array(Box::new(common_type(items, columns)?)),
        Expr::Map(entries) => {
            let keys: Vec<Expr> = entries.iter().map(|(k, _)| k.clone()).collect();
            let values: Vec<Expr> = entries.iter().map(|(_, v)| v.clone()).collect();
            SqlType::Map(
                Box::new(common_type(&keys, columns)?),
                Box::new(common_type(&values, columns)?),
            )
        }
        Expr::Struct(fields) => SqlType::Struct(
            fields
                .iter()
                .map(|(name, e)| Ok((name.clone(), of(e)?)))
                .collect::<Result<_>>()?,
        ),
        Expr::Lambda { body, .. } => of(body)?,
        Expr::Function { name, args, .. } => {
            if is_aggregate(expr) {
                let types = args.iter().map(of).collect::<Result<Vec<_>>>()?;
                aggregate_type(name, args, &types)
            } else {
                let types = args
                    .iter()
                    .map(|a| lambda_aware_type(a, args, columns))
                    .collect::<Result<Vec<_>>>()?;
                return_type(name, &types)?
            }
        }
    })
}

/// A lambda's parameters take the element (or key and value) types of the
/// collection passed first, so its body can be typed.
fn lambda_aware_type(arg: &Expr, args: &[Expr], columns: &[ColumnDef]) -> Result<SqlType> {
    let Expr::Lambda { params, body } = arg else {
        return type_of(arg, columns);
    };
    let collection = match args.first() {
        Some(first) if first != arg => type_of(first, columns)?,
        _ => SqlType::String,
    };
    let mut param_types = match collection {
        SqlType::Array(element) => vec![*element],
        SqlType::Map(key, value) => vec![*key, *value],
        other => vec![other],
    };
    // REDUCE's lambda takes its state first, typed as the initial state
    // (the argument between the collection and the lambda).
    if let (true, [_, state, _]) = (params.len() > param_types.len(), args) {
        param_types.insert(0, type_of(state, columns)?);
    }
    let mut scope = columns.to_vec();
    for (name, ty) in params.iter().zip(param_types) {
        scope.push(ColumnDef {
            name: name.clone(),
            ty,
            key: false,
        });
    }
    type_of(body, &scope)
}

fn is_null_literal(expr: &Expr) -> bool {
    matches!(expr, Expr::Literal(Value::Null))
}

/// The type of the first non-null expression of a constructor's list.
fn common_type(items: &[Expr], columns: &[ColumnDef]) -> Result<SqlType> {
    items
        .iter()
        .find(|e| !is_null_literal(e))
        .map_or(Ok(SqlType::String), |e| type_of(e, columns))
}

pub(crate) fn column_type(name: &str, columns: &[ColumnDef]) -> Option<SqlType> {
    if let Some(column) = columns.iter().find(|c| c.name == name) {
        return Some(column.ty.clone());
    }
    // A joined row has each side's pseudo columns as `ALIAS_ROWTIME` and so on.
    let pseudo = name.rsplit_once('_').map_or(name, |(_, pseudo)| pseudo);
    match (name, pseudo) {
        ("ROWTIME" | "ROWOFFSET" | "WINDOWSTART" | "WINDOWEND", _) => Some(SqlType::BigInt),
        ("ROWPARTITION", _) => Some(SqlType::Int),
        (_, "ROWTIME" | "ROWOFFSET") => Some(SqlType::BigInt),
        (_, "ROWPARTITION") => Some(SqlType::Int),
        _ => None,
    }
}

pub(crate) fn literal_type(value: &Value) -> SqlType {
    match value {
        Value::Bool(_) => SqlType::Boolean,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => SqlType::Int,
            Some(_) => SqlType::BigInt,
            None => SqlType::Double,
        },
        Value::Array(items) => SqlType::Array(Box::new(
            items.first().map_or(SqlType::String, literal_type),
        )),
        Value::Object(_) => SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::String)),
        Value::String(_) | Value::Null => SqlType::String,
    }
}

/// The result type of `left op right`: the wider numeric type (or STRING
/// for `+` on strings).
pub(crate) fn arithmetic_type(op: BinaryOp, left: &SqlType, right: &SqlType) -> SqlType {
    use SqlType as T;
    match (left, right) {
        (T::String, _) | (_, T::String) if op == BinaryOp::Add => T::String,
        (T::Double, _) | (_, T::Double) => T::Double,
        (T::Decimal { .. }, _) | (_, T::Decimal { .. }) => {
            decimal_result(op, decimal_digits(left), decimal_digits(right))
        }
        (T::BigInt, _) | (_, T::BigInt) => T::BigInt,
        _ => T::Int,
    }
}

/// The precision and scale a number of type `ty` needs as a DECIMAL.
fn decimal_digits(ty: &SqlType) -> (u32, u32) {
    match ty {
        SqlType::Decimal { precision, scale } => (*precision, *scale),
        SqlType::BigInt => (19, 0),
        _ => (10, 0),
    }
}

/// The precision and scale of a DECIMAL arithmetic result, as SQL Server (and ksqlDB) size them.
fn decimal_result(op: BinaryOp, (p1, s1): (u32, u32), (p2, s2): (u32, u32)) -> SqlType {
    let (precision, scale) = match op {
        BinaryOp::Add | BinaryOp::Sub => {
            let scale = s1.max(s2);
            (scale + (p1 - s1).max(p2 - s2) + 1, scale)
        }
        BinaryOp::Mul => (p1 + p2 + 1, s1 + s2),
        BinaryOp::Div => {
            let scale = 6.max(s1 + p2 + 1);
            (p1 - s1 + s2 + scale, scale)
        }
        _ => {
            let scale = s1.max(s2);
            ((p1 - s1).min(p2 - s2) + scale, scale)
        }
    };
    SqlType::Decimal {
        precision: precision.min(38),
        scale: scale.min(38),
    }
}

/// A JSON object's field by name, exactly or else ignoring case.
pub(crate) fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    // Wide objects look the exact name up; narrow ones are scanned once, an
    // exact match winning over the first that differs only in case.
    if object.len() > 8 {
        if let Some(value) = object.get(name) {
            return Some(value);
        }
    }
    let mut folded = None;
    for (key, value) in object {
        if key == name {
            return Some(value);
        }
        if folded.is_none() && key.eq_ignore_ascii_case(name) {
            folded = Some(value);
        }
    }
    folded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    #[test]
    fn iso_text_casts_to_timestamps_and_dates() {
        let text = |s: &str| Value::from(s);
        let millis = Value::from(1_651_182_287_943_i64);
        assert_eq!(
            cast(&text("2022-04-28T21:44:47.943"), &SqlType::Timestamp),
            millis
        );
        assert_eq!(
            cast(&text("2022-04-28T21:44:47.943Z"), &SqlType::Timestamp),
            millis
        );
        assert_eq!(
            cast(&text("2022-04-28"), &SqlType::Date),
            Value::from(19_110)
        );
        assert_eq!(cast(&text("noon"), &SqlType::Timestamp), Value::Null);
        assert_eq!(cast(&text("2022-04-28T12:00"), &SqlType::Date), Value::Null);
    }

    #[test]
    fn names_are_ksqldbs() {
        let ty = SqlType::Struct(vec![
            ("A".into(), SqlType::Array(Box::new(SqlType::Int))),
            (
                "B".into(),
                SqlType::Map(
                    Box::new(SqlType::String),
                    Box::new(SqlType::Decimal {
                        precision: 4,
                        scale: 2,
                    }),
                ),
            ),
        ]);
        assert_eq!(
            ty.to_string(),
            "STRUCT<`A` ARRAY<INTEGER>, `B` MAP<STRING, DECIMAL(4, 2)>>"
        );
    }

    #[test]
    fn coercion_follows_the_declared_type_into_nested_values() {
        let ty = SqlType::Struct(vec![
            ("NAME".into(), SqlType::String),
            (
                "TAGS".into(),
                SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::String)),
            ),
            (
                "PRICE".into(),
                SqlType::Decimal {
                    precision: 4,
                    scale: 2,
                },
            ),
        ]);
        let value = serde_json::json!({"name": 7, "tags": {"on": false}, "price": "1.005e1"});
        assert_eq!(
            coerce(&value, &ty),
            serde_json::json!({"NAME": "7", "TAGS": {"on": "false"}, "PRICE": 10.05})
        );
    }

    #[test]
    fn expressions_are_typed() {
        let columns = vec![
            ColumnDef {
                name: "I".into(),
                ty: SqlType::Int,
                key: false,
            },
            ColumnDef {
                name: "L".into(),
                ty: SqlType::BigInt,
                key: false,
            },
            ColumnDef {
                name: "D".into(),
                ty: SqlType::Decimal {
                    precision: 4,
                    scale: 2,
                },
                key: false,
            },
            ColumnDef {
                name: "M".into(),
                ty: SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::Double)),
                key: false,
            },
        ];
        let typed = |sql: &str| {
            let statement = &parse(&format!("CREATE STREAM X AS SELECT {sql} FROM Y;")).unwrap()[0];
            let crate::parser::Statement::CreateAs { select, .. } = statement else {
                panic!()
            };
            let crate::parser::SelectItem::Expr { expr, .. } = &select.items[0] else {
                panic!()
            };
            type_of(expr, &columns).unwrap().to_string()
        };
        assert_eq!(typed("I + 1"), "INTEGER");
        assert_eq!(typed("I * L"), "BIGINT");
        assert_eq!(typed("M['a']"), "DOUBLE");
        assert_eq!(typed("ARRAY[I, 2]"), "ARRAY<INTEGER>");
        assert_eq!(typed("STRUCT(A := I)->A"), "INTEGER");
        assert_eq!(typed("COUNT(*)"), "BIGINT");
        assert_eq!(typed("SUM(M['a'])"), "DOUBLE");
        // DECIMAL results are sized as ksqlDB sizes them; INTEGER counts as DECIMAL(10, 0).
        assert_eq!(typed("D + D"), "DECIMAL(5, 2)");
        assert_eq!(typed("D - I"), "DECIMAL(13, 2)");
        assert_eq!(typed("D * D"), "DECIMAL(9, 4)");
        assert_eq!(typed("D / D"), "DECIMAL(11, 7)");
        assert_eq!(typed("D % D"), "DECIMAL(4, 2)");
        assert_eq!(typed("D * 1.5"), "DOUBLE",);
    }

    #[test]
    fn values_print_as_java_prints_them() {
        assert_eq!(java_double(1.0), "1.0");
        assert_eq!(java_double(0.5), "0.5");
        assert_eq!(java_double(1e10), "1.0E10");
        assert_eq!(java_double(-2.5e-5), "-2.5E-5");
        assert_eq!(java_text(&serde_json::json!([1, "a"])), "[1, a]");
        assert_eq!(java_text(&serde_json::json!({"k": 1.5})), "{k=1.5}");
        assert_eq!(
            cast(&Value::from(2_147_483_648i64), &SqlType::Int),
            Value::from(-2_147_483_648i64),
            "narrowing wraps"
        );
    }

    #[test]
    fn decimals_round_on_decimal_digits_and_overflow_to_null() {
        let ty = SqlType::Decimal {
            precision: 4,
            scale: 2,
        };
        // 1.005 as a double is 1.00499..; BigDecimal rounds its text.
        assert_eq!(cast(&Value::from(1.005), &ty), Value::from(1.01));
        assert_eq!(cast(&Value::from("-1.005"), &ty), Value::from(-1.01));
        assert_eq!(cast(&Value::from(99.994), &ty), Value::from(99.99));
        assert_eq!(
            cast(&Value::from(99.995), &ty),
            Value::Null,
            "100.00 needs 5 digits"
        );
        assert_eq!(cast(&Value::from("x"), &ty), Value::Null);
        let whole = SqlType::Decimal {
            precision: 17,
            scale: 0,
        };
        assert_eq!(
            cast(&Value::from("12345678987654321.4"), &whole),
            Value::from(12_345_678_987_654_321i64),
            "exact, not the nearest double"
        );
    }
}

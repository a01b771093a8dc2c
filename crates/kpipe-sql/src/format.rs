//! Value formats: how a record's key and value turn into a row's columns and back.

use anyhow::{bail, Result};
use serde_json::Value;

use crate::engine::{Record, Source};
use crate::eval::Row;
use crate::parser::{ColumnDef, SqlType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Delimited,
    Kafka,
}

impl Format {
    pub(crate) fn parse(name: &str) -> Result<Format> {
        match name.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Format::Json),
            "DELIMITED" => Ok(Format::Delimited),
            "KAFKA" => Ok(Format::Kafka),
            other => bail!("format {other} is not supported"),
        }
    }
}

/// The record's columns, or None for a tombstone.
pub(crate) fn decode(source: &Source, record: &Record) -> Result<Option<Row>> {
    if record.value.is_null() {
        return Ok(None);
    }
    let mut row = Row::new();
    let keys: Vec<&ColumnDef> = source.columns.iter().filter(|c| c.key).collect();
    if let [key] = keys.as_slice() {
        row.insert(key.name.clone(), coerce(&record.key, key.ty));
    }
    let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
    match source.value_format {
        Format::Json => {
            let Value::Object(object) = &record.value else {
                return Ok(None);
            };
            for column in &values {
                let field = object.get(&column.name).or_else(|| {
                    object
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&column.name))
                        .map(|(_, v)| v)
                });
                row.insert(
                    column.name.clone(),
                    field.map_or(Value::Null, |v| coerce(v, column.ty)),
                );
            }
        }
        Format::Delimited | Format::Kafka => {
            let text = match &record.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let fields = split_delimited(&text);
            if fields.len() != values.len() {
                return Ok(None);
            }
            for (column, field) in values.iter().zip(fields) {
                let value = if field.is_empty() {
                    Value::Null
                } else {
                    coerce(&Value::String(field), column.ty)
                };
                row.insert(column.name.clone(), value);
            }
        }
    }
    row.insert("ROWTIME".into(), Value::from(record.timestamp));
    row.insert("ROWPARTITION".into(), Value::from(record.partition));
    row.insert("ROWOFFSET".into(), Value::from(record.offset));
    Ok(Some(row))
}

/// DELIMITED fields: commas separate, double quotes quote (`""` is a quote).
pub(crate) fn split_delimited(text: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                fields.last_mut().expect("a field").push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            c => fields.last_mut().expect("a field").push(c),
        }
    }
    fields
}

pub(crate) fn coerce(value: &Value, ty: SqlType) -> Value {
    match (ty, value) {
        (_, Value::Null) => Value::Null,
        (SqlType::Int | SqlType::BigInt | SqlType::Timestamp, Value::Number(n)) => {
            n.as_i64().map_or(Value::Null, Value::from)
        }
        (SqlType::Int | SqlType::BigInt | SqlType::Timestamp, Value::String(s)) => {
            s.trim().parse::<i64>().map_or(Value::Null, Value::from)
        }
        (SqlType::Double, Value::Number(n)) => n.as_f64().map_or(Value::Null, Value::from),
        (SqlType::Double, Value::String(s)) => {
            s.trim().parse::<f64>().map_or(Value::Null, Value::from)
        }
        (SqlType::Boolean, Value::Bool(b)) => Value::Bool(*b),
        (SqlType::Boolean, Value::String(s)) => Value::Bool(s.eq_ignore_ascii_case("true")),
        (SqlType::String, Value::String(s)) => Value::String(s.clone()),
        (SqlType::String, other) => Value::String(other.to_string()),
        _ => Value::Null,
    }
}

pub(crate) fn delimited_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) if s.contains([',', '"', '\n']) => {
            format!("\"{}\"", s.replace('"', "\"\""))
        }
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

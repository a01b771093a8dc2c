//! Serialization formats: how a record's key and value turn into a row's
//! columns and back. JSON keys and values are JSON, and so are AVRO ones in
//! the engine (the codec sits at the topic's edge, in `wire`); DELIMITED ones
//! are comma-separated text; KAFKA holds one primitive column.

use anyhow::{bail, Result};
use serde_json::{Map, Value};

use crate::engine::{Record, Source};
use crate::eval::Row;
use crate::parser::{ColumnDef, SqlType};
use crate::types::{coerce, decimal, field, java_double};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Avro,
    Delimited,
    Kafka,
}

impl Format {
    pub(crate) fn parse(name: &str) -> Result<Format> {
        match name.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Format::Json),
            "AVRO" => Ok(Format::Avro),
            "DELIMITED" => Ok(Format::Delimited),
            "KAFKA" => Ok(Format::Kafka),
            other => bail!("format {other} is not supported"),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON",
            Format::Avro => "AVRO",
            Format::Delimited => "DELIMITED",
            Format::Kafka => "KAFKA",
        }
    }

    /// Whether the format holds ARRAY, MAP and STRUCT values (and so a
    /// single value unwrapped, `WRAP_SINGLE_VALUE=false`).
    pub(crate) fn has_nested_types(self) -> bool {
        matches!(self, Format::Json | Format::Avro)
    }

    /// Refuses key or value columns this format cannot hold, in ksqlDB's words.
    pub(crate) fn check(self, columns: &[&ColumnDef]) -> Result<()> {
        if self.has_nested_types() {
            return Ok(());
        }
        if let Some(column) = columns.iter().find(|c| !c.ty.is_primitive()) {
            let kind = match column.ty {
                SqlType::Array(_) => "ARRAY",
                SqlType::Map(..) => "MAP",
                _ => "STRUCT",
            };
            bail!(
                "The '{}' format does not support type '{kind}', column: `{}`",
                self.name(),
                column.name
            );
        }
        Ok(())
    }
}

/// The record's columns, or None for a tombstone (or a value that does not parse).
pub(crate) fn decode(source: &Source, record: &Record) -> Result<Option<Row>> {
    decode_reusing(source, record, Row::default())
}

/// [`decode`] into `row`, a row of an earlier record of the same source: its
/// column names are kept, so a record costs no name allocations.
pub(crate) fn decode_reusing(
    source: &Source,
    record: &Record,
    mut row: Row,
) -> Result<Option<Row>> {
    if record.value.is_null() {
        return Ok(None);
    }
    decode_key_into(source, &record.key, &mut row);
    let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
    match source.value_format {
        Format::Json | Format::Avro => match (&record.value, values.as_slice()) {
            (value, [only]) if !source.wrap_single_value => {
                set(&mut row, &only.name, coerce(value, &only.ty));
            }
            (Value::Object(object), _) => {
                for column in &values {
                    let value =
                        field(object, &column.name).map_or(Value::Null, |v| coerce(v, &column.ty));
                    set(&mut row, &column.name, value);
                }
            }
            _ => return Ok(None),
        },
        Format::Delimited | Format::Kafka => {
            let text = match &record.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let fields = if source.value_format == Format::Kafka {
                vec![text]
            } else {
                split_delimited(&text)
            };
            if fields.len() != values.len() {
                return Ok(None);
            }
            for (column, text) in values.iter().zip(fields) {
                set(&mut row, &column.name, delimited_field(text, &column.ty));
            }
        }
    }
    set(&mut row, "ROWTIME", Value::from(record.timestamp));
    set(&mut row, "ROWPARTITION", Value::from(record.partition));
    set(&mut row, "ROWOFFSET", Value::from(record.offset));
    match record.window.filter(|_| source.window.is_some()) {
        Some((start, end)) => {
            set(&mut row, "WINDOWSTART", Value::from(start));
            set(&mut row, "WINDOWEND", Value::from(end));
        }
        None => {
            row.remove("WINDOWSTART");
            row.remove("WINDOWEND");
        }
    }
    Ok(Some(row))
}

/// Sets a column, allocating its name only the first time.
fn set(row: &mut Row, name: &str, value: Value) {
    match row.get_mut(name) {
        Some(slot) => *slot = value,
        None => {
            row.insert(name.to_string(), value);
        }
    }
}

/// The key columns of a record's key: one column is the key itself; several
/// are a JSON object's fields or DELIMITED fields.
pub(crate) fn decode_key(source: &Source, key: &Value) -> Row {
    let mut row = Row::default();
    decode_key_into(source, key, &mut row);
    row
}

fn decode_key_into(source: &Source, key: &Value, row: &mut Row) {
    let columns: Vec<&ColumnDef> = source.columns.iter().filter(|c| c.key).collect();
    // Room for every column and the pseudo columns, so decoding never rehashes.
    row.reserve((source.columns.len() + 5).saturating_sub(row.len()));
    match (columns.as_slice(), source.key_format) {
        ([], _) => {}
        ([only], Format::Delimited) => {
            let text = key.as_str().map_or_else(|| key.to_string(), String::from);
            let value = if key.is_null() {
                Value::Null
            } else {
                delimited_field(text, &only.ty)
            };
            set(row, &only.name, value);
        }
        ([only], _) => {
            set(row, &only.name, coerce(key, &only.ty));
        }
        (many, Format::Delimited) => {
            let fields = key.as_str().map(split_delimited).unwrap_or_default();
            for (i, column) in many.iter().enumerate() {
                let value = fields.get(i).map_or(Value::Null, |text| {
                    delimited_field(text.clone(), &column.ty)
                });
                set(row, &column.name, value);
            }
        }
        (many, _) => {
            for column in many {
                let value = match key {
                    Value::Object(object) => {
                        field(object, &column.name).map_or(Value::Null, |v| coerce(v, &column.ty))
                    }
                    _ => Value::Null,
                };
                set(row, &column.name, value);
            }
        }
    }
}

/// A DELIMITED field's text as a value of `ty`; empty is null.
fn delimited_field(text: String, ty: &SqlType) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        coerce(&Value::String(text), ty)
    }
}

/// A key from its columns' values, in key order.
pub(crate) fn encode_key(format: Format, columns: &[(&ColumnDef, Value)]) -> Value {
    match (columns, format) {
        ([], _) => Value::Null,
        ([(_, Value::Null)], _) => Value::Null,
        ([(column, value)], Format::Delimited) => {
            Value::String(delimited_line(&[(*column, value.clone())]))
        }
        ([(_, value)], _) => value.clone(),
        (many, Format::Delimited) => Value::String(delimited_line(many)),
        (many, _) => Value::Object(
            many.iter()
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect::<Map<_, _>>(),
        ),
    }
}

/// A value from its columns' values, in column order.
pub(crate) fn encode_value(sink: &Source, columns: &[(&ColumnDef, Value)]) -> Value {
    match (sink.value_format, columns) {
        (Format::Json | Format::Avro, [(_, value)]) if !sink.wrap_single_value => value.clone(),
        (Format::Json | Format::Avro, _) => Value::Object(
            columns
                .iter()
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect(),
        ),
        (Format::Kafka, [(_, value)]) => value.clone(),
        (Format::Delimited | Format::Kafka, _) => Value::String(delimited_line(columns)),
    }
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

/// Values as a DELIMITED line: DECIMALs with all their scale's digits; a
/// field quoted as Apache Commons CSV (which ksqlDB writes with) quotes it:
/// when it holds a separator, quote or line break, starts with a character
/// up to `#` or ends with one up to a space, or, first on the line, starts
/// with anything but a letter or digit.
pub(crate) fn delimited_line(values: &[(&ColumnDef, Value)]) -> String {
    let mut line = Vec::with_capacity(values.len());
    for (i, (column, value)) in values.iter().enumerate() {
        let text = match (value, &column.ty) {
            (Value::Null, _) => {
                line.push(String::new());
                continue;
            }
            (Value::Number(_), SqlType::Decimal { scale, .. }) => {
                decimal(value, *scale).map_or_else(|| value.to_string(), |d| d.to_string())
            }
            (Value::Number(n), SqlType::Double) => java_double(n.as_f64().unwrap_or_default()),
            (Value::String(s), _) => s.clone(),
            (other, _) => other.to_string(),
        };
        let first = text.chars().next();
        let last = text.chars().last();
        let quoted = match first {
            None => i == 0,
            Some(c) => {
                (i == 0 && !c.is_ascii_alphanumeric())
                    || c <= '#'
                    || last.is_some_and(|c| c <= ' ')
                    || text.contains([',', '"', '\n', '\r'])
            }
        };
        line.push(if quoted {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        });
    }
    line.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: SqlType, key: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            key,
        }
    }

    #[test]
    fn several_key_columns_are_an_object_in_json_and_fields_in_delimited() {
        let a = column("A", SqlType::String, true);
        let b = column("B", SqlType::Int, true);
        let values = [(&a, Value::from("x")), (&b, Value::from(1))];
        assert_eq!(
            encode_key(Format::Json, &values),
            serde_json::json!({"A": "x", "B": 1})
        );
        assert_eq!(encode_key(Format::Delimited, &values), Value::from("x,1"));
        assert_eq!(encode_key(Format::Kafka, &values[1..]), Value::from(1));
    }

    #[test]
    fn delimited_lines_keep_decimal_scale_and_quote_as_commons_csv() {
        let d = column(
            "D",
            SqlType::Decimal {
                precision: 4,
                scale: 2,
            },
            false,
        );
        let s = column("S", SqlType::String, false);
        let line = |values: &[(&ColumnDef, Value)]| delimited_line(values);
        assert_eq!(
            line(&[(&d, Value::from(12.3)), (&s, Value::from("a,b"))]),
            "12.30,\"a,b\""
        );
        assert_eq!(
            line(&[(&s, Value::from("-1")), (&s, Value::from("-1"))]),
            "\"-1\",-1"
        );
        assert_eq!(
            line(&[(&s, Value::from("x")), (&s, Value::from(" y"))]),
            "x,\" y\""
        );
    }
}

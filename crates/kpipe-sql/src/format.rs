//! Serialization formats: how a record's key and value turn into a row's
//! columns and back. JSON keys and values are JSON, and so are AVRO ones in
//! the engine (the codec sits at the topic's edge, in `wire`); DELIMITED ones
//! are comma-separated text; KAFKA holds one primitive column.

use anyhow::{bail, Result};
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::engine::{Record, Source};
use crate::eval::Row;
use crate::parser::{ColumnDef, SqlType};
use crate::row::same;
use crate::types::{coerce, coerce_owned, decimal, field, java_double};

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
    if value_into(source, &record.value, &mut row).is_none() {
        return Ok(None);
    }
    let (timestamp, window) = (record.timestamp, record.window);
    meta_into(
        source,
        &mut row,
        timestamp,
        record.partition,
        record.offset,
        window,
    );
    Ok(Some(row))
}

/// A (non-null) value's columns into `row`; None when it holds no row.
pub(crate) fn value_into(source: &Source, value: &Value, row: &mut Row) -> Option<()> {
    let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
    match source.value_format {
        Format::Json | Format::Avro => match (value, values.as_slice()) {
            (value, [only]) if !source.wrap_single_value => {
                row.set(&only.name, coerce(value, &only.ty));
            }
            (Value::Object(object), _) => {
                for column in &values {
                    let value =
                        field(object, &column.name).map_or(Value::Null, |v| coerce(v, &column.ty));
                    row.set(&column.name, value);
                }
            }
            _ => return None,
        },
        Format::Delimited | Format::Kafka => {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let fields = if source.value_format == Format::Kafka {
                vec![text]
            } else {
                split_delimited(&text)
            };
            if fields.len() != values.len() {
                return None;
            }
            for (column, text) in values.iter().zip(fields) {
                row.set(&column.name, delimited_field(text, &column.ty));
            }
        }
    }
    Some(())
}

/// The pseudo columns: ROWTIME, ROWPARTITION, ROWOFFSET, and for a windowed
/// source WINDOWSTART and WINDOWEND.
pub(crate) fn meta_into(
    source: &Source,
    row: &mut Row,
    timestamp: i64,
    partition: i32,
    offset: i64,
    window: Option<(i64, i64)>,
) {
    row.set("ROWTIME", Value::from(timestamp));
    row.set("ROWPARTITION", Value::from(partition));
    row.set("ROWOFFSET", Value::from(offset));
    match window.filter(|_| source.window.is_some()) {
        Some((start, end)) => {
            row.set("WINDOWSTART", Value::from(start));
            row.set("WINDOWEND", Value::from(end));
        }
        // Rows of an unwindowed source never had them.
        None if source.window.is_none() => {}
        None => {
            row.remove("WINDOWSTART");
            row.remove("WINDOWEND");
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

pub(crate) fn decode_key_into(source: &Source, key: &Value, row: &mut Row) {
    let columns: Vec<&ColumnDef> = source.columns.iter().filter(|c| c.key).collect();
    match (columns.as_slice(), source.key_format) {
        ([], _) => {}
        ([only], Format::Delimited) => {
            let text = key.as_str().map_or_else(|| key.to_string(), String::from);
            let value = if key.is_null() {
                Value::Null
            } else {
                delimited_field(text, &only.ty)
            };
            row.set(&only.name, value);
        }
        ([only], _) => {
            row.set(&only.name, coerce(key, &only.ty));
        }
        (many, Format::Delimited) => {
            let fields = key.as_str().map(split_delimited).unwrap_or_default();
            for (i, column) in many.iter().enumerate() {
                let value = fields.get(i).map_or(Value::Null, |text| {
                    delimited_field(text.clone(), &column.ty)
                });
                row.set(&column.name, value);
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
                row.set(&column.name, value);
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

/// A JSON object's fields read straight into `row`'s value columns, as
/// [`value_into`] reads them from a parsed object (the field named as the
/// column, else the one named so but for case), without building the object.
/// False when this shortcut does not apply: the value is no object, is not
/// JSON, or names a column twice; [`value_into`] decides then.
pub(crate) fn json_fields_into(source: &Source, bytes: &[u8], row: &mut Row) -> bool {
    let values = source.columns.iter().filter(|c| !c.key);
    let count = values.clone().count();
    if (count == 1 && !source.wrap_single_value) || count > 64 {
        return false;
    }
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    let fields = JsonFields { source, row };
    let Ok(found) = parser.deserialize_map(fields) else {
        return false;
    };
    for (i, column) in values.enumerate() {
        if found & (1 << i) == 0 {
            row.set(&column.name, Value::Null);
        }
    }
    parser.end().is_ok()
}

struct JsonFields<'a> {
    source: &'a Source,
    row: &'a mut Row,
}

impl<'de> Visitor<'de> for JsonFields<'_> {
    /// The value columns found, by bit.
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        // Per value column (by its bit): a field named exactly as it, or but for case.
        let (mut exact, mut folded) = (0u64, 0u64);
        let columns = || self.source.columns.iter().filter(|c| !c.key);
        while let Some(found) = map.next_key_seed(ColumnOf(self.source))? {
            let Some((i, is_exact)) = found else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let bit = 1u64 << i;
            let column = columns().nth(i).expect("a value column's index");
            if is_exact {
                exact |= bit;
            } else if exact & bit != 0 {
                map.next_value::<IgnoredAny>()?;
                continue;
            } else if folded & bit != 0 {
                // Which of two spellings wins is the parsed object's key order.
                return Err(serde::de::Error::custom("a column named twice"));
            } else {
                folded |= bit;
            }
            let slot = self.row.slot(&column.name);
            map.next_value_seed(ValueInto(slot, &column.ty))?;
        }
        Ok(exact | folded)
    }
}

/// A JSON value written over a column's value, as [`coerce`] converts it;
/// text reuses the room of the text it replaces.
struct ValueInto<'a>(&'a mut Value, &'a SqlType);

impl ValueInto<'_> {
    fn put(self, value: Value) {
        *self.0 = coerce_owned(value, self.1);
    }
}

impl<'de> DeserializeSeed<'de> for ValueInto<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueInto<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<(), E> {
        match (self.1, &mut *self.0) {
            (SqlType::String | SqlType::Bytes, Value::String(room)) => {
                room.clear();
                room.push_str(text);
            }
            _ => self.put(Value::from(text)),
        }
        Ok(())
    }

    fn visit_bool<E>(self, b: bool) -> Result<(), E> {
        self.put(Value::Bool(b));
        Ok(())
    }

    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        self.put(Value::from(n));
        Ok(())
    }

    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.put(Value::from(n));
        Ok(())
    }

    fn visit_f64<E>(self, f: f64) -> Result<(), E> {
        self.put(Value::from(f));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.put(Value::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, items: A) -> Result<(), A::Error> {
        self.put(Value::deserialize(SeqAccessDeserializer::new(items))?);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, fields: A) -> Result<(), A::Error> {
        self.put(Value::deserialize(MapAccessDeserializer::new(fields))?);
        Ok(())
    }
}

/// A field name as the value column it names: its index among the value
/// columns and whether the name is exact (not only equal but for case).
struct ColumnOf<'a>(&'a Source);

impl<'de> DeserializeSeed<'de> for ColumnOf<'_> {
    type Value = Option<(usize, bool)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for ColumnOf<'_> {
    type Value = Option<(usize, bool)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        let mut folded = None;
        for (i, column) in self.0.columns.iter().filter(|c| !c.key).enumerate() {
            if same(&column.name, name) {
                return Ok(Some((i, true)));
            }
            if column.name.eq_ignore_ascii_case(name) {
                if folded.is_some() {
                    return Err(E::custom("a field naming two columns but for case"));
                }
                folded = Some((i, false));
            }
        }
        Ok(folded)
    }
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

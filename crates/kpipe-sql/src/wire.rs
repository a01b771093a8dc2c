//! Records on the wire: how a source's key and value formats turn Kafka
//! message bytes into engine records and back, as ksqlDB serializes them.
//! KAFKA keys are Kafka's own serializers (big-endian INT, BIGINT, DOUBLE;
//! UTF-8 STRING); a windowed key appends its window as Kafka Streams does:
//! the start (8 bytes) for time windows, the end then the start for sessions.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::avro::{self, SchemaRegistry};
use crate::engine::{Engine, Record, RowRecord, Source};
use crate::eval::Row;
use crate::format::{decode_key_into, json_fields_into, meta_into, value_into, Format};
use crate::parser::{ColumnDef, SqlType};

/// One Kafka message's parts, as the runtime hands them to the engine.
pub struct Message<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp: i64,
    pub partition: i32,
    pub offset: i64,
}

/// A record as message bytes: None for a null key or a tombstone.
pub struct Encoded {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

impl Engine {
    /// The record a message is, read with the formats of the source over its topic.
    pub fn decode_message(&self, message: &Message<'_>) -> Result<Record> {
        let source = self
            .source_over(message.topic)
            .ok_or_else(|| anyhow!("no stream or table reads topic {}", message.topic))?;
        let (key, window) = match message.key {
            None => (Value::Null, None),
            Some(bytes) => decode_key(source, &self.registry, bytes)?,
        };
        let value = match message.value {
            None => Value::Null,
            Some(bytes) => decode_value(source, &self.registry, bytes)?,
        };
        Ok(Record {
            topic: message.topic.to_string(),
            key,
            value,
            timestamp: message.timestamp,
            window,
            partition: message.partition,
            offset: message.offset,
        })
    }

    /// A message of `source` (see [`Engine::row_source`]) decoded into `row`
    /// straight from its bytes. None when it is no row (a tombstone, a
    /// value that does not decode): the query then takes the whole record,
    /// which [`Engine::decode_message`] reads or explains.
    pub(crate) fn decode_row(
        &self,
        source: &Source,
        message: &Message<'_>,
        mut row: Row,
    ) -> Option<RowRecord> {
        let bytes = message.value?;
        let (key, window) = match message.key {
            None => (Value::Null, None),
            Some(key) => decode_key(source, &self.registry, key).ok()?,
        };
        decode_key_into(source, &key, &mut row);
        if !(source.value_format == Format::Json && json_fields_into(source, bytes, &mut row)) {
            let value = decode_value(source, &self.registry, bytes).ok()?;
            value_into(source, &value, &mut row)?;
        }
        let (timestamp, partition, offset) = (message.timestamp, message.partition, message.offset);
        meta_into(source, &mut row, timestamp, partition, offset, window);
        Some(RowRecord {
            row,
            timestamp,
            window,
            partition,
            offset,
        })
    }

    /// A record the queries wrote, as message key and value bytes.
    pub fn encode_message(&self, record: &Record) -> Result<Encoded> {
        let sink = self
            .source_over(&record.topic)
            .ok_or_else(|| anyhow!("no stream or table writes topic {}", record.topic))?;
        let key = match &record.key {
            Value::Null => None,
            key => Some(encode_key(sink, &self.registry, key, record.window)?),
        };
        let value = match &record.value {
            Value::Null => None,
            value => Some(encode_value(sink, &self.registry, value)?),
        };
        Ok(Encoded { key, value })
    }

    /// A key's bytes without its window: what a table's state store orders
    /// rows by and Kafka's default partitioner hashes. None for a null key.
    pub fn key_bytes(&self, topic: &str, key: &Value) -> Result<Option<Vec<u8>>> {
        let source = self
            .source_over(topic)
            .ok_or_else(|| anyhow!("no stream or table reads topic {topic}"))?;
        match key {
            Value::Null => Ok(None),
            key => encode_key(source, &self.registry, key, None).map(Some),
        }
    }

    /// The stream or table over `topic`. Several may share a topic (in other
    /// formats), so the one a query reads or writes wins, and among the rest
    /// the first by name: the same answer every time.
    pub(crate) fn source_over(&self, topic: &str) -> Option<&Source> {
        let used = self.queries.iter().flat_map(|q| [&q.from, &q.sink]);
        used.filter_map(|name| self.sources.get(name))
            .find(|s| s.topic == topic)
            .or_else(|| {
                let mut over: Vec<_> = self
                    .sources
                    .iter()
                    .filter(|(_, s)| s.topic == topic)
                    .collect();
                over.sort_by_key(|(name, _)| *name);
                over.first().map(|(_, s)| *s)
            })
            .map(|s| &**s)
    }
}

fn key_columns(source: &Source) -> Vec<&ColumnDef> {
    source.columns.iter().filter(|c| c.key).collect()
}

fn decode_key(
    source: &Source,
    registry: &SchemaRegistry,
    bytes: &[u8],
) -> Result<(Value, Option<(i64, i64)>)> {
    let (bytes, window) = match source.window {
        None => (bytes, None),
        Some(w) if w.session => {
            let at = bytes
                .len()
                .checked_sub(16)
                .ok_or_else(|| anyhow!("a session-windowed key needs 16 bytes of window"))?;
            let end = be_i64(&bytes[at..at + 8])?;
            let start = be_i64(&bytes[at + 8..])?;
            (&bytes[..at], Some((start, end)))
        }
        Some(w) => {
            let at = bytes
                .len()
                .checked_sub(8)
                .ok_or_else(|| anyhow!("a time-windowed key needs 8 bytes of window start"))?;
            let start = be_i64(&bytes[at..])?;
            (&bytes[..at], Some((start, start + w.size)))
        }
    };
    let key = match (source.key_format, key_columns(source).as_slice()) {
        (_, []) => Value::Null,
        (Format::Avro, _) => registry.decode(bytes).context("cannot read the key")?,
        (Format::Json, _) => serde_json::from_slice(bytes).context("the key is not JSON")?,
        (Format::Kafka, [column]) => {
            kafka_value(&column.ty, bytes).context("cannot read the key")?
        }
        _ => Value::String(utf8(bytes)?.to_string()),
    };
    Ok((key, window))
}

fn decode_value(source: &Source, registry: &SchemaRegistry, bytes: &[u8]) -> Result<Value> {
    Ok(match source.value_format {
        Format::Json => serde_json::from_slice(bytes).context("the value is not JSON")?,
        Format::Avro => registry.decode(bytes).context("cannot read the value")?,
        Format::Delimited => Value::String(utf8(bytes)?.to_string()),
        Format::Kafka => {
            let values: Vec<&ColumnDef> = source.columns.iter().filter(|c| !c.key).collect();
            match values.as_slice() {
                [column] => match kafka_value(&column.ty, bytes)? {
                    Value::String(s) => Value::String(s),
                    other => Value::String(other.to_string()),
                },
                _ => bail!("the KAFKA format holds exactly one value column"),
            }
        }
    })
}

/// One column's bytes as Kafka's serializers write them.
fn kafka_value(ty: &SqlType, bytes: &[u8]) -> Result<Value> {
    Ok(match ty {
        SqlType::Int => {
            let b: [u8; 4] = bytes
                .try_into()
                .map_err(|_| anyhow!("an INT is 4 bytes, not {}", bytes.len()))?;
            Value::from(i32::from_be_bytes(b))
        }
        SqlType::BigInt | SqlType::Timestamp => Value::from(be_i64(bytes)?),
        SqlType::Double => Value::from(f64::from_bits(be_i64(bytes)? as u64)),
        SqlType::String => Value::String(utf8(bytes)?.to_string()),
        other => bail!("the KAFKA format has no {other}"),
    })
}

fn encode_key(
    sink: &Source,
    registry: &SchemaRegistry,
    key: &Value,
    window: Option<(i64, i64)>,
) -> Result<Vec<u8>> {
    let mut bytes = match (sink.key_format, key_columns(sink).as_slice()) {
        (Format::Avro, _) => registry.encode(&avro::key_subject(&sink.topic), key)?,
        (Format::Json, [_, _, ..]) => json_key_in_column_order(sink, key)?,
        (Format::Json, _) => serde_json::to_vec(key)?,
        (Format::Kafka, [column]) => kafka_bytes(&column.ty, key)?,
        _ => text_bytes(key),
    };
    if let (Some(w), Some((start, end))) = (sink.window, window) {
        if w.session {
            bytes.extend_from_slice(&end.to_be_bytes());
        }
        bytes.extend_from_slice(&start.to_be_bytes());
    }
    Ok(bytes)
}

/// A multi-column JSON key with its fields in the key columns' order, as
/// ksqlDB writes it (the bytes decide the partition and the store's order).
fn json_key_in_column_order(sink: &Source, key: &Value) -> Result<Vec<u8>> {
    let Value::Object(fields) = key else {
        return Ok(serde_json::to_vec(key)?);
    };
    let mut bytes = vec![b'{'];
    for (i, column) in key_columns(sink).iter().enumerate() {
        if i > 0 {
            bytes.push(b',');
        }
        serde_json::to_writer(&mut bytes, &column.name)?;
        bytes.push(b':');
        serde_json::to_writer(&mut bytes, fields.get(&column.name).unwrap_or(&Value::Null))?;
    }
    bytes.push(b'}');
    Ok(bytes)
}

fn encode_value(sink: &Source, registry: &SchemaRegistry, value: &Value) -> Result<Vec<u8>> {
    Ok(match sink.value_format {
        Format::Json => serde_json::to_vec(value)?,
        Format::Avro => registry.encode(&avro::value_subject(&sink.topic), value)?,
        Format::Delimited | Format::Kafka => text_bytes(value),
    })
}

/// A text value's UTF-8 (any other value's JSON text).
fn text_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// One column's value as Kafka's serializers write it.
fn kafka_bytes(ty: &SqlType, value: &Value) -> Result<Vec<u8>> {
    Ok(match (ty, value) {
        (SqlType::Int, Value::Number(n)) => {
            let n = n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| anyhow!("{n} is not an INT"))?;
            n.to_be_bytes().to_vec()
        }
        (SqlType::BigInt | SqlType::Timestamp, Value::Number(n)) => n
            .as_i64()
            .ok_or_else(|| anyhow!("{n} is not a BIGINT"))?
            .to_be_bytes()
            .to_vec(),
        (SqlType::Double, Value::Number(n)) => n
            .as_f64()
            .unwrap_or_default()
            .to_bits()
            .to_be_bytes()
            .to_vec(),
        (_, value) => text_bytes(value),
    })
}

fn be_i64(bytes: &[u8]) -> Result<i64> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| anyhow!("expected 8 bytes, found {}", bytes.len()))?;
    Ok(i64::from_be_bytes(b))
}

fn utf8(bytes: &[u8]) -> Result<&str> {
    std::str::from_utf8(bytes).context("not UTF-8 text")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::engine::engine_with as engine;

    #[test]
    fn rows_decoded_straight_from_json_match_rows_of_the_parsed_record() {
        let scripts = [
            "CREATE STREAM p (id INT KEY, name STRING, Amount INT, tags ARRAY<STRING>,
                 inner STRUCT<x DOUBLE>, `Mixed` STRING, flag BOOLEAN)
                 WITH (kafka_topic='p', value_format='JSON');",
            "CREATE STREAM p (amount INT) WITH (kafka_topic='p', value_format='JSON', wrap_single_value=false);",
        ];
        let values: [&[u8]; 14] = [
            br#"{"name":"Carol","amount":5,"tags":["a","b"],"inner":{"X":1.5},"flag":true}"#,
            br#"{"NAME":"exact","name":"folded","AMOUNT":"12"}"#,
            br#"{"name":"folded","NAME":"exact"}"#,
            br#"{"Name":"one","nAme":"two"}"#,
            br#"{"name":"dup","name":"last"}"#,
            br#"{"Mixed":"exact","MIXED":"folded"}"#,
            br#"{"mixed":"folded only","extra":{"deep":[1,{"a":null}]}}"#,
            br#"{"name":"escaped key","amount":1e3,"flag":"true"}"#,
            br#"{"amount":-7.9,"name":17,"inner":null}"#,
            br#"{}"#,
            br#"[1,2]"#,
            br#"42"#,
            br#"{"name":"trailing"} x"#,
            br#"{"name":"#,
        ];
        for script in scripts {
            let engine = engine(&format!("{script} CREATE STREAM o AS SELECT * FROM p;"));
            let source = engine
                .row_source("p")
                .expect("a plain stream query reads p");
            for value in values {
                let message = Message {
                    topic: "p",
                    key: Some(&7i32.to_be_bytes()),
                    value: Some(value),
                    timestamp: 12_345,
                    partition: 2,
                    offset: 40,
                };
                let parsed = engine
                    .decode_message(&message)
                    .ok()
                    .and_then(|record| crate::format::decode(source, &record).ok().flatten());
                let mut warm = engine
                    .decode_row(source, &message, Row::default())
                    .map(|r| r.row)
                    .unwrap_or_default();
                let names: Vec<String> = warm.iter().map(|(name, _)| name.clone()).collect();
                for name in names {
                    warm.set(&name, Value::from("left over"));
                }
                let decoded = engine.decode_row(source, &message, Row::default());
                let reused = engine.decode_row(source, &message, warm);
                let text = String::from_utf8_lossy(value);
                assert_eq!(decoded.map(|r| r.row), parsed, "{script} {text}");
                assert_eq!(reused.map(|r| r.row), parsed, "reused row: {script} {text}");
            }
        }
    }

    #[test]
    fn a_topic_read_in_two_formats_is_decoded_as_its_query_reads_it() {
        let engine = engine(
            "CREATE STREAM A_JSON (name STRING) WITH (kafka_topic='t', value_format='JSON');
             CREATE STREAM B_TEXT (name STRING) WITH (kafka_topic='t', value_format='DELIMITED');
             CREATE STREAM OUT AS SELECT * FROM B_TEXT;",
        );
        let message = Message {
            topic: "t",
            key: None,
            value: Some(b"Carol"),
            timestamp: 0,
            partition: 0,
            offset: 0,
        };
        let record = engine.decode_message(&message).unwrap();
        assert_eq!(
            record.value,
            Value::from("Carol"),
            "read as DELIMITED text, not JSON"
        );
    }

    #[test]
    fn kafka_keys_and_json_values_round_trip_through_a_windowed_aggregation() {
        let mut engine = engine(
            "CREATE STREAM p (id INT KEY, name STRING, amount INT) WITH (kafka_topic='p', value_format='JSON');
             CREATE TABLE t WITH (KEY_FORMAT='KAFKA') AS SELECT name, COUNT(*) AS cnt FROM p WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY name;",
        );
        let message = Message {
            topic: "p",
            key: Some(&7i32.to_be_bytes()),
            value: Some(br#"{"name":"Carol","amount":5}"#),
            timestamp: 12_345,
            partition: 2,
            offset: 40,
        };
        let record = engine.decode_message(&message).unwrap();
        assert_eq!(record.key, Value::from(7));
        let out = engine.process(&record).unwrap();
        let Encoded { key, value } = engine.encode_message(&out[0]).unwrap();
        let mut expected_key = b"Carol".to_vec();
        expected_key.extend_from_slice(&10_000i64.to_be_bytes());
        assert_eq!(key.unwrap(), expected_key);
        assert_eq!(value.unwrap(), br#"{"CNT":1}"#);
        let bad = Message {
            key: Some(b"abc"),
            ..message
        };
        assert!(engine
            .decode_message(&bad)
            .unwrap_err()
            .to_string()
            .contains("cannot read the key"));
    }

    #[test]
    fn avro_records_are_read_and_written_with_the_registrys_schema_ids() {
        let mut engine = engine(
            "CREATE STREAM s (id BIGINT KEY, names ARRAY<STRING>, price DECIMAL(4, 2)) WITH (kafka_topic='s', format='AVRO');
             CREATE STREAM t AS SELECT id, price FROM s;",
        );
        let (key_id, _) = engine.registry.latest("s-key").unwrap();
        let (value_id, _) = engine.registry.latest("s-value").unwrap();
        let key = engine.registry.encode("s-key", &Value::from(7)).unwrap();
        assert_eq!(key[..5], [0, 0, 0, 0, key_id as u8]);
        let value = engine
            .registry
            .encode(
                "s-value",
                &serde_json::json!({"NAMES": ["a", null], "PRICE": "12.50"}),
            )
            .unwrap();
        assert_eq!(value[..5], [0, 0, 0, 0, value_id as u8]);
        let record = engine
            .decode_message(&Message {
                topic: "s",
                key: Some(&key),
                value: Some(&value),
                timestamp: 1,
                partition: 0,
                offset: 0,
            })
            .unwrap();
        assert_eq!(
            record.value,
            serde_json::json!({"NAMES": ["a", null], "PRICE": 12.5})
        );
        let out = engine.process(&record).unwrap();
        let Encoded { key, value } = engine.encode_message(&out[0]).unwrap();
        let registry = &engine.registry;
        assert_eq!(registry.decode(&key.unwrap()).unwrap(), Value::from(7));
        let value = value.unwrap();
        assert_eq!(
            value[..5],
            [0, 0, 0, 0, registry.latest("T-value").unwrap().0 as u8]
        );
        assert_eq!(
            registry.decode(&value).unwrap(),
            serde_json::json!({"PRICE": 12.5})
        );
    }
}

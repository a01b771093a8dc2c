//! Avro's binary encoding of logical (JSON) values: zig-zag varints,
//! length-prefixed strings and bytes, blocked arrays and maps, unions by
//! branch index; BYTES are base64 text and DECIMALs numbers or numeric text
//! on the JSON side.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Number, Value};

use super::Schema;
use crate::decimal::Decimal;
use crate::types::field;

/// Appends `value`'s encoding under `schema`.
pub(crate) fn encode(schema: &Schema, value: &Value, out: &mut Vec<u8>) -> Result<()> {
    match (schema, value) {
        (Schema::Null, Value::Null) => {}
        (Schema::Boolean, Value::Bool(b)) => out.push(u8::from(*b)),
        (Schema::Int | Schema::Date | Schema::Time, value) => {
            let n = integer(value)?;
            i32::try_from(n).map_err(|_| anyhow!("{n} is out of range for an Avro int"))?;
            write_long(n, out);
        }
        (Schema::Long | Schema::Timestamp, value) => write_long(integer(value)?, out),
        (Schema::Float, Value::Number(n)) => {
            out.extend_from_slice(&(n.as_f64().unwrap_or_default() as f32).to_le_bytes())
        }
        (Schema::Double, Value::Number(n)) => {
            out.extend_from_slice(&n.as_f64().unwrap_or_default().to_le_bytes())
        }
        (Schema::String, Value::String(s)) => write_bytes(s.as_bytes(), out),
        (Schema::Bytes, Value::String(s)) => write_bytes(&base64_decode(s)?, out),
        (Schema::Decimal { precision, scale }, value) => {
            let text = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_string(),
                other => bail!("{other} is not a decimal"),
            };
            let decimal = Decimal::parse(&text)
                .ok_or_else(|| anyhow!("{text} is not a decimal"))?
                .rescale(*scale)
                .filter(|d| d.precision() <= *precision)
                .ok_or_else(|| anyhow!("{text} does not fit DECIMAL({precision}, {scale})"))?;
            write_bytes(&twos_complement(decimal.unscaled()), out);
        }
        (Schema::Array(items), Value::Array(values)) => {
            if !values.is_empty() {
                write_long(values.len() as i64, out);
                for value in values {
                    encode(items, value, out)?;
                }
            }
            write_long(0, out);
        }
        (Schema::Map(values), Value::Object(entries)) => {
            if !entries.is_empty() {
                write_long(entries.len() as i64, out);
                for (key, value) in entries {
                    write_bytes(key.as_bytes(), out);
                    encode(values, value, out)?;
                }
            }
            write_long(0, out);
        }
        (Schema::Record { fields, .. }, Value::Object(object)) => {
            for (name, schema) in fields {
                let value = field(object, name).unwrap_or(&Value::Null);
                encode(schema, value, out).with_context(|| format!("field {name}"))?;
            }
        }
        (Schema::Union(branches), value) => {
            let index = branches
                .iter()
                .position(|b| accepts(b, value))
                .ok_or_else(|| anyhow!("{value} matches no branch of {}", schema.to_json()))?;
            write_long(index as i64, out);
            encode(&branches[index], value, out)?;
        }
        (schema, value) => bail!("{value} is not a value of Avro type {}", schema.to_json()),
    }
    Ok(())
}

/// Whether a union branch takes `value` (the first that does is chosen).
fn accepts(schema: &Schema, value: &Value) -> bool {
    matches!(
        (schema, value),
        (Schema::Null, Value::Null)
            | (Schema::Boolean, Value::Bool(_))
            | (
                Schema::Int
                    | Schema::Long
                    | Schema::Float
                    | Schema::Double
                    | Schema::Date
                    | Schema::Time
                    | Schema::Timestamp
                    | Schema::Decimal { .. },
                Value::Number(_),
            )
            | (
                Schema::String | Schema::Bytes | Schema::Decimal { .. },
                Value::String(_)
            )
            | (Schema::Array(_), Value::Array(_))
            | (Schema::Map(_) | Schema::Record { .. }, Value::Object(_))
    )
}

/// A JSON number as a whole number (a float only when it has no fraction).
fn integer(value: &Value) -> Result<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .ok_or_else(|| anyhow!("{n} is not a whole number")),
        other => bail!("{other} is not a number"),
    }
}

fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut zigzag = ((n << 1) ^ (n >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_long(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

/// The shortest big-endian two's complement of `n`, as Java's BigInteger writes it.
fn twos_complement(n: i128) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let sign = if n < 0 { 0xff } else { 0 };
    let mut start = 0;
    while start < 15 && bytes[start] == sign && (bytes[start + 1] & 0x80) == (sign & 0x80) {
        start += 1;
    }
    bytes[start..].to_vec()
}

/// Reads one value of `schema` from the front of `input`.
pub(crate) fn decode(schema: &Schema, input: &mut &[u8]) -> Result<Value> {
    Ok(match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => match take(input, 1)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            other => bail!("{other} is not an Avro boolean"),
        },
        Schema::Int | Schema::Date | Schema::Time => {
            let n = read_long(input)?;
            i32::try_from(n).map_err(|_| anyhow!("{n} is out of range for an Avro int"))?;
            Value::from(n)
        }
        Schema::Long | Schema::Timestamp => Value::from(read_long(input)?),
        Schema::Float => {
            let bytes: [u8; 4] = take(input, 4)?.try_into().expect("4 bytes");
            number(f64::from(f32::from_le_bytes(bytes)))?
        }
        Schema::Double => {
            let bytes: [u8; 8] = take(input, 8)?.try_into().expect("8 bytes");
            number(f64::from_le_bytes(bytes))?
        }
        Schema::String => Value::String(
            std::str::from_utf8(read_bytes(input)?)
                .context("an Avro string is not UTF-8")?
                .to_string(),
        ),
        Schema::Bytes => Value::String(base64_encode(read_bytes(input)?)),
        Schema::Decimal { scale, .. } => {
            let bytes = read_bytes(input)?;
            if bytes.len() > 16 {
                bail!("a decimal of {} bytes is too large", bytes.len());
            }
            let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
                0xff
            } else {
                0
            };
            let mut wide = [fill; 16];
            wide[16 - bytes.len()..].copy_from_slice(bytes);
            number(Decimal::new(i128::from_be_bytes(wide), *scale).to_f64())?
        }
        Schema::Array(items) => {
            let mut values = Vec::new();
            read_blocks(input, |input| {
                values.push(decode(items, input)?);
                Ok(())
            })?;
            Value::Array(values)
        }
        Schema::Map(values) => {
            let mut entries = Map::new();
            read_blocks(input, |input| {
                let key = std::str::from_utf8(read_bytes(input)?)
                    .context("an Avro map key is not UTF-8")?
                    .to_string();
                entries.insert(key, decode(values, input)?);
                Ok(())
            })?;
            Value::Object(entries)
        }
        Schema::Record { fields, .. } => {
            let mut object = Map::new();
            for (name, schema) in fields {
                object.insert(name.clone(), decode(schema, input)?);
            }
            Value::Object(object)
        }
        Schema::Union(branches) => {
            let index = read_long(input)?;
            let branch = usize::try_from(index)
                .ok()
                .and_then(|i| branches.get(i))
                .ok_or_else(|| anyhow!("union branch {index} does not exist"))?;
            decode(branch, input)?
        }
    })
}

fn number(f: f64) -> Result<Value> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| anyhow!("{f} has no JSON form"))
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        bail!("the Avro data ends early");
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn read_long(input: &mut &[u8]) -> Result<i64> {
    let mut zigzag = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take(input, 1)?[0];
        zigzag |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64));
        }
    }
    bail!("an Avro varint is longer than 10 bytes")
}

fn read_bytes<'a>(input: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = read_long(input)?;
    let len = usize::try_from(len).map_err(|_| anyhow!("negative Avro length {len}"))?;
    take(input, len)
}

/// Arrays and maps come in blocks: a count (negative when a byte size
/// follows), that many items, until a zero count.
fn read_blocks(input: &mut &[u8], mut item: impl FnMut(&mut &[u8]) -> Result<()>) -> Result<()> {
    loop {
        let count = read_long(input)?;
        if count == 0 {
            return Ok(());
        }
        if count < 0 {
            read_long(input)?;
        }
        for _ in 0..count.unsigned_abs() {
            item(input)?;
        }
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as ksqlDB shows BYTES in JSON.
fn base64_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(BASE64[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut held) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let six = BASE64
            .iter()
            .position(|&b| b == c)
            .ok_or_else(|| anyhow!("{text} is not base64"))?;
        bits = bits << 6 | six as u32;
        held += 6;
        if held >= 8 {
            held -= 8;
            bytes.push((bits >> held) as u8);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn optional(schema: Schema) -> Schema {
        Schema::Union(vec![Schema::Null, schema])
    }

    fn round_trip(schema: &Schema, value: &Value) -> Value {
        let mut bytes = Vec::new();
        encode(schema, value, &mut bytes).unwrap();
        let mut input = bytes.as_slice();
        let decoded = decode(schema, &mut input).unwrap();
        assert!(input.is_empty(), "bytes left over");
        decoded
    }

    #[test]
    fn varints_are_zig_zag() {
        let encoded = |n: i64| {
            let mut out = Vec::new();
            write_long(n, &mut out);
            out
        };
        assert_eq!(encoded(0), [0]);
        assert_eq!(encoded(-1), [1]);
        assert_eq!(encoded(1), [2]);
        assert_eq!(encoded(-64), [0x7f]);
        assert_eq!(encoded(64), [0x80, 0x01]);
        for n in [i64::MIN, -1_000_000, -2, 2_147_483_648, i64::MAX] {
            assert_eq!(read_long(&mut encoded(n).as_slice()).unwrap(), n);
        }
    }

    #[test]
    fn every_type_round_trips() {
        let cases = [
            (Schema::Boolean, json!(true)),
            (Schema::Int, json!(-2147483647)),
            (Schema::Long, json!(-1_000_000_000_000i64)),
            (Schema::Double, json!(1.7976931348623157e308)),
            (Schema::Float, json!(0.5)),
            (Schema::String, json!("zebra ü")),
            (Schema::Bytes, json!("c3RyaW5n")),
            (Schema::Date, json!(-3)),
            (Schema::Time, json!(5)),
            (Schema::Timestamp, json!(1651182287943i64)),
            (optional(Schema::Int), json!(null)),
            (optional(Schema::Int), json!(7)),
            (
                Schema::Array(Box::new(optional(Schema::Map(Box::new(optional(
                    Schema::Long,
                )))))),
                json!([{"a": 1, "b": null}, null, {}]),
            ),
            (
                Schema::Record {
                    name: "r".into(),
                    fields: vec![
                        ("A".into(), optional(Schema::String)),
                        (
                            "S".into(),
                            optional(Schema::Record {
                                name: "r_S".into(),
                                fields: vec![("X".into(), optional(Schema::Int))],
                            }),
                        ),
                    ],
                },
                json!({"A": null, "S": {"X": -5}}),
            ),
        ];
        for (schema, value) in cases {
            assert_eq!(round_trip(&schema, &value), value, "{schema:?}");
        }
    }

    #[test]
    fn record_fields_match_names_in_any_case_and_missing_ones_are_null() {
        let schema = Schema::Record {
            name: "r".into(),
            fields: vec![
                ("VALUE".into(), optional(Schema::Int)),
                ("NAME".into(), optional(Schema::String)),
            ],
        };
        assert_eq!(
            round_trip(&schema, &json!({"value": 3, "other": 1})),
            json!({"VALUE": 3, "NAME": null})
        );
    }

    #[test]
    fn decimals_are_unscaled_twos_complement_bytes() {
        let schema = Schema::Decimal {
            precision: 4,
            scale: 1,
        };
        let mut out = Vec::new();
        encode(&schema, &json!("-005.4"), &mut out).unwrap();
        assert_eq!(out, [2, 0xca]); // length 1, -54
        encode(&schema, &json!(128), &mut out).unwrap();
        assert_eq!(&out[2..], [4, 0x05, 0x00]); // length 2, 1280
        assert_eq!(round_trip(&schema, &json!("100.1")), json!(100.1));
        assert_eq!(round_trip(&schema, &json!(1.25)), json!(1.3));
        assert_eq!(round_trip(&schema, &json!(-0.05)), json!(-0.1));
        assert!(encode(&schema, &json!(1000), &mut out).is_err());
        let wide = Schema::Decimal {
            precision: 33,
            scale: 16,
        };
        assert_eq!(
            round_trip(&wide, &json!(1.2345678987654322e16)),
            json!(1.2345678987654322e16)
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        let mut out = Vec::new();
        assert!(encode(&Schema::Int, &json!("1"), &mut out).is_err());
        assert!(encode(&Schema::Int, &json!(2_147_483_648i64), &mut out).is_err());
        assert!(encode(&Schema::String, &json!(null), &mut out).is_err());
        assert!(decode(&Schema::Long, &mut [0x80u8].as_slice()).is_err());
    }

    #[test]
    fn base64_round_trips() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"string", &[0xff, 0, 0x80]] {
            assert_eq!(base64_decode(&base64_encode(bytes)).unwrap(), bytes);
        }
        assert_eq!(base64_encode(b"string"), "c3RyaW5n");
        assert_eq!(base64_encode(b"st"), "c3Q=");
    }
}

//! Avro as ksqlDB writes it: schemas derived from a source's columns (and
//! their JSON), the binary codec (`codec`) and the in-process schema registry
//! (`registry`) that frames records in Confluent's wire format.

mod codec;
mod registry;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value};

use crate::parser::{ColumnDef, SqlType};

pub(crate) use registry::SchemaRegistry;

/// The namespace of every record schema ksqlDB derives.
const NAMESPACE: &str = "io.confluent.ksql.avro_schemas";
/// The name of a derived top-level record; nested records append `_FIELD`.
const ROOT: &str = "io.confluent.ksql.avro_schemas.KsqlDataSourceSchema";

/// An Avro schema, with the logical types ksqlDB uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Schema {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    /// `bytes` holding a big-endian two's-complement unscaled value.
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// `int` days since the epoch.
    Date,
    /// `int` milliseconds since midnight.
    Time,
    /// `long` milliseconds since the epoch.
    Timestamp,
    Array(Box<Schema>),
    /// A map with string keys.
    Map(Box<Schema>),
    Record {
        /// The full name, namespace included.
        name: String,
        fields: Vec<(String, Schema)>,
    },
    Union(Vec<Schema>),
}

/// The subject a topic's key schema is registered under.
pub(crate) fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// The subject a topic's value schema is registered under.
pub(crate) fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// The schema ksqlDB derives for key or value columns: a record of optional
/// fields named as the columns, or, unwrapped (a single key column, or
/// `WRAP_SINGLE_VALUE=false`), the one column's optional type.
pub(crate) fn derive(columns: &[&ColumnDef], wrapped: bool) -> Result<Schema> {
    match columns {
        [only] if !wrapped => Ok(optional(of_type(&only.ty, ROOT)?)),
        _ => record(
            ROOT,
            columns.iter().map(|c| (c.name.as_str(), &c.ty)).collect(),
        ),
    }
}

/// The columns a registered key or value schema gives a source created
/// without a column list: a record's fields, or for a key of another type one
/// column, `ROWKEY`.
pub(crate) fn columns(schema: &Schema, key: bool) -> Result<Vec<ColumnDef>> {
    let column = |name: &str, schema: &Schema| {
        Ok(ColumnDef {
            name: name.to_string(),
            ty: sql_type(schema)?,
            key,
        })
    };
    match (non_null(schema)?, key) {
        (Schema::Record { fields, .. }, _) => fields.iter().map(|(n, s)| column(n, s)).collect(),
        (other, true) => Ok(vec![column("ROWKEY", other)?]),
        (other, false) => bail!(
            "the value schema must be a record to give columns, not {}",
            other.to_json()
        ),
    }
}

/// The SQL type of values of `schema`.
fn sql_type(schema: &Schema) -> Result<SqlType> {
    Ok(match non_null(schema)? {
        Schema::Boolean => SqlType::Boolean,
        Schema::Int => SqlType::Int,
        Schema::Long => SqlType::BigInt,
        Schema::Float | Schema::Double => SqlType::Double,
        Schema::Bytes => SqlType::Bytes,
        Schema::String => SqlType::String,
        Schema::Decimal { precision, scale } => SqlType::Decimal {
            precision: *precision,
            scale: *scale,
        },
        Schema::Date => SqlType::Date,
        Schema::Time => SqlType::Time,
        Schema::Timestamp => SqlType::Timestamp,
        Schema::Array(items) => SqlType::Array(Box::new(sql_type(items)?)),
        Schema::Map(values) => SqlType::Map(Box::new(SqlType::String), Box::new(sql_type(values)?)),
        Schema::Record { fields, .. } => SqlType::Struct(
            fields
                .iter()
                .map(|(name, schema)| Ok((name.clone(), sql_type(schema)?)))
                .collect::<Result<_>>()?,
        ),
        Schema::Null | Schema::Union(_) => bail!("Avro type {} has no SQL type", schema.to_json()),
    })
}

/// An optional type's schema without its null: `T` of `["null", T]`.
fn non_null(schema: &Schema) -> Result<&Schema> {
    match schema {
        Schema::Union(branches) => match branches.as_slice() {
            [Schema::Null, only] | [only, Schema::Null] | [only] => Ok(only),
            _ => bail!("Avro union {} has no SQL type", schema.to_json()),
        },
        other => Ok(other),
    }
}

fn optional(schema: Schema) -> Schema {
    Schema::Union(vec![Schema::Null, schema])
}

/// A record of optional fields; a STRUCT field's record is named after its path.
fn record(name: &str, fields: Vec<(&str, &SqlType)>) -> Result<Schema> {
    let fields = fields
        .into_iter()
        .map(|(field, ty)| {
            if !is_avro_name(field) {
                bail!("`{field}` is not a valid Avro field name: use letters, digits and underscores, not starting with a digit");
            }
            Ok((field.to_string(), optional(of_type(ty, &format!("{name}_{field}"))?)))
        })
        .collect::<Result<_>>()?;
    Ok(Schema::Record {
        name: name.to_string(),
        fields,
    })
}

/// `name` names the record a STRUCT becomes (also inside arrays and maps).
fn of_type(ty: &SqlType, name: &str) -> Result<Schema> {
    Ok(match ty {
        SqlType::Int => Schema::Int,
        SqlType::BigInt => Schema::Long,
        SqlType::Double => Schema::Double,
        SqlType::String => Schema::String,
        SqlType::Boolean => Schema::Boolean,
        SqlType::Bytes => Schema::Bytes,
        SqlType::Decimal { precision, scale } => Schema::Decimal {
            precision: *precision,
            scale: *scale,
        },
        SqlType::Date => Schema::Date,
        SqlType::Time => Schema::Time,
        SqlType::Timestamp => Schema::Timestamp,
        SqlType::Array(element) => Schema::Array(Box::new(optional(of_type(element, name)?))),
        SqlType::Map(key, _) if **key != SqlType::String => {
            bail!("AVRO only supports MAP types with STRING keys")
        }
        SqlType::Map(_, value) => Schema::Map(Box::new(optional(of_type(
            value,
            &format!("{name}_MapValue"),
        )?))),
        SqlType::Struct(fields) => {
            record(name, fields.iter().map(|(f, t)| (f.as_str(), t)).collect())?
        }
    })
}

/// Avro's rule for names: a letter or underscore, then letters, digits and underscores.
fn is_avro_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Kafka Connect's names for the logical types, which ksqlDB's schemas carry.
fn connect_logical(ty: &str, connect: &str, logical: &str) -> Value {
    json!({
        "type": ty,
        "connect.version": 1,
        "connect.name": format!("org.apache.kafka.connect.data.{connect}"),
        "logicalType": logical,
    })
}

impl Schema {
    /// The schema as JSON, as ksqlDB registers it.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Schema::Null => json!("null"),
            Schema::Boolean => json!("boolean"),
            Schema::Int => json!("int"),
            Schema::Long => json!("long"),
            Schema::Float => json!("float"),
            Schema::Double => json!("double"),
            Schema::Bytes => json!("bytes"),
            Schema::String => json!("string"),
            Schema::Decimal { precision, scale } => json!({
                "type": "bytes",
                "scale": scale,
                "precision": precision,
                "connect.version": 1,
                "connect.parameters": {
                    "scale": scale.to_string(),
                    "connect.decimal.precision": precision.to_string(),
                },
                "connect.name": "org.apache.kafka.connect.data.Decimal",
                "logicalType": "decimal",
            }),
            Schema::Date => connect_logical("int", "Date", "date"),
            Schema::Time => connect_logical("int", "Time", "time-millis"),
            Schema::Timestamp => connect_logical("long", "Timestamp", "timestamp-millis"),
            Schema::Array(items) => json!({"type": "array", "items": items.to_json()}),
            Schema::Map(values) => json!({"type": "map", "values": values.to_json()}),
            Schema::Record { name, fields } => {
                let (namespace, short) = name.rsplit_once('.').unwrap_or(("", name));
                let fields: Vec<Value> = fields
                    .iter()
                    .map(|(field, schema)| {
                        let mut entry = json!({"name": field, "type": schema.to_json()});
                        if matches!(schema, Schema::Union(branches) if branches.first() == Some(&Schema::Null))
                        {
                            entry["default"] = Value::Null;
                        }
                        entry
                    })
                    .collect();
                let mut object = Map::new();
                object.insert("type".into(), json!("record"));
                object.insert("name".into(), json!(short));
                if !namespace.is_empty() {
                    object.insert("namespace".into(), json!(namespace));
                }
                object.insert("fields".into(), Value::Array(fields));
                if namespace == NAMESPACE {
                    object.insert("connect.name".into(), json!(name));
                }
                Value::Object(object)
            }
            Schema::Union(branches) => Value::Array(branches.iter().map(Schema::to_json).collect()),
        }
    }

    /// A schema from its JSON (say one a producer registered): primitives,
    /// records, arrays, maps, unions and the logical types above.
    pub(crate) fn from_json(json: &Value) -> Result<Schema> {
        from_json_in(json, "")
    }
}

/// `namespace` is the enclosing record's, which a nested record's name inherits.
fn from_json_in(json: &Value, namespace: &str) -> Result<Schema> {
    let primitive = |name: &str| -> Result<Schema> {
        Ok(match name {
            "null" => Schema::Null,
            "boolean" => Schema::Boolean,
            "int" => Schema::Int,
            "long" => Schema::Long,
            "float" => Schema::Float,
            "double" => Schema::Double,
            "bytes" => Schema::Bytes,
            "string" => Schema::String,
            other => bail!("Avro type {other} is not supported"),
        })
    };
    let object = match json {
        Value::String(name) => return primitive(name),
        Value::Array(branches) => {
            return Ok(Schema::Union(
                branches
                    .iter()
                    .map(|b| from_json_in(b, namespace))
                    .collect::<Result<_>>()?,
            ))
        }
        Value::Object(object) => object,
        other => bail!("{other} is not an Avro schema"),
    };
    let ty = object
        .get("type")
        .ok_or_else(|| anyhow!("an Avro schema object needs a type"))?;
    let number = |key: &str| object.get(key).and_then(Value::as_u64).map(|n| n as u32);
    Ok(
        match (
            ty.as_str(),
            object.get("logicalType").and_then(Value::as_str),
        ) {
            (Some("bytes"), Some("decimal")) => Schema::Decimal {
                precision: number("precision")
                    .ok_or_else(|| anyhow!("a decimal needs a precision"))?,
                scale: number("scale").unwrap_or(0),
            },
            (Some("int"), Some("date")) => Schema::Date,
            (Some("int"), Some("time-millis")) => Schema::Time,
            (Some("long"), Some("timestamp-millis")) => Schema::Timestamp,
            (Some("array"), _) => {
                Schema::Array(Box::new(from_json_in(&object["items"], namespace)?))
            }
            (Some("map"), _) => Schema::Map(Box::new(from_json_in(&object["values"], namespace)?)),
            (Some("record"), _) => {
                let short = object
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("a record needs a name"))?;
                let namespace = object
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(namespace);
                let name = match namespace {
                    _ if short.contains('.') => short.to_string(),
                    "" => short.to_string(),
                    namespace => format!("{namespace}.{short}"),
                };
                let namespace = name.rsplit_once('.').map_or("", |(ns, _)| ns);
                let fields = object
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| anyhow!("record {name} needs fields"))?
                    .iter()
                    .map(|field| {
                        let field_name = field["name"]
                            .as_str()
                            .ok_or_else(|| anyhow!("a field of record {name} needs a name"))?;
                        Ok((
                            field_name.to_string(),
                            from_json_in(&field["type"], namespace)?,
                        ))
                    })
                    .collect::<Result<_>>()?;
                Schema::Record { name, fields }
            }
            (Some(name), _) => primitive(name)?,
            (None, _) => from_json_in(ty, namespace)?,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, ty: SqlType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            key: false,
        }
    }

    #[test]
    fn derived_value_schema_is_ksqldbs_record_of_optional_fields() {
        let id = column("ID", SqlType::BigInt);
        let address = column(
            "ADDRESS",
            SqlType::Struct(vec![("CITY".into(), SqlType::String)]),
        );
        let schema = derive(&[&id, &address], true).unwrap();
        assert_eq!(
            schema.to_json(),
            json!({
                "type": "record",
                "name": "KsqlDataSourceSchema",
                "namespace": "io.confluent.ksql.avro_schemas",
                "fields": [
                    {"name": "ID", "type": ["null", "long"], "default": null},
                    {"name": "ADDRESS", "type": ["null", {
                        "type": "record",
                        "name": "KsqlDataSourceSchema_ADDRESS",
                        "namespace": "io.confluent.ksql.avro_schemas",
                        "fields": [{"name": "CITY", "type": ["null", "string"], "default": null}],
                        "connect.name": "io.confluent.ksql.avro_schemas.KsqlDataSourceSchema_ADDRESS"
                    }], "default": null}
                ],
                "connect.name": "io.confluent.ksql.avro_schemas.KsqlDataSourceSchema"
            })
        );
        assert_eq!(Schema::from_json(&schema.to_json()).unwrap(), schema);
    }

    #[test]
    fn a_single_unwrapped_column_is_its_optional_type() {
        let d = column(
            "D",
            SqlType::Decimal {
                precision: 4,
                scale: 2,
            },
        );
        let schema = derive(&[&d], false).unwrap();
        assert_eq!(
            schema,
            optional(Schema::Decimal {
                precision: 4,
                scale: 2
            })
        );
        assert_eq!(schema.to_json()[1]["logicalType"], "decimal");
        assert_eq!(Schema::from_json(&schema.to_json()).unwrap(), schema);
    }

    #[test]
    fn registered_schemas_give_columns_back() {
        let id = column("ID", SqlType::BigInt);
        let tags = column(
            "TAGS",
            SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::Date)),
        );
        let schema = derive(&[&id, &tags], true).unwrap();
        assert_eq!(columns(&schema, false).unwrap(), vec![id, tags]);
        let key = columns(&Schema::String, true).unwrap();
        assert_eq!((key[0].name.as_str(), key[0].key), ("ROWKEY", true));
        assert!(columns(&Schema::Int, false).is_err());
    }

    #[test]
    fn map_keys_must_be_strings_and_names_valid() {
        let map = column(
            "M",
            SqlType::Map(Box::new(SqlType::Int), Box::new(SqlType::Int)),
        );
        assert!(derive(&[&map], true)
            .unwrap_err()
            .to_string()
            .contains("STRING keys"));
        let dashed = column("A-B", SqlType::Int);
        assert!(derive(&[&dashed], true).is_err());
    }
}

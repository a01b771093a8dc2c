//! An in-process schema registry, as ksqlDB's test runner mocks Confluent's:
//! subjects map to their latest schema's id, and a record is framed in the
//! Confluent wire format (magic byte 0, the schema id as 4 big-endian bytes,
//! then the Avro body).

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use super::codec::{decode, encode};
use super::Schema;

const MAGIC: u8 = 0;

#[derive(Debug, Clone, Default)]
pub(crate) struct SchemaRegistry {
    schemas: BTreeMap<u32, Schema>,
    /// Subject → the id of its latest schema.
    latest: HashMap<String, u32>,
}

impl SchemaRegistry {
    /// Registers `schema` as the subject's latest; an identical schema keeps
    /// its id, a new one gets the next (ids start at 1, as the registry's do).
    pub(crate) fn register(&mut self, subject: &str, schema: Schema) -> u32 {
        let id = match self.schemas.iter().find(|(_, s)| **s == schema) {
            Some((id, _)) => *id,
            None => {
                let id = self.schemas.keys().next_back().map_or(1, |last| last + 1);
                self.schemas.insert(id, schema);
                id
            }
        };
        self.latest.insert(subject.to_string(), id);
        id
    }

    /// Registers `schema` under a given id (one a test or a producer chose).
    pub(crate) fn register_with_id(&mut self, subject: &str, schema: Schema, id: u32) {
        self.schemas.insert(id, schema);
        self.latest.insert(subject.to_string(), id);
    }

    /// Forgets a subject; its schemas keep their ids, as records written
    /// with them may still be read.
    pub(crate) fn delete_subject(&mut self, subject: &str) {
        self.latest.remove(subject);
    }

    /// The subject's latest schema and its id.
    pub(crate) fn latest(&self, subject: &str) -> Option<(u32, &Schema)> {
        let id = *self.latest.get(subject)?;
        Some((id, &self.schemas[&id]))
    }

    pub(crate) fn schema(&self, id: u32) -> Option<&Schema> {
        self.schemas.get(&id)
    }

    /// `value` framed with the subject's latest schema.
    pub(crate) fn encode(&self, subject: &str, value: &Value) -> Result<Vec<u8>> {
        let (id, schema) = self
            .latest(subject)
            .ok_or_else(|| anyhow!("no schema is registered for subject {subject}"))?;
        self.encode_with(id, schema, value)
    }

    /// `value` framed with schema `id`.
    pub(crate) fn encode_with(&self, id: u32, schema: &Schema, value: &Value) -> Result<Vec<u8>> {
        let mut bytes = vec![MAGIC];
        bytes.extend_from_slice(&id.to_be_bytes());
        encode(schema, value, &mut bytes)?;
        Ok(bytes)
    }

    /// A framed record, read with the schema its id names (the writer's).
    pub(crate) fn decode(&self, bytes: &[u8]) -> Result<Value> {
        let [MAGIC, a, b, c, d, body @ ..] = bytes else {
            bail!("not Avro in the Confluent wire format (magic byte 0 and a schema id)");
        };
        let id = u32::from_be_bytes([*a, *b, *c, *d]);
        let schema = self
            .schema(id)
            .ok_or_else(|| anyhow!("schema id {id} is not registered"))?;
        let mut input = body;
        let value = decode(schema, &mut input)?;
        if !input.is_empty() {
            bail!("{} bytes follow the Avro record", input.len());
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_framed_with_the_subjects_schema_id() {
        let mut registry = SchemaRegistry::default();
        let long = Schema::Union(vec![Schema::Null, Schema::Long]);
        assert_eq!(registry.register("a-value", Schema::String), 1);
        assert_eq!(registry.register("b-value", long.clone()), 2);
        assert_eq!(registry.register("c-value", long), 2);
        let bytes = registry.encode("c-value", &json!(-1)).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 2, 2, 1]);
        assert_eq!(registry.decode(&bytes).unwrap(), json!(-1));
        assert!(registry.decode(&[0, 0, 0, 0, 9, 0]).is_err());
        assert!(registry.decode(&[1, 0, 0, 0, 2, 0]).is_err());
        assert!(registry.decode(&[0, 0, 0, 0, 2, 2, 1, 7]).is_err());
        assert!(registry.encode("d-value", &json!(1)).is_err());
        registry.delete_subject("c-value");
        assert!(registry.encode("c-value", &json!(1)).is_err());
        assert_eq!(registry.decode(&bytes).unwrap(), json!(-1));
    }
}

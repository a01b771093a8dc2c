//! Seed 04's table config: the JSON its Airflow DAG takes to build a
//! Kafka → ClickHouse pipeline (topic, target table, layer, keys, schema and
//! options). Unknown fields are refused so that a typo never silently changes
//! the DDL.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Fields seed 04's DAG turns from String into Date (with `toDate`).
pub const DATE_FIELDS: [&str; 4] = ["date", "event_date", "created_date", "updated_date"];
/// Fields it turns from String into DateTime (with `parseDateTimeBestEffort`).
pub const DATETIME_FIELDS: [&str; 4] = ["timestamp", "created_at", "updated_at", "event_time"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub kafka_topic: String,
    pub target_table_name: String,
    #[serde(default = "default_layer")]
    pub dwh_layer: String,
    #[serde(default = "default_kafka_database")]
    pub kafka_database: String,
    /// Columns or expressions, comma-separated [default: the first column].
    pub sort_key: Option<String>,
    /// [default: `toYYYYMM(<first date field>)` when there is one]
    pub partition_key: Option<String>,
    /// The Distributed table's sharding expression [default: `rand()`].
    pub shard_key: Option<String>,
    /// Column → type as the messages carry it, in table order.
    pub schema: Schema,
    #[serde(default)]
    pub create_projection: bool,
    pub projection_order_by: Option<String>,
    #[serde(default)]
    pub create_indexes: bool,
    #[serde(default)]
    pub index_fields: Vec<String>,
    /// MergeTree `SETTINGS`.
    #[serde(default)]
    pub table_settings: serde_json::Map<String, serde_json::Value>,
    #[serde(default = "yes")]
    pub skip_alter_on_error: bool,
    #[serde(default)]
    pub recreate_tables: bool,
    /// The brokers as ClickHouse reaches them [default: kpipe's `-b`].
    pub kafka_broker: Option<String>,
    #[serde(default = "default_format")]
    pub kafka_format: String,
    /// [default: `clickhouse-<target_table_name>-consumer`, as seed 04's DAG names it]
    pub kafka_group_name: Option<String>,
    #[serde(default = "one")]
    pub kafka_num_consumers: u32,
    #[serde(default = "default_skip_broken")]
    pub kafka_skip_broken_messages: u32,
}

fn default_layer() -> String {
    "raw".into()
}
fn default_kafka_database() -> String {
    "otus_kafka".into()
}
fn default_format() -> String {
    "JSONEachRow".into()
}
fn yes() -> bool {
    true
}
fn one() -> u32 {
    1
}
fn default_skip_broken() -> u32 {
    1000
}

/// The schema object with its key order kept (it is the table's column order).
#[derive(Debug, Clone, Default)]
pub struct Schema(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Schema, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Schema;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of column name → ClickHouse type")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Schema, A::Error> {
                let mut columns: Vec<(String, String)> = Vec::new();
                while let Some((name, kind)) = map.next_entry::<String, String>()? {
                    if columns.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "column {name:?} appears twice"
                        )));
                    }
                    columns.push((name, kind));
                }
                Ok(Schema(columns))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

impl TableConfig {
    pub fn from_file(path: &Path) -> Result<TableConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text)
            .with_context(|| format!("{} is not a valid table config", path.display()))
    }

    pub fn from_json(text: &str) -> Result<TableConfig> {
        let config: TableConfig = serde_json::from_str(text)?;
        if config.schema.0.is_empty() {
            bail!("the schema has no columns");
        }
        if config.kafka_num_consumers == 0 {
            bail!("kafka_num_consumers must be at least 1");
        }
        Ok(config)
    }

    pub fn column_names(&self) -> Vec<String> {
        self.schema.0.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn group_name(&self) -> String {
        self.kafka_group_name
            .clone()
            .unwrap_or_else(|| format!("clickhouse-{}-consumer", self.target_table_name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_seed_04s_minimal_config_in_order_with_defaults() {
        let config = TableConfig::from_json(
            r#"{"kafka_topic":"covid_new_cases_1min","target_table_name":"covid_new_cases",
                "schema":{"location_key":"String","date":"String","new_confirmed":"Int32"}}"#,
        )
        .unwrap();
        assert_eq!(
            config.column_names(),
            ["location_key", "date", "new_confirmed"]
        );
        assert_eq!(config.dwh_layer, "raw");
        assert_eq!(config.group_name(), "clickhouse-covid_new_cases-consumer");
        assert!(config.skip_alter_on_error);
        assert_eq!(config.kafka_skip_broken_messages, 1000);
    }

    #[test]
    fn typos_and_empty_schemas_are_refused() {
        let typo = TableConfig::from_json(
            r#"{"kafka_topic":"t","target_table_name":"x","schema":{"a":"String"},"sort_keys":"a"}"#,
        )
        .unwrap_err();
        assert!(
            typo.to_string().contains("unknown field `sort_keys`"),
            "{typo}"
        );
        assert!(TableConfig::from_json(
            r#"{"kafka_topic":"t","target_table_name":"x","schema":{}}"#
        )
        .is_err());
    }
}

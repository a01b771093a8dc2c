//! The statements that build seed 04's pipeline for one table config: the
//! databases, the Kafka engine table, the target MergeTree (or, on a cluster,
//! ReplicatedMergeTree plus a Distributed table), the materialized view that
//! converts types on the way, and the optional projection and skip indexes.
//!
//! Type conversion follows seed 04's DAG: String fields named in `DATE_FIELDS`
//! become Date (`toDate`), those in `DATETIME_FIELDS` DateTime
//! (`parseDateTimeBestEffort`), and String columns of the sort key are stored as
//! `LowCardinality(String)`. The seed's `WHERE date != ''` is left out: a
//! ClickHouse alias is visible in WHERE, so the filter would compare the
//! converted Date with '' and fail on every row.

use anyhow::{bail, Result};

use crate::config::{TableConfig, DATETIME_FIELDS, DATE_FIELDS};
use crate::sql;

/// What the statements are for.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ON CLUSTER` name: Replicated + Distributed tables.
    pub cluster: Option<String>,
    /// ClickHouse before 19 (Debian's 18.16): no `kafka_skip_broken_messages`,
    /// LowCardinality behind a setting and needing `toLowCardinality` in views,
    /// no `DROP ... SYNC`.
    pub legacy: bool,
    /// The brokers as ClickHouse reaches them, when the config does not say.
    pub kafka_broker: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    Table,
    View,
    Drop,
    Alter,
}

#[derive(Debug, Clone)]
pub struct Statement {
    pub kind: Kind,
    pub database: String,
    /// None for a database.
    pub name: Option<String>,
    /// What the object is, for reports: "Kafka engine", "MergeTree", ...
    pub what: String,
    pub sql: String,
    /// An ALTER whose failure is reported and skipped (`skip_alter_on_error`).
    pub optional: bool,
}

impl Statement {
    pub fn object(&self) -> String {
        match &self.name {
            Some(name) => format!("{}.{name}", self.database),
            None => self.database.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub statements: Vec<Statement>,
    /// Things the user should know, printed as comments.
    pub notes: Vec<String>,
    /// The table rows land in (Distributed on a cluster) and the one holding them.
    pub target: (String, String),
    pub storage: (String, String),
    pub kafka_table: (String, String),
    pub view: (String, String),
}

struct Column {
    name: String,
    source_type: String,
    target_type: String,
    /// The view's expression for it (the plain column when nothing converts).
    select: String,
}

pub fn plan(config: &TableConfig, target: &Target) -> Result<Plan> {
    let names = config.column_names();
    let layer = config.dwh_layer.clone();
    let kafka_db = config.kafka_database.clone();
    let table = config.target_table_name.clone();
    sql::name("dwh_layer", &layer)?;
    sql::name("kafka_database", &kafka_db)?;
    sql::name("target_table_name", &table)?;
    let cluster = match &target.cluster {
        Some(c) => format!(" ON CLUSTER {}", sql::name("cluster", c)?),
        None => String::new(),
    };
    check_topic(&config.kafka_topic)?;
    if !config
        .kafka_format
        .chars()
        .all(|c| c.is_ascii_alphanumeric())
    {
        bail!(
            "kafka_format {:?} is not a ClickHouse format name",
            config.kafka_format
        );
    }
    let sort_key = sql::expression(
        "sort_key",
        config.sort_key.as_deref().unwrap_or(&names[0]),
        &names,
    )?;
    let sort_columns: Vec<&String> = names
        .iter()
        .filter(|c| sort_key.contains(&format!("`{c}`")))
        .collect();
    let columns = config
        .schema
        .0
        .iter()
        .map(|(name, kind)| {
            let quoted = sql::column("schema column", name)?;
            let source_type = sql::column_type(&format!("type of {name}"), kind)?;
            let is_text = source_type == "String";
            let (target_type, select) = if is_text && DATE_FIELDS.contains(&name.as_str()) {
                ("Date".to_string(), format!("toDate({quoted})"))
            } else if is_text && DATETIME_FIELDS.contains(&name.as_str()) {
                (
                    "DateTime".to_string(),
                    format!("parseDateTimeBestEffort({quoted})"),
                )
            } else if is_text && sort_columns.contains(&name) {
                let select = if target.legacy {
                    format!("toLowCardinality({quoted})")
                } else {
                    quoted.clone()
                };
                ("LowCardinality(String)".to_string(), select)
            } else {
                (source_type.clone(), quoted.clone())
            };
            Ok(Column {
                name: quoted,
                source_type,
                target_type,
                select,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let first_date = columns
        .iter()
        .find(|c| c.target_type == "Date" || c.target_type == "DateTime")
        .map(|c| c.name.trim_matches('`').to_string());
    let partition_key = match (&config.partition_key, &first_date) {
        (Some(p), _) => Some(sql::expression("partition_key", p, &names)?),
        (None, Some(d)) => Some(format!("toYYYYMM(`{d}`)")),
        (None, None) => None,
    };
    let shard_key = sql::expression(
        "shard_key",
        config.shard_key.as_deref().unwrap_or("rand()"),
        &names,
    )?;

    let kafka_name = format!("{table}_kafka");
    let view_name = format!("{table}_mv");
    let storage_name = if target.cluster.is_some() {
        format!("{table}_local")
    } else {
        table.clone()
    };
    let q = |db: &str, name: &str| format!("`{db}`.`{name}`");
    let mut notes = Vec::new();
    let mut statements = Vec::new();
    let mut databases = vec![kafka_db.clone()];
    if layer != kafka_db {
        databases.push(layer.clone());
    }
    for db in &databases {
        statements.push(Statement {
            kind: Kind::Database,
            database: db.clone(),
            name: None,
            what: "database".into(),
            sql: format!("CREATE DATABASE IF NOT EXISTS `{db}`{cluster}"),
            optional: false,
        });
    }
    if config.recreate_tables {
        let sync = if target.legacy { "" } else { " SYNC" };
        let mut drops = vec![(layer.clone(), view_name.clone(), "materialized view")];
        // (database, name, what)
        if target.cluster.is_some() {
            drops.push((layer.clone(), table.clone(), "Distributed"));
        }
        drops.push((layer.clone(), storage_name.clone(), "MergeTree"));
        drops.push((kafka_db.clone(), kafka_name.clone(), "Kafka engine"));
        for (db, name, what) in drops {
            statements.push(Statement {
                kind: Kind::Drop,
                sql: format!("DROP TABLE IF EXISTS {}{cluster}{sync}", q(&db, &name)),
                database: db,
                name: Some(name),
                what: what.into(),
                optional: false,
            });
        }
    }

    let column_list = |typed: &dyn Fn(&Column) -> &str| {
        columns
            .iter()
            .map(|c| format!("    {} {}", c.name, typed(c)))
            .collect::<Vec<_>>()
            .join(",\n")
    };
    let broker = config
        .kafka_broker
        .clone()
        .unwrap_or_else(|| target.kafka_broker.clone());
    let mut kafka_settings = vec![
        format!("kafka_broker_list = {}", sql::literal(&broker)),
        format!("kafka_topic_list = {}", sql::literal(&config.kafka_topic)),
        format!("kafka_group_name = {}", sql::literal(&config.group_name())),
        format!("kafka_format = {}", sql::literal(&config.kafka_format)),
        format!("kafka_num_consumers = {}", config.kafka_num_consumers),
    ];
    if target.legacy {
        kafka_settings.push("kafka_row_delimiter = '\\n'".into());
        notes.push(format!(
            "ClickHouse 18 has no kafka_skip_broken_messages ({} in the config): set \
             input_format_allow_errors_num in the server's default profile, or load with \
             `kpipe sink clickhouse`, which dead-letters bad messages",
            config.kafka_skip_broken_messages
        ));
    } else {
        kafka_settings.push(format!(
            "kafka_skip_broken_messages = {}",
            config.kafka_skip_broken_messages
        ));
    }
    statements.push(Statement {
        kind: Kind::Table,
        database: kafka_db.clone(),
        name: Some(kafka_name.clone()),
        what: "Kafka engine".into(),
        sql: format!(
            "CREATE TABLE IF NOT EXISTS {}{cluster} (\n{}\n) ENGINE = Kafka\nSETTINGS\n    {}",
            q(&kafka_db, &kafka_name),
            column_list(&|c| &c.source_type),
            kafka_settings.join(",\n    ")
        ),
        optional: false,
    });

    let engine = match &target.cluster {
        Some(_) => format!(
            "ReplicatedMergeTree({}, '{{replica}}')",
            sql::literal(&format!(
                "/clickhouse/tables/{{shard}}/{layer}/{storage_name}"
            ))
        ),
        None => "MergeTree()".to_string(),
    };
    let mut storage_sql = format!(
        "CREATE TABLE IF NOT EXISTS {}{cluster} (\n{}\n) ENGINE = {engine}",
        q(&layer, &storage_name),
        column_list(&|c| &c.target_type)
    );
    if let Some(p) = &partition_key {
        storage_sql.push_str(&format!("\nPARTITION BY {p}"));
    }
    storage_sql.push_str(&format!("\nORDER BY ({sort_key})"));
    if !config.table_settings.is_empty() {
        let settings = config
            .table_settings
            .iter()
            .map(|(k, v)| {
                sql::name("table setting", k)?;
                Ok(format!("{k} = {}", sql::setting_value(k, v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        storage_sql.push_str(&format!("\nSETTINGS {}", settings.join(", ")));
    }
    statements.push(Statement {
        kind: Kind::Table,
        database: layer.clone(),
        name: Some(storage_name.clone()),
        what: if target.cluster.is_some() {
            "ReplicatedMergeTree".into()
        } else {
            "MergeTree".into()
        },
        sql: storage_sql,
        optional: false,
    });
    if let Some(c) = &target.cluster {
        statements.push(Statement {
            kind: Kind::Table,
            database: layer.clone(),
            name: Some(table.clone()),
            what: "Distributed".into(),
            sql: format!(
                "CREATE TABLE IF NOT EXISTS {}{cluster} AS {}\nENGINE = Distributed({}, {}, {}, {shard_key})",
                q(&layer, &table),
                q(&layer, &storage_name),
                sql::literal(c),
                sql::literal(&layer),
                sql::literal(&storage_name)
            ),
            optional: false,
        });
    }
    let selects = columns
        .iter()
        .map(|c| {
            if c.select == c.name {
                format!("    {}", c.name)
            } else {
                format!("    {} AS {}", c.select, c.name)
            }
        })
        .collect::<Vec<_>>()
        .join(",\n");
    statements.push(Statement {
        kind: Kind::View,
        database: layer.clone(),
        name: Some(view_name.clone()),
        what: "materialized view".into(),
        sql: format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {}{cluster}\nTO {} AS\nSELECT\n{selects}\nFROM {}",
            q(&layer, &view_name),
            q(&layer, &table),
            q(&kafka_db, &kafka_name)
        ),
        optional: false,
    });

    let alter_target = q(&layer, &storage_name);
    let alter = |what: String, sql: String| Statement {
        kind: Kind::Alter,
        database: layer.clone(),
        name: Some(storage_name.clone()),
        what,
        sql,
        optional: config.skip_alter_on_error,
    };
    if config.create_projection {
        match &config.projection_order_by {
            Some(order) => {
                let order = sql::expression("projection_order_by", order, &names)?;
                let projection = format!("`{table}_by_{}`", first_word(&order));
                statements.push(alter(format!("projection {projection} of"), format!(
                    "ALTER TABLE {alter_target}{cluster} ADD PROJECTION IF NOT EXISTS {projection} (SELECT * ORDER BY ({order}))"
                )));
                statements.push(alter(
                    format!("projection {projection} built for"),
                    format!(
                        "ALTER TABLE {alter_target}{cluster} MATERIALIZE PROJECTION {projection}"
                    ),
                ));
            }
            None => notes.push(
                "create_projection is set without projection_order_by: no projection to add".into(),
            ),
        }
    }
    if config.create_indexes {
        if config.index_fields.is_empty() {
            notes.push("create_indexes is set without index_fields: no index to add".into());
        }
        for field in &config.index_fields {
            let Some(column) = columns.iter().find(|c| c.name == format!("`{field}`")) else {
                bail!("index field {field:?} is not a column of the schema");
            };
            let index_type = if column.target_type.contains("String") {
                "bloom_filter"
            } else {
                "minmax"
            };
            statements.push(alter(format!("index idx_{field} on"), format!(
                "ALTER TABLE {alter_target}{cluster} ADD INDEX IF NOT EXISTS `idx_{field}` {} TYPE {index_type} GRANULARITY 4",
                column.name
            )));
        }
    }
    if target.legacy && statements.iter().any(|s| s.kind == Kind::Alter) {
        notes.push(
            "ClickHouse 18 has neither projections nor skip indexes: those ALTERs fail there"
                .into(),
        );
    }
    if target.legacy && target.cluster.is_some() {
        notes.push(
            "ON CLUSTER and ReplicatedMergeTree need ZooKeeper configured on the servers".into(),
        );
    }
    Ok(Plan {
        statements,
        notes,
        target: (layer.clone(), table.clone()),
        storage: (layer.clone(), storage_name),
        kafka_table: (kafka_db, kafka_name),
        view: (layer, view_name),
    })
}

fn first_word(expression: &str) -> String {
    expression
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ',')
        .collect::<String>()
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty()
        || topic.len() > 249
        || !topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("kafka_topic {topic:?} is not a valid Kafka topic name");
    }
    Ok(())
}

/// The statements as a script, with the notes as comments.
pub fn render(plan: &Plan, header: &str) -> String {
    let mut out = format!("-- {header}\n");
    for note in &plan.notes {
        out.push_str(&format!("-- note: {note}\n"));
    }
    for statement in &plan.statements {
        out.push('\n');
        if statement.optional {
            out.push_str("-- may fail without stopping (skip_alter_on_error)\n");
        }
        out.push_str(&statement.sql);
        out.push_str(";\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn example(name: &str) -> TableConfig {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/clickhouse")
            .join(name);
        TableConfig::from_file(&path).unwrap()
    }

    /// Compares with a checked-in file; `KPIPE_UPDATE_GOLDEN=1` rewrites it.
    fn golden(file: &str, actual: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file);
        if std::env::var_os("KPIPE_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!("{} missing: run with KPIPE_UPDATE_GOLDEN=1", path.display())
        });
        assert_eq!(actual, expected, "DDL differs from {}", path.display());
    }

    fn target(cluster: Option<&str>, legacy: bool) -> Target {
        Target {
            cluster: cluster.map(String::from),
            legacy,
            kafka_broker: "kafka:9092".into(),
        }
    }

    #[test]
    fn seed_04_on_a_cluster_with_modern_clickhouse() {
        let plan = plan(
            &example("covid_new_cases.json"),
            &target(Some("dwh_test"), false),
        )
        .unwrap();
        golden(
            "covid_new_cases.cluster.sql",
            &render(&plan, "covid_new_cases on cluster dwh_test"),
        );
    }

    #[test]
    fn seed_04_recreated_on_one_server_with_clickhouse_18() {
        let mut config = example("covid_cumulative.json");
        config.recreate_tables = true;
        let plan = plan(&config, &target(None, true)).unwrap();
        golden(
            "covid_cumulative.recreate.18.sql",
            &render(&plan, "covid_cumulative, recreated, ClickHouse 18"),
        );
        let kinds: Vec<Kind> = plan.statements.iter().map(|s| s.kind).collect();
        assert_eq!(
            &kinds[..6],
            [
                Kind::Database,
                Kind::Database,
                Kind::Drop,
                Kind::Drop,
                Kind::Drop,
                Kind::Table
            ]
        );
    }

    #[test]
    fn seed_05_sales_and_warehouse() {
        for name in ["sales", "warehouse"] {
            let plan = plan(&example(&format!("{name}.json")), &target(None, false)).unwrap();
            golden(&format!("{name}.sql"), &render(&plan, name));
        }
    }

    #[test]
    fn drops_come_in_view_distributed_local_kafka_order() {
        let mut config = example("covid_new_cases.json");
        config.recreate_tables = true;
        let plan = plan(&config, &target(Some("c"), false)).unwrap();
        let drops: Vec<String> = plan
            .statements
            .iter()
            .filter(|s| s.kind == Kind::Drop)
            .map(|s| s.object())
            .collect();
        assert_eq!(
            drops,
            [
                "raw.covid_new_cases_mv",
                "raw.covid_new_cases",
                "raw.covid_new_cases_local",
                "otus_kafka.covid_new_cases_kafka"
            ]
        );
    }

    #[test]
    fn injection_attempts_are_refused_with_the_field_named() {
        let base = example("covid_new_cases.json");
        type Change = Box<dyn Fn(&mut TableConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "target_table_name",
                Box::new(|c| c.target_table_name = "x; DROP TABLE y".into()),
            ),
            (
                "sort_key",
                Box::new(|c| c.sort_key = Some("date) SETTINGS a=1 --".into())),
            ),
            (
                "type of date",
                Box::new(|c| c.schema.0[0].1 = "String) ENGINE=Log; --".into()),
            ),
            (
                "kafka_topic",
                Box::new(|c| c.kafka_topic = "t' , kafka_format = 'CSV".into()),
            ),
            ("cluster", Box::new(|_| {})),
            (
                "table setting",
                Box::new(|c| {
                    c.table_settings
                        .insert("a = 1; DROP".into(), serde_json::json!(1));
                }),
            ),
        ];
        for (field, change) in cases {
            let mut config = base.clone();
            change(&mut config);
            let cluster = (field == "cluster").then_some("c`; DROP");
            let error = plan(&config, &target(cluster, false))
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{field}: {error}");
        }
        // Quotes in a broker address are escaped, not interpreted.
        let mut config = base.clone();
        config.kafka_broker = Some("h:1', kafka_format = 'CSV".into());
        let sql = render(&plan(&config, &target(None, false)).unwrap(), "x");
        assert!(sql.contains(r"kafka_broker_list = 'h:1\', kafka_format = \'CSV'"));
    }
}

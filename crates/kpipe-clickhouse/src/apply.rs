//! Running a DDL plan against a server, one statement at a time, saying for
//! each whether it created something or found it there; then checking that
//! data flows from the topic into the target and that every object is healthy.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use crate::client::ClickHouse;
use crate::ddl::{Kind, Plan};
use crate::sql::literal;

/// What one statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Exists,
    Dropped,
    Absent,
    Altered,
    /// An optional ALTER the server refused (the reason).
    Skipped(String),
}

impl Outcome {
    pub fn word(&self) -> &str {
        match self {
            Outcome::Created => "created",
            Outcome::Exists => "exists",
            Outcome::Dropped => "dropped",
            Outcome::Absent => "absent",
            Outcome::Altered => "altered",
            Outcome::Skipped(_) => "skipped",
        }
    }
}

/// Settings every DDL statement needs on this server.
pub fn ddl_settings(legacy: bool) -> Vec<(&'static str, &'static str)> {
    if legacy {
        vec![("allow_experimental_low_cardinality_type", "1")]
    } else {
        Vec::new()
    }
}

async fn exists(ch: &ClickHouse, database: &str, name: Option<&str>) -> Result<bool> {
    let sql = match name {
        Some(name) => format!(
            "SELECT count() FROM system.tables WHERE database = {} AND name = {}",
            literal(database),
            literal(name)
        ),
        None => format!(
            "SELECT count() FROM system.databases WHERE name = {}",
            literal(database)
        ),
    };
    Ok(ch.number(&sql).await? > 0)
}

/// Applies every statement in order; stops at the first required one that fails.
pub async fn apply(
    ch: &ClickHouse,
    plan: &Plan,
    legacy: bool,
    mut report: impl FnMut(&crate::ddl::Statement, &Outcome),
) -> Result<()> {
    let settings = ddl_settings(legacy);
    for statement in &plan.statements {
        let before = match statement.kind {
            Kind::Alter => false,
            _ => exists(ch, &statement.database, statement.name.as_deref()).await?,
        };
        let result = ch.execute(&statement.sql, &settings).await;
        let outcome = match (statement.kind, result) {
            (Kind::Alter, Err(e)) if statement.optional => Outcome::Skipped(e.to_string()),
            (_, Err(e)) => bail!(
                "ClickHouse refused the statement for {} ({}): {e}",
                statement.object(),
                statement.what
            ),
            (Kind::Alter, Ok(_)) => Outcome::Altered,
            (Kind::Drop, Ok(_)) if before => Outcome::Dropped,
            (Kind::Drop, Ok(_)) => Outcome::Absent,
            (_, Ok(_)) if before => Outcome::Exists,
            (_, Ok(_)) => Outcome::Created,
        };
        report(statement, &outcome);
    }
    Ok(())
}

/// How the target's row count moved while the check waited.
#[derive(Debug, Clone, Copy)]
pub struct Flow {
    pub before: u64,
    pub after: u64,
    pub waited: Duration,
}

/// Waits until the target holds more rows than at the start, or at least
/// `expected` (the topic's messages), for up to `timeout`.
pub async fn check_flow(
    ch: &ClickHouse,
    plan: &Plan,
    expected: u64,
    timeout: Duration,
) -> Result<Flow> {
    let count = format!(
        "SELECT count() FROM `{}`.`{}`",
        plan.target.0, plan.target.1
    );
    let start = Instant::now();
    let before = ch.number(&count).await?;
    let mut after = before;
    while after <= before && after < expected && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = ch.number(&count).await?;
    }
    let flow = Flow {
        before,
        after,
        waited: start.elapsed(),
    };
    if after <= before && after < expected {
        bail!(
            "no rows reached {}.{} within {:?} although the topic holds {expected} messages \
             (the Kafka table's consumer group may be stuck: check the server's log)",
            plan.target.0,
            plan.target.1,
            timeout
        );
    }
    Ok(flow)
}

/// One object's health: present with the expected engine, and its data.
#[derive(Debug, Clone)]
pub struct Health {
    pub object: String,
    pub engine: String,
    pub rows: Option<u64>,
    pub parts: Option<u64>,
    pub bytes: Option<u64>,
}

pub async fn health(ch: &ClickHouse, plan: &Plan) -> Result<Vec<Health>> {
    let mut objects = vec![
        plan.kafka_table.clone(),
        plan.storage.clone(),
        plan.view.clone(),
    ];
    if plan.target != plan.storage {
        objects.push(plan.target.clone());
    }
    let mut out = Vec::new();
    for (database, name) in objects {
        let rows = ch
            .rows(&format!(
                "SELECT engine FROM system.tables WHERE database = {} AND name = {}",
                literal(&database),
                literal(&name)
            ))
            .await?;
        let engine = rows
            .first()
            .and_then(|r| r["engine"].as_str())
            .ok_or_else(|| anyhow!("{database}.{name} is missing after the DDL ran"))?
            .to_string();
        let mut health = Health {
            object: format!("{database}.{name}"),
            engine,
            rows: None,
            parts: None,
            bytes: None,
        };
        if (database.clone(), name.clone()) == plan.storage {
            let parts = ch
                .rows(&format!(
                    "SELECT count() AS parts, sum(rows) AS rows, sum(bytes_on_disk) AS bytes \
                     FROM system.parts WHERE active AND database = {} AND table = {}",
                    literal(&database),
                    literal(&name)
                ))
                .await?;
            let part = parts.first().cloned().unwrap_or_default();
            health.parts = part["parts"].as_u64();
            health.rows = part["rows"].as_u64();
            health.bytes = part["bytes"].as_u64();
        }
        out.push(health);
    }
    Ok(out)
}

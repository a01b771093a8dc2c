//! `kpipe ch`: ClickHouse DDL from seed 04's table configs, and query results to Kafka.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use kpipe_clickhouse::apply::{self, Outcome};
use kpipe_clickhouse::client::ClickHouse;
use kpipe_clickhouse::config::TableConfig;
use kpipe_clickhouse::ddl::{self, Target};

use super::sink::parse_duration;
use super::{block_on, table, KafkaArgs};

/// ClickHouse: pipeline DDL from a table config, and query results back to Kafka.
#[derive(Args)]
pub struct ChArgs {
    #[command(subcommand)]
    command: ChCommand,
}

#[derive(Subcommand)]
enum ChCommand {
    Ddl(DdlArgs),
    Export(ExportArgs),
}

/// Print (or apply) the DDL of a Kafka → ClickHouse pipeline from seed 04's table config.
///
/// The config names the topic, the target table and its layer (database), the
/// keys and the schema as the messages carry it; see examples/clickhouse/. The
/// statements: CREATE DATABASE IF NOT EXISTS; the Kafka engine table; the target
/// MergeTree (with --cluster: ReplicatedMergeTree with {shard}/{replica} macros
/// plus a Distributed table on shard_key, all ON CLUSTER); the materialized view
/// converting String dates (toDate) and date-times (parseDateTimeBestEffort); the
/// projection and skip indexes as ALTERs (skipped on error with
/// skip_alter_on_error); with recreate_tables, DROPs first (view, Distributed,
/// local, Kafka). Names, types, keys and settings are checked: anything that could
/// change the statements' meaning is refused.
///
/// --apply runs them one by one and reports each as created or exists (a second
/// apply changes nothing), then waits for rows to flow from the topic into the
/// target and prints the tables' health. The server's version picks the dialect
/// (ClickHouse 18 lacks kafka_skip_broken_messages and needs LowCardinality
/// enabled); --server-version does the same without a server.
///
/// Examples:
///   kpipe ch ddl examples/clickhouse/covid_new_cases.json --cluster dwh_test
///   kpipe ch ddl examples/clickhouse/sales.json --apply --url http://127.0.0.1:8123 -b 127.0.0.1:9092
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct DdlArgs {
    /// Seed 04's table config (JSON).
    config: PathBuf,
    /// Run the statements on the server at --url.
    #[arg(long)]
    apply: bool,
    /// ClickHouse HTTP URL (user and password may be in it, or in CLICKHOUSE_USER / CLICKHOUSE_PASSWORD).
    #[arg(
        long,
        env = "KPIPE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        hide_env_values = true
    )]
    url: String,
    /// Build for a cluster: ReplicatedMergeTree + Distributed, ON CLUSTER NAME.
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Write for this ClickHouse version, e.g. 18.16 or 24.8 [default: the server's with --apply, else current]
    #[arg(long, value_name = "X.Y")]
    server_version: Option<String>,
    /// How long --apply waits for the first rows to reach the target.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    check_timeout: Duration,
}

/// Run a ClickHouse query and produce each result row to a topic as a JSON message.
///
/// Seed 04's alerts flow, which ClickHouse 18 cannot do itself (its Kafka
/// engine does not write). Values keep their JSON types (64-bit integers as numbers).
///
/// Example:
///   kpipe ch export --query "SELECT location_key, sum(new_confirmed) AS cases FROM raw.covid_new_cases
///     GROUP BY location_key HAVING cases > 1000" --topic covid_alerts --key location_key
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "KPIPE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        hide_env_values = true
    )]
    url: String,
    /// A SELECT (without FORMAT).
    #[arg(long)]
    query: String,
    #[arg(long)]
    topic: String,
    /// Column whose value becomes the message key.
    #[arg(long, value_name = "COLUMN")]
    key: Option<String>,
}

pub fn run(args: ChArgs, kafka: &KafkaArgs) -> Result<()> {
    match args.command {
        ChCommand::Ddl(args) => run_ddl(args, kafka),
        ChCommand::Export(args) => {
            let ch = ClickHouse::new(&args.url)?;
            let delivery = kpipe_clickhouse::export::run(
                &kafka.options(),
                &ch,
                &args.query,
                &args.topic,
                args.key.as_deref(),
            )?;
            eprintln!(
                "exported {} rows to {}, {} acknowledged",
                delivery.sent, args.topic, delivery.delivered
            );
            Ok(())
        }
    }
}

fn parse_version(text: &str) -> Result<(u32, u32)> {
    match kpipe_clickhouse::client::parse_version(text) {
        Some(version) => Ok(version),
        None => bail!("--server-version takes a version like 18.16 or 24.8, not {text:?}"),
    }
}

fn run_ddl(args: DdlArgs, kafka: &KafkaArgs) -> Result<()> {
    let config = TableConfig::from_file(&args.config)?;
    let options = kafka.options();
    let given = args
        .server_version
        .as_deref()
        .map(parse_version)
        .transpose()?;
    let ch = if args.apply {
        Some(ClickHouse::new(&args.url)?)
    } else {
        None
    };
    let version = match (&given, &ch) {
        (Some(v), _) => Some(*v),
        (None, Some(ch)) => Some(block_on(ch.version())??),
        (None, None) => None,
    };
    let legacy = version.is_some_and(|(major, _)| major < 19);
    let target = Target {
        cluster: args.cluster.clone(),
        legacy,
        kafka_broker: options.bootstrap.clone(),
    };
    let plan = ddl::plan(&config, &target)?;
    let dialect = match version {
        Some((major, minor)) => format!("ClickHouse {major}.{minor}"),
        None => "current ClickHouse".into(),
    };
    let header = format!(
        "kpipe ch ddl {}: topic {} → {}.{} ({dialect}{})",
        args.config.display(),
        config.kafka_topic,
        plan.target.0,
        plan.target.1,
        args.cluster
            .as_deref()
            .map(|c| format!(", cluster {c}"))
            .unwrap_or_default()
    );
    let Some(ch) = ch else {
        print!("{}", ddl::render(&plan, &header));
        return Ok(());
    };
    for note in &plan.notes {
        eprintln!("note: {note}");
    }
    block_on(apply::apply(&ch, &plan, legacy, |statement, outcome| {
        let line = format!(
            "{:<8} {} {}",
            outcome.word(),
            statement.what,
            statement.object()
        );
        match outcome {
            Outcome::Skipped(reason) => {
                let short: String = reason.chars().take(100).collect();
                let more = if short.len() < reason.len() {
                    "…"
                } else {
                    ""
                };
                println!("{line}: {short}{more}")
            }
            _ => println!("{line}"),
        }
    }))??;

    // The data-flow check reads the topic through -b, which may differ from the
    // address ClickHouse uses (kafka_broker).
    let probe = options.metadata_client()?;
    let messages = options.topic_messages(&probe, &config.kafka_topic)?;
    match messages {
        None => println!(
            "data flow: topic {} not found through {}: not checked",
            config.kafka_topic, options.bootstrap
        ),
        Some(0) => println!(
            "data flow: topic {} is empty: nothing to check yet",
            config.kafka_topic
        ),
        Some(n) => {
            let flow = block_on(apply::check_flow(&ch, &plan, n, args.check_timeout))??;
            println!(
                "data flow: {}.{} {} → {} rows in {:.1} s (the topic holds {n} messages)",
                plan.target.0,
                plan.target.1,
                flow.before,
                flow.after,
                flow.waited.as_secs_f64()
            );
        }
    }
    let health = block_on(apply::health(&ch, &plan))?.map_err(|e| anyhow!("{e}"))?;
    let rows = health.into_iter().map(|h| {
        let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        vec![
            h.object,
            h.engine,
            show(h.rows),
            show(h.parts),
            show(h.bytes),
        ]
    });
    println!(
        "{}",
        table(&["object", "engine", "rows", "parts", "bytes"], rows)
    );
    Ok(())
}

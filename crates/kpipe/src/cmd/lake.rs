//! `kpipe lake check`: files, rows and schema per day; offsets per partition.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kpipe_lake::check::{check, CheckReport};
use kpipe_lake::Lake;

use super::{block_on, table, KafkaArgs};

/// Inspect a lake written by `kpipe sink lake`.
#[derive(Args)]
pub struct LakeArgs {
    #[command(subcommand)]
    command: LakeCommand,
}

#[derive(Subcommand)]
enum LakeCommand {
    /// Per topic and day: files, rows, bytes, schema. Per Kafka partition: the
    /// offset range, duplicates and gaps. Exits non-zero on duplicates, and on
    /// gaps that are not explained by the dead-letter topic (--dlq-topic),
    /// compaction or truncation (both need a reachable -b; without one every gap
    /// counts).
    ///
    /// Example: kpipe lake check ./lake --topic music_events
    #[command(verbatim_doc_comment)]
    Check {
        /// Lake URL: a directory, file:///dir or s3://bucket/prefix.
        url: String,
        #[arg(long)]
        topic: Option<String>,
        /// The sink's dead-letter topic, whose offsets are not gaps.
        #[arg(long, value_name = "TOPIC")]
        dlq_topic: Option<String>,
        /// Do not ask Kafka about compaction, truncation or dead letters.
        #[arg(long)]
        offline: bool,
    },
}

pub fn run(args: LakeArgs, kafka: &KafkaArgs) -> Result<()> {
    let LakeCommand::Check {
        url,
        topic,
        dlq_topic,
        offline,
    } = args.command;
    let lake = Lake::open(&url)?;
    let options = kafka.options();
    let report = block_on(check(
        &lake,
        topic.as_deref(),
        (!offline).then_some(&options),
        dlq_topic.as_deref(),
    ))??;
    print(&report);
    let problems = report.problems();
    if report.days.is_empty() {
        bail!(
            "no lake files under {url}{}",
            topic.map(|t| format!(" for topic {t}")).unwrap_or_default()
        );
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    println!("ok: every offset is in the lake exactly once");
    Ok(())
}

fn print(report: &CheckReport) {
    let days = report.days.iter().map(|d| {
        vec![
            d.topic.clone(),
            d.dt.clone(),
            d.files.to_string(),
            d.rows.to_string(),
            format!("{:.1}", d.bytes as f64 / 1e6),
            d.schema.len().to_string(),
        ]
    });
    println!(
        "{}",
        table(&["topic", "dt", "files", "rows", "MB", "columns"], days)
    );
    if let Some(last) = report.days.last() {
        println!(
            "schema of {} (dt={}): {}",
            last.topic,
            last.dt,
            last.schema.join(", ")
        );
    }
    let partitions = report.partitions.iter().map(|p| {
        let explained = p
            .explained
            .iter()
            .map(|(why, n)| format!("{n} {why}"))
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            p.topic.clone(),
            p.partition.to_string(),
            p.first.map_or("-".into(), |o| o.to_string()),
            p.last.map_or("-".into(), |o| o.to_string()),
            p.rows.to_string(),
            p.duplicates.to_string(),
            p.missing.to_string(),
            if explained.is_empty() {
                "-".into()
            } else {
                explained
            },
        ]
    });
    println!(
        "{}",
        table(
            &[
                "topic",
                "partition",
                "first offset",
                "last offset",
                "rows",
                "duplicates",
                "gaps",
                "explained gaps"
            ],
            partitions
        )
    );
}

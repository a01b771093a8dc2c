//! `kpipe group`: list, describe (members, assignments, offsets, lag), reset-offsets.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kpipe_kafka::groups::{Groups, ResetTo};

use super::{table, KafkaArgs};

/// Inspect consumer groups and move their offsets (kafka-consumer-groups in one command).
#[derive(Args)]
pub struct GroupArgs {
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Groups with their state and member count.
    List,
    /// Members and assignments, then per partition: committed offset, end offset, lag.
    Describe { group: String },
    /// Move an inactive group's committed offsets on a topic. Prints the plan;
    /// --execute commits it.
    ///
    /// Examples:
    ///   kpipe group reset-offsets g1 --topic clicks --to-earliest --execute
    ///   kpipe group reset-offsets g1 --topic clicks --to-datetime 2024-05-01T00:00:00Z
    #[command(verbatim_doc_comment)]
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        #[arg(long, group = "target")]
        to_earliest: bool,
        #[arg(long, group = "target")]
        to_latest: bool,
        /// RFC 3339 time (2024-05-01T00:00:00Z) or milliseconds since the epoch.
        #[arg(long, group = "target", value_name = "TIME")]
        to_datetime: Option<String>,
        /// Commit the new offsets (without it, only show them).
        #[arg(long)]
        execute: bool,
    },
}

fn parse_time(s: &str) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Ok(t.timestamp_millis()),
        Err(_) => bail!("--to-datetime takes an RFC 3339 time like 2024-05-01T00:00:00Z or epoch milliseconds, not {s:?}"),
    }
}

pub fn run(args: GroupArgs, kafka: &KafkaArgs) -> Result<()> {
    let groups = Groups::connect(&kafka.options())?;
    match args.command {
        GroupCommand::List => {
            let rows = groups
                .list()?
                .into_iter()
                .map(|g| vec![g.name, g.state, g.protocol_type, g.members.to_string()]);
            println!(
                "{}",
                table(&["group", "state", "protocol type", "members"], rows)
            );
        }
        GroupCommand::Describe { group } => {
            let detail = groups.describe(&group)?;
            let protocol = if detail.protocol.is_empty() {
                "-"
            } else {
                &detail.protocol
            };
            println!(
                "group {} · state {} · protocol {protocol} · {} member(s)",
                detail.name,
                detail.state,
                detail.members.len()
            );
            if !detail.members.is_empty() {
                let rows = detail.members.iter().map(|m| {
                    let assigned = m
                        .assignment
                        .iter()
                        .map(|(t, p)| format!("{t}[{p}]"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    vec![m.client_id.clone(), m.host.clone(), m.id.clone(), assigned]
                });
                println!(
                    "{}",
                    table(&["client", "host", "member id", "assignment"], rows)
                );
            }
            let rows = detail.partitions.iter().map(|(p, start)| {
                vec![
                    p.topic.clone(),
                    p.partition.to_string(),
                    p.committed.map_or("-".to_string(), |o| o.to_string()),
                    p.end.to_string(),
                    p.lag(*start).to_string(),
                    p.owner.clone().unwrap_or_else(|| "-".to_string()),
                ]
            });
            println!(
                "{}",
                table(
                    &[
                        "topic",
                        "partition",
                        "committed",
                        "end offset",
                        "lag",
                        "consumer"
                    ],
                    rows
                )
            );
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to_earliest,
            to_latest,
            to_datetime,
            execute,
        } => {
            let to = match (to_earliest, to_latest, to_datetime) {
                (true, _, _) => ResetTo::Earliest,
                (_, true, _) => ResetTo::Latest,
                (_, _, Some(t)) => ResetTo::Timestamp(parse_time(&t)?),
                _ => bail!("say where to: --to-earliest, --to-latest or --to-datetime TIME"),
            };
            let plan = groups.reset(&group, &topic, to, execute)?;
            let rows = plan.iter().map(|m| {
                vec![
                    m.topic.clone(),
                    m.partition.to_string(),
                    m.committed.map_or("-".to_string(), |o| o.to_string()),
                    m.new.to_string(),
                ]
            });
            println!(
                "{}",
                table(&["topic", "partition", "committed", "new offset"], rows)
            );
            if execute {
                println!("offsets of group {group} reset");
            } else {
                println!("dry run: add --execute to commit these offsets");
            }
        }
    }
    Ok(())
}

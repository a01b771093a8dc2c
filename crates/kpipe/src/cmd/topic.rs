//! `kpipe topic`: create, list, describe, alter, delete, and apply seed 04's JSON config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use kpipe_kafka::admin::{Admin, Created, IfExists, SeedTopicConfig, TopicSpec};
use kpipe_kafka::client::parse_override;

use super::{block_on, table, KafkaArgs};

/// Manage topics (kafka-topics in one command).
#[derive(Args)]
pub struct TopicArgs {
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    ///
    /// Examples:
    ///   kpipe topic create clicks --partitions 3 --config retention.ms=86400000
    ///   kpipe topic create clicks --if-not-exists      # "exists" is success too
    ///   kpipe topic create clicks --partitions 5 --recreate   # deletes its data!
    #[command(verbatim_doc_comment)]
    Create {
        name: String,
        #[arg(short, long, default_value_t = 1)]
        partitions: i32,
        #[arg(short, long = "replication-factor", default_value_t = 1)]
        replication_factor: i32,
        /// A topic config, repeatable: retention.ms, cleanup.policy, compression.type, min.insync.replicas, ...
        #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_override)]
        config: Vec<(String, String)>,
        /// Succeed, reporting "exists", when the topic is already there.
        #[arg(long, conflicts_with = "recreate")]
        if_not_exists: bool,
        /// Delete the topic first if it exists (its messages are lost), wait until it is gone, create it.
        #[arg(long)]
        recreate: bool,
    },
    /// List topics with their partition counts.
    List,
    /// Partitions (leader, replicas, ISR, start and end offsets) and non-default configs.
    Describe { name: String },
    /// Change configs or add partitions.
    ///
    /// Example: kpipe topic alter clicks --config min.insync.replicas=2 --delete-config retention.ms
    Alter {
        name: String,
        #[arg(short, long = "config", value_name = "KEY=VALUE", value_parser = parse_override)]
        config: Vec<(String, String)>,
        /// Return a config to its default, repeatable.
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_config: Vec<String>,
        /// New (larger) partition count.
        #[arg(short, long)]
        partitions: Option<i32>,
    },
    /// Delete a topic and its messages.
    Delete {
        name: String,
        /// Succeed when the topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
    /// Create a topic from seed 04's JSON config (topic_name, partitions,
    /// replication_factor, retention_ms, cleanup_policy, compression_type,
    /// recreate_topic, description): "exists" when present, recreated when
    /// recreate_topic is true. Without -b, its kafka_broker is used.
    Apply { file: PathBuf },
}

pub fn run(args: TopicArgs, kafka: &KafkaArgs) -> Result<()> {
    if let TopicCommand::Apply { file } = &args.command {
        return apply(kafka, file);
    }
    let admin = Admin::connect(&kafka.options())?;
    match args.command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            config,
            if_not_exists,
            recreate,
        } => {
            let spec = TopicSpec {
                name,
                partitions,
                replication: replication_factor,
                configs: config.into_iter().collect(),
            };
            let if_exists = if recreate {
                IfExists::Recreate
            } else if if_not_exists {
                IfExists::Keep
            } else {
                IfExists::Fail
            };
            create(&admin, &spec, if_exists)
        }
        TopicCommand::List => {
            let topics = admin.list()?;
            let rows = topics.iter().map(|t| {
                vec![
                    t.name.clone(),
                    t.partitions.to_string(),
                    t.replication.to_string(),
                ]
            });
            println!("{}", table(&["topic", "partitions", "replication"], rows));
            Ok(())
        }
        TopicCommand::Describe { name } => {
            let detail = block_on(admin.describe(&name))??;
            let ids = |v: &[i32]| v.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
            let rows = detail.partitions.iter().map(|p| {
                vec![
                    p.id.to_string(),
                    p.leader.to_string(),
                    ids(&p.replicas),
                    ids(&p.isr),
                    p.start_offset.to_string(),
                    p.end_offset.to_string(),
                ]
            });
            println!(
                "topic {} ({} partitions)",
                detail.name,
                detail.partitions.len()
            );
            println!(
                "{}",
                table(
                    &[
                        "partition",
                        "leader",
                        "replicas",
                        "isr",
                        "start offset",
                        "end offset"
                    ],
                    rows
                )
            );
            if detail.configs.is_empty() {
                println!("configs: all defaults");
            } else {
                let rows = detail
                    .configs
                    .iter()
                    .map(|(k, v)| vec![k.clone(), v.clone()]);
                println!("{}", table(&["config", "value"], rows));
            }
            Ok(())
        }
        TopicCommand::Alter {
            name,
            config,
            delete_config,
            partitions,
        } => {
            if config.is_empty() && delete_config.is_empty() && partitions.is_none() {
                anyhow::bail!("nothing to alter: give --config, --delete-config or --partitions");
            }
            block_on(admin.alter(&name, &config, &delete_config, partitions))??;
            println!("altered topic {name}");
            Ok(())
        }
        TopicCommand::Delete { name, if_exists } => {
            if if_exists && !admin.exists(&name)? {
                println!("topic {name} does not exist; nothing to delete");
                return Ok(());
            }
            block_on(admin.delete(&name))??;
            println!("deleted topic {name}");
            Ok(())
        }
        TopicCommand::Apply { .. } => unreachable!("handled above"),
    }
}

fn create(admin: &Admin, spec: &TopicSpec, if_exists: IfExists) -> Result<()> {
    if if_exists == IfExists::Recreate && admin.exists(&spec.name)? {
        eprintln!(
            "warning: recreating topic {} deletes all of its messages",
            spec.name
        );
    }
    let outcome = block_on(admin.create(spec, if_exists))??;
    if outcome == Created::Exists {
        println!("exists: {} (left as it is)", spec.name);
        return Ok(());
    }
    let configs: BTreeMap<_, _> = spec.configs.iter().collect();
    let shown = configs
        .iter()
        .map(|(k, v)| format!(" {k}={v}"))
        .collect::<String>();
    println!(
        "{}: {} ({} partitions, replication factor {}){shown}",
        outcome.word(),
        spec.name,
        spec.partitions,
        spec.replication
    );
    Ok(())
}

fn apply(kafka: &KafkaArgs, file: &std::path::Path) -> Result<()> {
    let config = SeedTopicConfig::load(file)?;
    let admin = Admin::connect(&kafka.options_or(config.kafka_broker.as_deref()))?;
    if let Some(description) = &config.description {
        println!("{}: {description}", config.topic_name);
    }
    create(&admin, &config.spec(), config.if_exists())
}

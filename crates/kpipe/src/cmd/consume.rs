//! `kpipe consume`: messages to stdout, as kafka-console-consumer does.

use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use kpipe_kafka::consume::{consume, ConsumeOptions};

use super::{stop_flag, KafkaArgs};

/// Print messages of a topic, one per line.
///
/// The three modes of kafka-console-consumer:
///   kpipe consume my_topic --from-beginning     # everything, no group
///   kpipe consume my_topic                      # only new messages
///   kpipe consume my_topic --group mygroupcli   # resume from the group's committed offsets
/// Ctrl-C stops cleanly; with --group it commits exactly what was printed.
/// --with-meta prints JSON lines: topic, partition, offset, key, timestamp, headers, value.
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ConsumeArgs {
    topic: String,
    /// Start at the earliest message (with --group: when the group has no committed offset).
    #[arg(long)]
    from_beginning: bool,
    /// Consume as a member of this group, committing what is printed.
    #[arg(short, long)]
    group: Option<String>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    max: Option<u64>,
    /// Stop after this many milliseconds without a message.
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
    /// Print JSON lines with partition, offset, key, timestamp and headers.
    #[arg(long)]
    with_meta: bool,
}

pub fn run(args: ConsumeArgs, kafka: &KafkaArgs) -> Result<()> {
    let stop = stop_flag();
    let request = ConsumeOptions {
        topic: args.topic,
        group: args.group,
        from_beginning: args.from_beginning,
        max: args.max,
        idle_timeout: args.timeout_ms.map(Duration::from_millis),
        with_meta: args.with_meta,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let report = consume(&kafka.options(), &request, &stop, &mut out)?;
    let _ = out.flush();
    eprintln!(
        "consumed {} messages from {}",
        report.messages, request.topic
    );
    Ok(())
}

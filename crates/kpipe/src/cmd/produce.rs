//! `kpipe produce`: one message per stdin line.

use anyhow::Result;
use clap::Args;
use kpipe_kafka::client::parse_override;
use kpipe_kafka::produce::{headers, produce_lines, Producer};

use super::{progress, KafkaArgs};

/// Produce messages from standard input, one per line.
///
/// Examples:
///   echo '{"id":1}' | kpipe produce events
///   kpipe produce music_events --key-field event_param.user_id < events.jsonl
///   kpipe produce events -H source=import -H batch=7 < lines.txt
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ProduceArgs {
    topic: String,
    /// Key each message by this JSON field (dotted for nested: event_param.user_id);
    /// lines without it are sent unkeyed and counted.
    #[arg(long, value_name = "FIELD")]
    key_field: Option<String>,
    /// A header, repeatable.
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_override)]
    headers: Vec<(String, String)>,
}

pub fn run(args: ProduceArgs, kafka: &KafkaArgs) -> Result<()> {
    let options = kafka.options();
    options.require_topic(&options.metadata_client()?, &args.topic)?;
    let producer = Producer::connect(&options)?;
    let bar = progress(None, "messages");
    let stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
    let report = produce_lines(
        producer,
        stdin,
        &args.topic,
        args.key_field.as_deref(),
        headers(&args.headers).as_ref(),
        |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "produced {} messages to {} in {:.2} s ({:.0} msg/s), {} delivered, {} failed{}",
        report.delivery.sent,
        args.topic,
        secs,
        report.delivery.sent as f64 / secs,
        report.delivery.delivered,
        report.delivery.failed,
        if report.unkeyed > 0 {
            format!(", {} without the key field", report.unkeyed)
        } else {
            String::new()
        }
    );
    Ok(())
}

//! `kpipe sink lake` (a topic into date-partitioned Parquet, exactly once) and
//! `kpipe sink clickhouse` (a topic into a ClickHouse table).

use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use kpipe_clickhouse::client::ClickHouse;
use kpipe_clickhouse::sink::SinkOptions as ClickHouseSinkOptions;
use kpipe_lake::file::{Codec, PartitionBy, TimeSource};
use kpipe_lake::sink::{self, SinkOptions};
use kpipe_lake::Lake;

use super::{progress, stop_flag, KafkaArgs};

/// Move a topic's messages into a Parquet lake or a ClickHouse table.
#[derive(Args)]
pub struct SinkArgs {
    #[command(subcommand)]
    command: SinkCommand,
}

#[derive(Subcommand)]
enum SinkCommand {
    Lake(LakeSinkArgs),
    Clickhouse(ClickHouseSinkArgs),
}

/// Load a topic into a ClickHouse table over HTTP, without the Kafka engine.
///
/// JSON fields map onto the table's columns by name (from DESCRIBE); dotted
/// column names match nested fields (`event_param.user_id`); missing columns get
/// their defaults; objects bound for String columns arrive as JSON text. When the
/// table has them, kafka_partition, kafka_offset, kafka_topic, batch_id,
/// consumer_group_id and processing_time are filled in. Batches of a partition are
/// inserted in offset order, with retries and backoff, and offsets are committed
/// only after the insert succeeded.
///
/// Delivery: exactly once when the table has kafka_partition and kafka_offset (on
/// every assignment the sink skips offsets the table already holds); otherwise at
/// least once. Servers from 22.2 also get an insert_deduplication_token per batch.
/// Rows the server refuses (or that are not JSON objects) go to --dlq-topic.
///
/// Examples:
///   kpipe sink clickhouse --topic music_events --table raw.music --url http://127.0.0.1:8123 --until-end
///   CLICKHOUSE_PASSWORD=... kpipe sink clickhouse --topic sales --table retail.sales --url http://ch:8123 --dlq-topic sales_dlq
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ClickHouseSinkArgs {
    #[arg(long)]
    topic: String,
    /// Target table, DB.TABLE or TABLE.
    #[arg(long, value_name = "DB.TABLE")]
    table: String,
    /// ClickHouse HTTP URL (user and password may be in it, or in CLICKHOUSE_USER / CLICKHOUSE_PASSWORD).
    #[arg(
        long,
        env = "KPIPE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        hide_env_values = true
    )]
    url: String,
    /// Consumer group [default: kpipe-clickhouse-<table>]
    #[arg(short, long)]
    group: Option<String>,
    /// Insert after this many rows (at most 1000000: one atomic block).
    #[arg(long, default_value_t = 50_000)]
    batch_rows: usize,
    /// Insert at least this often, e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    batch_interval: Duration,
    /// Read up to the end offsets seen at start, insert, commit and exit.
    #[arg(long)]
    until_end: bool,
    /// Topic for messages that cannot become rows.
    #[arg(long, value_name = "TOPIC")]
    dlq_topic: Option<String>,
}

/// Write a topic to Parquet files on a local disk or S3, exactly once.
///
/// Layout: URL/<topic>/dt=YYYY-MM-DD/<topic>+<partition>+<first offset>.parquet.
/// Nested JSON becomes dotted columns (event_param.user_id), and every row gets
/// _topic, _partition, _offset and _timestamp. A file's name comes from its rows,
/// offsets are committed only after its files are durable, so a crash or restart
/// rewrites the same files instead of duplicating rows. More instances with the
/// same --group share the partitions.
///
/// Schema policy: columns appear as fields appear; a column's type widens on
/// conflict (integer + float → float, anything mixed with text → text) instead
/// of rejecting the message. Messages that are not JSON objects, or lack a
/// readable --time-field, go to --dlq-topic with the reason in the kpipe.error header.
///
/// Examples:
///   kpipe sink lake --topic music_events --to ./lake --time-field event_timestamp.ts_ms --until-end
///   AWS_ENDPOINT_URL=http://127.0.0.1:8333 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
///     kpipe sink lake --topic music_events --to s3://prod-python/lake --create-bucket
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct LakeSinkArgs {
    #[arg(long)]
    topic: String,
    /// Lake URL: a directory, file:///dir or s3://bucket/prefix.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Consumer group [default: kpipe-lake-<topic>]
    #[arg(short, long)]
    group: Option<String>,
    /// Flush after this many rows.
    #[arg(long, default_value_t = 100_000)]
    flush_rows: usize,
    /// Flush after this many megabytes of messages (at most 1024).
    #[arg(long, default_value_t = 64)]
    flush_mb: usize,
    /// Flush at least this often, e.g. 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    flush_interval: Duration,
    /// Directory layout: date (dt=YYYY-MM-DD) or none.
    #[arg(long, default_value = "date", value_parser = ["date", "none"])]
    partition_by: String,
    /// Dotted JSON field holding the event's time (epoch s/ms or ISO-8601) [default: the Kafka timestamp]
    #[arg(long, value_name = "FIELD")]
    time_field: Option<String>,
    /// zstd or snappy.
    #[arg(long, default_value = "zstd", value_parser = |s: &str| s.parse::<Codec>())]
    compression: Codec,
    /// Read up to the end offsets seen at start, flush, commit and exit.
    #[arg(long)]
    until_end: bool,
    /// Topic for messages that cannot become rows.
    #[arg(long, value_name = "TOPIC")]
    dlq_topic: Option<String>,
    /// Create the S3 bucket when it does not exist.
    #[arg(long)]
    create_bucket: bool,
    /// Let librdkafka fetch, as `kpipe consume` does, instead of kpipe's own
    /// fetcher, which needs about 30% less CPU. With SSL or SASL librdkafka
    /// always fetches.
    #[arg(long)]
    librdkafka_fetch: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 10s, 500ms or 2m, not {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!(
            "expected a duration like 10s, 500ms or 2m, not {s:?}"
        )),
    }
}

pub fn run(args: SinkArgs, kafka: &KafkaArgs) -> Result<()> {
    match args.command {
        SinkCommand::Lake(args) => run_lake(args, kafka),
        SinkCommand::Clickhouse(args) => run_clickhouse(args, kafka),
    }
}

fn run_clickhouse(args: ClickHouseSinkArgs, kafka: &KafkaArgs) -> Result<()> {
    // ClickHouse inserts up to max_insert_block_size (1,048,576) rows as one
    // block, atomically: the exactly-once bookkeeping relies on that.
    if !(1..=1_000_000).contains(&args.batch_rows) {
        bail!("--batch-rows must be between 1 and 1000000");
    }
    let ch = ClickHouse::new(&args.url)?;
    let options = ClickHouseSinkOptions {
        group: args
            .group
            .unwrap_or_else(|| format!("kpipe-clickhouse-{}", args.table)),
        topic: args.topic,
        table: args.table,
        batch_rows: args.batch_rows,
        batch_interval: args.batch_interval,
        until_end: args.until_end,
        dlq_topic: args.dlq_topic,
    };
    let stop = stop_flag();
    let bar = progress(None, "rows");
    let report = kpipe_clickhouse::sink::run(&kafka.options(), &ch, &options, &stop, |r| {
        bar.set_position(r.rows)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "inserted {} rows into {} in {} inserts ({} retries); {} already in the table skipped; {} messages dead-lettered",
        report.rows,
        options.table,
        report.inserts,
        report.retries,
        report.skipped_already_loaded,
        report.dead_lettered
    );
    Ok(())
}

fn run_lake(args: LakeSinkArgs, kafka: &KafkaArgs) -> Result<()> {
    if args.flush_rows == 0 || !(1..=1024).contains(&args.flush_mb) {
        bail!("--flush-rows must be at least 1 and --flush-mb between 1 and 1024");
    }
    let lake = Lake::open(&args.to)?;
    let options = SinkOptions {
        group: args
            .group
            .unwrap_or_else(|| format!("kpipe-lake-{}", args.topic)),
        topic: args.topic,
        flush_rows: args.flush_rows,
        flush_bytes: args.flush_mb << 20,
        flush_interval: args.flush_interval,
        partition_by: if args.partition_by == "none" {
            PartitionBy::None
        } else {
            PartitionBy::Date
        },
        time: args.time_field.map_or(TimeSource::Kafka, TimeSource::Field),
        codec: args.compression,
        until_end: args.until_end,
        dlq_topic: args.dlq_topic,
        create_bucket: args.create_bucket,
        own_fetch: !args.librdkafka_fetch,
    };
    let stop = stop_flag();
    let bar = progress(None, "rows");
    let report = sink::run(&kafka.options(), &lake, &options, &stop, |r| {
        bar.set_position(r.rows)
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} rows in {} files ({:.1} MB) to {} in {} flushes; {} messages dead-lettered",
        report.rows,
        report.files,
        report.bytes as f64 / 1e6,
        lake.url(),
        report.flushes,
        report.dead_lettered
    );
    Ok(())
}

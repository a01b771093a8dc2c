//! `kpipe demo`: seeds 01 and 02 end to end on one machine, in under a minute.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use kpipe_broker::{Broker, BrokerConfig};
use kpipe_gen::{generator, Event, Kind, Options};
use kpipe_kafka::admin::{Admin, IfExists, TopicSpec};
use kpipe_kafka::produce::Producer;
use kpipe_kafka::ClientOptions;
use kpipe_lake::check::check;
use kpipe_lake::file::{Codec, PartitionBy, TimeSource};
use kpipe_lake::sink::{self, SinkOptions};
use kpipe_lake::Lake;
use kpipe_query::LakeQuery;

use super::progress;
use super::query::print_analysis;

const TOPIC: &str = "music_events";

/// Seed 02's pipeline in one command: an in-process broker, N music events, the
/// exactly-once lake sink into ./lake, seed 02's analysis in SQL, and a check
/// that every produced event is in the lake exactly once.
#[derive(Args)]
pub struct DemoArgs {
    /// How many music events.
    #[arg(short = 'n', long, default_value_t = 100_000)]
    events: u64,
    /// Broker data directory [default: a temporary directory]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the lake goes (its music_events table is replaced).
    #[arg(long, default_value = "./lake")]
    lake: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> Result<()> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let temp = tempfile::tempdir()?;
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| temp.path().join("kafka"));
    let config = BrokerConfig::new("127.0.0.1:0".parse()?, &data);
    let broker = runtime.block_on(Broker::start(config))?;
    let kafka = ClientOptions::new(broker.bootstrap());
    println!(
        "1. broker on {} (data in {})",
        broker.bootstrap(),
        data.display()
    );

    let admin = Admin::connect(&kafka)?;
    let spec = TopicSpec {
        name: TOPIC.into(),
        partitions: 3,
        replication: 1,
        configs: Default::default(),
    };
    runtime.block_on(admin.create(&spec, IfExists::Recreate))?;
    let produced = produce(&kafka, args.events, args.seed)?;
    println!("2. produced {produced} music events to {TOPIC} (3 partitions)");

    let lake = Lake::open(&args.lake)?;
    let local_table = PathBuf::from(&args.lake).join(TOPIC);
    if local_table.exists() {
        println!("   replacing the previous demo's {}", local_table.display());
        std::fs::remove_dir_all(&local_table)?;
    }
    let options = SinkOptions {
        topic: TOPIC.into(),
        group: "kpipe-demo".into(),
        flush_rows: 100_000,
        flush_bytes: 64 << 20,
        flush_interval: Duration::from_secs(10),
        partition_by: PartitionBy::Date,
        time: TimeSource::Field("event_timestamp.ts_ms".into()),
        codec: Codec::Zstd,
        until_end: true,
        dlq_topic: None,
        create_bucket: false,
        own_fetch: true,
    };
    let report = sink::run(&kafka, &lake, &options, &AtomicBool::new(false), |_| {})?;
    println!(
        "3. lake sink wrote {} rows in {} Parquet files ({:.1} MB) to {}",
        report.rows,
        report.files,
        report.bytes as f64 / 1e6,
        args.lake
    );

    let query = runtime.block_on(LakeQuery::open(&lake))?;
    println!("4. seed 02's analysis over the lake:");
    print_analysis(
        &runtime,
        &query,
        &[
            ("total count", "SELECT count(*) AS events FROM music_events"),
            ("schema", "DESCRIBE music_events"),
            ("first ten rows", "SELECT \"event_param.event_type\", \"event_param.user_id\", \"event_param.country\", \"event_timestamp.ts_ms\", dt FROM music_events ORDER BY _partition, _offset LIMIT 10"),
            ("track_playback only (event_type_id = 1)", "SELECT count(*) AS playbacks FROM music_events WHERE \"event_param.event_type_id\" = 1"),
            ("events by type", "SELECT \"event_param.event_type\" AS event_type, count(*) AS events FROM music_events GROUP BY 1 ORDER BY 2 DESC"),
        ],
    )?;

    let checked = runtime.block_on(check(&lake, Some(TOPIC), None, None))?;
    let rows: u64 = checked.partitions.iter().map(|p| p.rows).sum();
    let duplicates: u64 = checked.partitions.iter().map(|p| p.duplicates).sum();
    runtime.block_on(broker.shutdown())?;
    if rows != produced || duplicates > 0 {
        bail!("produced {produced} events but the lake holds {rows} rows with {duplicates} duplicate offsets");
    }
    println!(
        "\nverified: produced {produced} = {rows} rows in the lake, no duplicate offsets ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn produce(kafka: &ClientOptions, count: u64, seed: u64) -> Result<u64> {
    let mut events = generator(
        Kind::Music,
        &Options {
            seed,
            ..Options::default()
        },
    );
    let mut producer = Producer::connect(kafka)?;
    let bar = progress(Some(count), "events");
    let start_ms = chrono::Utc::now().timestamp_millis() - count as i64;
    let mut event = Event::default();
    for i in 0..count {
        events.next_into(start_ms + i as i64, &mut event);
        producer.send_at(
            TOPIC,
            None,
            Some(event.key.as_bytes()),
            Some(&event.value),
            None,
            Some(event.timestamp_ms),
        )?;
        if i % 4096 == 0 {
            bar.set_position(i);
        }
    }
    bar.finish_and_clear();
    Ok(producer.finish(Duration::from_secs(60))?.delivered)
}

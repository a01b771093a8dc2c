//! `kpipe broker`: run the embedded Kafka-compatible broker until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use kpipe_broker::{Broker, BrokerConfig, FsyncPolicy};

/// Run a single-node Kafka-compatible broker.
///
/// Any Kafka client (librdkafka, kcat, kafka-python, Java) can use it. Data lives
/// in DIR: one directory per topic and partition with segment files of record
/// batches, plus the broker's own state (committed offsets, producer ids).
///
/// Examples:
///   kpipe broker --data ./kafka-data
///   kpipe broker --listen 127.0.0.1:0 --data /tmp/k --fsync 200ms --auto-create-topics
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct BrokerArgs {
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Data directory (created when missing).
    #[arg(long, value_name = "DIR", default_value = "kpipe-data")]
    data: PathBuf,
    /// When acknowledged data reaches the disk: `always` (acks=all waits for
    /// fsync), an interval such as `200ms` (background fsync; acks=all survives a
    /// broker crash, not a power cut), or `never` (left to the OS).
    #[arg(long, default_value = "always", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Create unknown topics when a client asks for their metadata (off, as in
    /// the seeds' clusters).
    #[arg(long)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics without a count.
    #[arg(long, default_value_t = 1)]
    default_partitions: i32,
    /// Host name advertised to clients, when it differs from the listen address.
    #[arg(long)]
    advertised_host: Option<String>,
    /// Delay before the first rebalance of a new group completes
    /// (group.initial.rebalance.delay.ms), in milliseconds.
    #[arg(long, default_value_t = 0)]
    group_initial_rebalance_delay_ms: u64,
    /// How often retention is enforced, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    retention_check_interval_ms: u64,
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    s.parse()
}

pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    if args.default_partitions < 1 {
        anyhow::bail!("--default-partitions must be at least 1");
    }
    let mut config = BrokerConfig::new(args.listen, args.data);
    config.fsync = args.fsync;
    config.auto_create_topics = args.auto_create_topics;
    config.default_partitions = args.default_partitions;
    config.advertised_host = args.advertised_host;
    config.group_initial_rebalance_delay =
        std::time::Duration::from_millis(args.group_initial_rebalance_delay_ms);
    config.housekeeping_interval =
        std::time::Duration::from_millis(args.retention_check_interval_ms.max(10));
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let broker = Broker::start(config).await?;
        // Tests and scripts read this line to learn the port when --listen ends in :0.
        println!("kpipe broker listening on {}", broker.bootstrap());
        shutdown_signal().await;
        broker.shutdown().await
    })
}

async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

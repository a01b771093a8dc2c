//! kpipe: one binary for Kafka pipelines. This file only parses the command line
//! and hands each command to the library crate that does the work.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every pipeline here allocates per record (JSON values, rows, strings);
/// mimalloc serves that several times faster than glibc's malloc. Built without
/// its transparent-huge-page advice: the lake sink frees and reallocates large
/// column buffers every flush, and each fault then zeroed a whole 2 MiB page
/// (bench/lake.sh: a sixth of the sink's CPU in `clear_page`, and peak RSS over
/// 300 MB; without it sys time halves and RSS drops by ~50 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Kafka pipelines in one binary: an embedded Kafka-compatible broker, topic and
/// group tools, console produce/consume, the seeds' event generators, an
/// exactly-once Parquet lake on disk or S3 with SQL over it, and ClickHouse
/// (DDL from a table config, a direct sink, export back to Kafka).
///
/// Client commands talk to -b HOST:PORT (env KPIPE_BOOTSTRAP, default
/// 127.0.0.1:9092): `kpipe broker` or any real Kafka cluster. -X key=value passes
/// any librdkafka setting, as kcat does; KPIPE_KAFKA_SASL_PASSWORD and friends
/// carry secrets from the environment.
///
/// Quick start:
///   kpipe demo                                   # the whole seed 02 pipeline, in-process
///   kpipe broker --data ./kpipe-data &
///   kpipe gen music --count 100000
///   kpipe sink lake --topic music_events --to ./lake --until-end
///   kpipe query "SELECT count(*) FROM music_events"
#[derive(Parser)]
#[command(
    name = "kpipe",
    version,
    about,
    verbatim_doc_comment,
    propagate_version = true
)]
struct Cli {
    /// Log filter, as RUST_LOG (for example `info` or `kpipe_broker=debug,librdkafka=debug`).
    #[arg(long, global = true, env = "KPIPE_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    kafka: cmd::KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Broker(cmd::broker::BrokerArgs),
    Topic(cmd::topic::TopicArgs),
    Produce(cmd::produce::ProduceArgs),
    Consume(cmd::consume::ConsumeArgs),
    Group(cmd::group::GroupArgs),
    Gen(cmd::gen::GenArgs),
    Sink(cmd::sink::SinkArgs),
    Lake(cmd::lake::LakeArgs),
    Ch(cmd::ch::ChArgs),
    Sql(cmd::sql::SqlArgs),
    Query(cmd::query::QueryArgs),
    Server(cmd::server::ServerArgs),
    Demo(cmd::demo::DemoArgs),
}

/// Logs to stderr at the level `filter` asks for (an `EnvFilter` directive).
fn init_logging(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    // `kpipe_kafka::client::close_consumer` leaves the group in small steps;
    // rust-rdkafka's drop then closes again and reports, as its only error,
    // that the group is already closed.
    let second_close = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.target() == "rdkafka::consumer::base_consumer"
            && *meta.level() == tracing::Level::ERROR)
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(second_close),
        )
        .init();
}

fn main() -> ExitCode {
    end_quietly_when_stdout_closes();
    let cli = Cli::parse();
    init_logging(&cli.log);
    let result = match cli.command {
        Command::Broker(args) => cmd::broker::run(args),
        Command::Topic(args) => cmd::topic::run(args, &cli.kafka),
        Command::Produce(args) => cmd::produce::run(args, &cli.kafka),
        Command::Consume(args) => cmd::consume::run(args, &cli.kafka),
        Command::Group(args) => cmd::group::run(args, &cli.kafka),
        Command::Gen(args) => cmd::gen::run(args, &cli.kafka),
        Command::Sink(args) => cmd::sink::run(args, &cli.kafka),
        Command::Lake(args) => cmd::lake::run(args, &cli.kafka),
        Command::Ch(args) => cmd::ch::run(args, &cli.kafka),
        Command::Sql(args) => cmd::sql::run(args, &cli.kafka),
        Command::Query(args) => cmd::query::run(args),
        Command::Server(args) => cmd::server::run(args, &cli.kafka),
        Command::Demo(args) => cmd::demo::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A reader that leaves early (`kpipe consume … | head`) closes stdout, and
/// printing then panics inside std; end quietly instead, with the status a
/// process killed by SIGPIPE has, as `cat` would. SIGPIPE itself stays
/// ignored: the ClickHouse sink must see a dead server's socket as an error,
/// not die of it.
fn end_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

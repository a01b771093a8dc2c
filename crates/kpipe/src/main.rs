//! kpipe: one binary for Kafka pipelines. This file only parses the command line
//! and hands each command to the library crate that does the work.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kafka pipelines in one binary: an embedded broker, and (as they land) topic
/// tools, generators, a Parquet lake sink, ClickHouse and streaming SQL.
#[derive(Parser)]
#[command(name = "kpipe", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter, as RUST_LOG (for example `info` or `kpipe_broker=debug`).
    #[arg(long, global = true, env = "KPIPE_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Broker(cmd::broker::BrokerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Broker(args) => cmd::broker::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

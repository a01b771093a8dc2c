//! `kpipe server`: ksqlDB's REST API (kpipe-server) over a Kafka cluster.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use kpipe_server::ServerOptions;

use super::KafkaArgs;

/// Serve ksqlDB's REST API: statements on POST /ksql, queries on POST /query
/// and /query-stream, GET /info and /healthcheck. Sources and persistent
/// queries are stored in --state and run again after a restart, reading from
/// where they first began, so their results come out the same.
///
///   kpipe broker --data ./kpipe-data &
///   kpipe server --listen 127.0.0.1:8088 --state ./ksql-state &
///   curl -s localhost:8088/ksql -d '{"ksql": "SHOW STREAMS;"}'
///   curl -s localhost:8088/query -d '{"ksql": "SELECT * FROM payments EMIT CHANGES LIMIT 5;"}'
#[derive(Args)]
#[command(verbatim_doc_comment)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free one; the first line printed says which).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Directory for the command log.
    #[arg(long, default_value = "./kpipe-ksql-state")]
    state: PathBuf,
    /// The service id /info reports (ksql.service.id).
    #[arg(long, default_value = "default_")]
    service_id: String,
}

pub fn run(args: ServerArgs, kafka: &KafkaArgs) -> anyhow::Result<()> {
    let stop = super::stop_flag();
    let options = ServerOptions {
        listen: args.listen,
        state: args.state,
        service_id: args.service_id,
    };
    kpipe_server::run(kafka.options(), options, stop, |address| {
        // Tests and scripts read this line to learn the port when --listen ends in :0.
        println!("kpipe server listening on http://{address}");
    })
}

//! `kpipe server`: ksqlDB's REST API (kpipe-server) over a Kafka cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kpipe_server::ServerOptions;

use super::KafkaArgs;

/// Serve ksqlDB's REST API: statements on POST /ksql, queries on POST /query
/// and /query-stream, GET /info and /healthcheck. Sources and persistent
/// queries are stored in the service's command topic and run again after a
/// restart or a kill -9. A query's state (aggregates, windows, a table's
/// rows) goes to a changelog topic with checkpoints of its input offsets, so
/// a restarted query restores it and resumes after its last checkpoint: no
/// input lost or counted twice. Servers with the same --service-id share
/// the work: each runs every query's tasks for the partitions the query's
/// consumer group gives it, and takes over a dead one's.
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
    /// The server's own directory, locked while it runs (two servers of a
    /// service each need one).
    #[arg(long, default_value = "./kpipe-ksql-state")]
    state: PathBuf,
    /// The service id (ksql.service.id): /info reports it, and it names the
    /// queries' consumer groups (_confluent-ksql-ID query_QUERY) and
    /// changelog topics.
    #[arg(long, default_value = kpipe_server::SERVICE_ID)]
    service_id: String,
    /// How often (ms) a persistent query checkpoints its state and offsets
    /// while input flows; it also checkpoints whenever it catches up.
    #[arg(long, default_value_t = kpipe_server::COMMIT_INTERVAL.as_millis() as u64, value_name = "MS")]
    commit_interval: u64,
}

pub fn run(args: ServerArgs, kafka: &KafkaArgs) -> anyhow::Result<()> {
    let stop = super::stop_flag();
    let options = ServerOptions {
        listen: args.listen,
        state: args.state,
        service_id: args.service_id,
        commit_interval: Duration::from_millis(args.commit_interval),
        transient: false,
    };
    kpipe_server::run(kafka.options(), options, stop, |address| {
        // Tests and scripts read this line to learn the port when --listen ends in :0.
        println!("kpipe server listening on http://{address}");
    })
}

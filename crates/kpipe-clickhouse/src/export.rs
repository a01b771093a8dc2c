//! `kpipe ch export`: seed 04's alerts flow — a ClickHouse query whose every
//! result row becomes a JSON message on a Kafka topic (ClickHouse 18 cannot
//! write to Kafka itself).

use anyhow::{anyhow, bail, Result};
use kpipe_kafka::client::ClientOptions;
use kpipe_kafka::produce::{Delivery, Producer};
use serde_json::Value;

use crate::client::ClickHouse;

/// Runs `query` and produces each row to `topic`, keyed by `key_column`'s value.
pub fn run(
    kafka: &ClientOptions,
    ch: &ClickHouse,
    query: &str,
    topic: &str,
    key_column: Option<&str>,
) -> Result<Delivery> {
    let query = query.trim().trim_end_matches(';');
    if query.to_ascii_uppercase().contains(" FORMAT ") {
        bail!("leave FORMAT out of the query: kpipe reads the rows as JSONEachRow");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lines = runtime
        .block_on(ch.lines(query))
        .map_err(|e| anyhow!("ClickHouse refused the query: {e}"))?;
    let probe = kafka.metadata_client()?;
    kafka.require_topic(&probe, topic)?;
    let mut producer = Producer::connect(kafka)?;
    // Each line goes out as ClickHouse wrote it, columns in the query's order.
    for line in &lines {
        let key = match key_column {
            Some(column) => {
                let row: Value = serde_json::from_str(line)?;
                Some(match row.get(column) {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) if !v.is_null() => v.to_string(),
                    _ => bail!("the query's rows have no {column:?} column to use as the key"),
                })
            }
            None => None,
        };
        producer.send(
            topic,
            key.as_deref().map(str::as_bytes),
            line.as_bytes(),
            None,
        )?;
    }
    producer.finish(std::time::Duration::from_secs(60))
}

//! kpipe-broker: an embedded, single-node, Kafka-compatible broker.
//!
//! It speaks the Kafka wire protocol (through the `kafka-protocol` crate) well
//! enough that librdkafka, kafka-python and the Java-style admin clients treat it as
//! Kafka, stores record batches as produced in per-partition segment files, and
//! coordinates consumer groups. It never replicates: beyond one machine, point
//! kpipe at a real Kafka cluster.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = kpipe_broker::BrokerConfig::new("127.0.0.1:0".parse()?, "/tmp/kpipe-data");
//! let broker = kpipe_broker::Broker::start(config).await?;
//! println!("bootstrap servers: {}", broker.bootstrap());
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

mod api;
pub mod config;
mod error;
mod groups;
mod producer_ids;
mod server;
pub mod storage;
mod topics;

pub use config::{BrokerConfig, FsyncPolicy};
pub use server::Broker;

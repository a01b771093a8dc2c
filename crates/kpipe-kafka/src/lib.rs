//! kpipe-kafka: the client side of kpipe — connection options with `-X`
//! passthrough, topic administration, producing, consuming and consumer groups —
//! for `kpipe broker` and any real Kafka cluster alike; and a fetch path of its
//! own for the lake sink and the SQL reader, where librdkafka's per-message cost shows.

pub mod admin;
pub mod client;
pub mod consume;
pub mod feed;
pub mod fetch;
pub mod groups;
pub mod produce;
pub mod sink;

pub use client::ClientOptions;

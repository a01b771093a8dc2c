//! kpipe-kafka: the client side of kpipe — connection options with `-X`
//! passthrough, topic administration, producing, consuming and consumer groups —
//! for `kpipe broker` and any real Kafka cluster alike.

pub mod admin;
pub mod client;
pub mod consume;
pub mod groups;
pub mod produce;
pub mod sink;

pub use client::ClientOptions;

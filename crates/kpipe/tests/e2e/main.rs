//! End-to-end tests that drive the `kpipe` binary. Every test starts its own
//! `kpipe broker` process; the broker is checked with real clients (the rdkafka
//! crate, Debian's kcat, confluent-kafka and kafka-python), the client commands
//! against the broker.

mod cli;
mod clickhouse;
mod console;
mod harness;
mod kcat;
mod lake;
mod python;
mod rdkafka_clients;
mod server;
mod sql;
mod tools;
mod topics;

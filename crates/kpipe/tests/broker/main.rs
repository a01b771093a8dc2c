//! End-to-end tests of `kpipe broker` with real clients: the rdkafka crate
//! (librdkafka 2.12), Debian's kcat (librdkafka 2.0.2), and the Python clients
//! confluent-kafka and kafka-python. Every test starts its own broker process.

mod cli;
mod harness;
mod kcat;
mod python;
mod rdkafka_clients;

//! kpipe-clickhouse: Kafka ↔ ClickHouse. DDL for seed 04's table configs
//! (`kpipe ch ddl`), applying it over HTTP with data-flow and health checks, a
//! direct sink from Kafka (`kpipe sink clickhouse`), and query results back to
//! Kafka (`kpipe ch export`).

pub mod apply;
pub mod client;
pub mod config;
pub mod ddl;
pub mod export;
pub mod sink;
pub mod sql;

//! kpipe-sql: streaming SQL in ksqlDB's dialect. A hand-written lexer and
//! parser (`parser`), an engine that runs statements over topics (`engine`),
//! and the runner for ksqlDB's query-validation tests (`qtt`), which feeds the
//! same engine in-memory topics.
//!
//! Today: CREATE STREAM with columns, CREATE STREAM AS SELECT with projections
//! and WHERE, and CREATE TABLE AS SELECT with one GROUP BY expression, HAVING
//! and COUNT, SUM, MIN, MAX, EARLIEST_BY_OFFSET, LATEST_BY_OFFSET (an update per
//! input, tombstones when HAVING retracts), a dozen scalar functions, source
//! aliases, over JSON and DELIMITED values.
//! TUMBLING, HOPPING and SESSION windows (grace periods, WINDOWSTART/WINDOWEND),
//! TOPK/TOPKDISTINCT, CASE, CAST, LIKE, INSERT INTO and table sources (updates
//! retract the old row) too. Complex types, joins and the live runtime are to come.

mod aggregate;
pub mod catalog;
pub mod engine;
mod eval;
mod format;
mod functions;
pub mod lexer;
pub mod live;
pub mod parser;
pub mod qtt;
pub mod wire;

//! kpipe-sql: streaming SQL in ksqlDB's dialect. A hand-written lexer and
//! parser (`parser`), an engine that runs statements over topics (`engine`),
//! and the runner for ksqlDB's query-validation tests (`qtt`), which feeds the
//! same engine in-memory topics.
//!
//! Today: CREATE STREAM with columns, and CREATE STREAM AS SELECT with
//! projections and WHERE over JSON and DELIMITED values; the rest of the
//! dialect (tables, aggregates, windows, the live runtime) is to come.

pub mod engine;
pub mod lexer;
pub mod parser;
pub mod qtt;

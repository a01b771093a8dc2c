//! kpipe-sql: streaming SQL in ksqlDB's dialect. A hand-written lexer and
//! parser (`parser`), an engine that runs statements over topics (`engine`),
//! and the runner for ksqlDB's query-validation tests (`qtt`), which feeds the
//! same engine in-memory topics.
//!
//! Today: CREATE STREAM/TABLE with primitive, DECIMAL, ARRAY, MAP and STRUCT
//! columns (one or several key columns), CREATE ... AS SELECT with projections,
//! WHERE, GROUP BY one or more expressions, HAVING, TUMBLING/HOPPING/SESSION
//! windows, the common aggregates (COUNT, SUM, AVG, MIN, MAX, COUNT_DISTINCT,
//! COLLECT_LIST, STDDEV_SAMP, TOPK, EARLIEST/LATEST_BY_OFFSET), subscripts,
//! struct fields, constructors and lambdas, INSERT INTO and table sources
//! (updates retract the old row), over JSON, DELIMITED and KAFKA.
//! Joins and the live runtime are to come.

mod aggregate;
mod check;
pub mod engine;
mod eval;
mod format;
mod functions;
mod join;
pub mod lexer;
pub mod parser;
mod plan;
pub mod qtt;
mod time;
mod types;

//! kpipe-sql: streaming SQL in ksqlDB's dialect. A hand-written lexer and
//! parser (`parser`), an engine that runs statements over topics (`engine`),
//! the live session that runs it against Kafka (`live`, reading through the
//! timestamp merge of `merge` and decoding plain streams' JSON straight into
//! `row`s on the reader's thread, writing with `wire`), and the runner for
//! ksqlDB's query-validation tests (`qtt`), which feeds the same engine
//! in-memory topics.
//!
//! Today: CREATE [OR REPLACE] [SOURCE] STREAM/TABLE with primitive, DECIMAL,
//! ARRAY, MAP and STRUCT columns (one or several key columns, windowed
//! sources), ALTER, INSERT INTO ... VALUES and ... SELECT, CREATE ... AS
//! SELECT with projections, WHERE, GROUP BY one or more expressions, HAVING,
//! PARTITION BY, TUMBLING/HOPPING/SESSION windows, stream-stream INNER joins
//! WITHIN a window and INNER/LEFT joins with tables, the common aggregates
//! (COUNT, SUM, AVG, MIN, MAX, COUNT_DISTINCT, COLLECT_LIST, STDDEV_SAMP,
//! TOPK, EARLIEST/LATEST_BY_OFFSET, SUM_LIST), subscripts, struct fields,
//! constructors and lambdas, ksqlDB's type checks and messages, over JSON,
//! AVRO (a hand-written codec with an in-process schema registry, `avro`),
//! DELIMITED and KAFKA; pull and push SELECTs, EMIT FINAL, SHOW, DESCRIBE,
//! DROP, TERMINATE and SET for sessions.

mod aggregate;
mod avro;
pub mod catalog;
mod check;
mod decimal;
pub mod durable;
pub mod engine;
mod eval;
mod format;
mod functions;
mod join;
pub mod lexer;
pub mod live;
mod merge;
pub mod parser;
mod plan;
pub mod pull;
pub mod qtt;
pub mod rest;
pub mod resttest;
mod row;
pub mod state;
mod time;
mod types;
pub mod wire;

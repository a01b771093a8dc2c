//! kpipe-lake: Kafka → date-partitioned Parquet on a local disk or S3, exactly
//! once, and the checks that prove it (`kpipe lake check`).
//!
//! Layout: `<root>/<topic>/dt=YYYY-MM-DD/<topic>+<partition>+<first offset, 20 digits>.parquet`,
//! nested JSON flattened to dotted columns, `_topic`, `_partition`, `_offset` and
//! `_timestamp` on every row.

pub mod check;
pub mod file;
pub mod flatten;
pub mod sink;
pub mod store;
mod workers;

pub use store::Lake;

//! One partition's buffered rows → Parquet files, one per day.
//!
//! Rows of a partition accumulate in a [`PartitionBuffer`] in offset order; at a
//! flush they become an Arrow batch with the `_topic`, `_partition`, `_offset` and
//! `_timestamp` columns, are split by day, lose the columns that are empty in a
//! day, and are encoded as Parquet (statistics on) named after their first offset.

use std::sync::Arc;

use anyhow::{Context, Result};
use arrow_array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_schema::{Field, Schema};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::flatten::{append_row, Columns, RowError, Scalar};
use crate::store::FileName;

pub const META_COLUMNS: [&str; 4] = ["_topic", "_partition", "_offset", "_timestamp"];

/// Parquet compression of lake files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Zstd,
    Snappy,
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "zstd" => Ok(Codec::Zstd),
            "snappy" => Ok(Codec::Snappy),
            other => Err(format!("compression must be zstd or snappy, not {other:?}")),
        }
    }
}

/// How rows are laid out in directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionBy {
    /// `dt=YYYY-MM-DD` from the event's time.
    Date,
    None,
}

/// Where a row's time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSource {
    /// The Kafka message timestamp.
    Kafka,
    /// A dotted JSON field: epoch seconds or milliseconds, or an ISO-8601 date/time.
    Field(String),
}

/// Milliseconds since the epoch from a time field's value.
fn time_ms(value: &Scalar) -> Option<i64> {
    // Values below 10^11 are seconds (until the year 5138), above milliseconds.
    const SECONDS_LIMIT: f64 = 1e11;
    match value {
        Scalar::Int(n) if (*n as f64).abs() < SECONDS_LIMIT => n.checked_mul(1000),
        Scalar::Int(n) => Some(*n),
        Scalar::Float(f) if f.abs() < SECONDS_LIMIT => Some((f * 1000.0) as i64),
        Scalar::Float(f) => Some(*f as i64),
        Scalar::Text(s) => {
            let s = s.trim();
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .ok()
                .or_else(|| {
                    [
                        "%Y-%m-%d %H:%M:%S%.f",
                        "%Y-%m-%dT%H:%M:%S%.f",
                        "%Y-%m-%d %H:%M:%S",
                        "%Y-%m-%dT%H:%M:%S",
                    ]
                    .iter()
                    .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
                    .map(|t| t.and_utc().timestamp_millis())
                })
                .or_else(|| {
                    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                        .ok()
                        .map(|d| {
                            d.and_hms_opt(0, 0, 0)
                                .expect("midnight exists")
                                .and_utc()
                                .timestamp_millis()
                        })
                })
        }
        Scalar::Bool(_) => None,
    }
}

fn day_of(ms: i64) -> i32 {
    ms.div_euclid(86_400_000) as i32
}

fn day_name(day: i32) -> String {
    let date =
        chrono::DateTime::from_timestamp(day as i64 * 86_400, 0).expect("a day in chrono's range");
    date.format("%Y-%m-%d").to_string()
}

/// Rows of one partition waiting for the next flush.
#[derive(Default)]
pub struct PartitionBuffer {
    columns: Columns,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    days: Vec<i32>,
    pub bytes: usize,
}

impl PartitionBuffer {
    /// A buffer expecting about `rows` rows (the partition's last flush is a good guess).
    pub fn with_capacity(rows: usize) -> PartitionBuffer {
        PartitionBuffer {
            columns: Columns::with_capacity(rows),
            offsets: Vec::with_capacity(rows),
            timestamps: Vec::with_capacity(rows),
            days: Vec::with_capacity(rows),
            bytes: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.offsets.len()
    }

    /// Adds a message as a row, or says why it cannot be one.
    pub fn push(
        &mut self,
        payload: &[u8],
        offset: i64,
        kafka_ms: Option<i64>,
        time: &TimeSource,
    ) -> Result<(), RowError> {
        let capture = match time {
            TimeSource::Field(f) => Some(f.as_str()),
            TimeSource::Kafka => None,
        };
        let captured = append_row(&mut self.columns, payload, capture)?;
        let event_ms = match time {
            TimeSource::Kafka => kafka_ms.unwrap_or(0),
            TimeSource::Field(field) => match captured.as_ref().and_then(time_ms) {
                Some(ms) => ms,
                None => {
                    self.columns.remove_last_row();
                    return Err(RowError(format!(
                        "time field {field} is missing or not a time"
                    )));
                }
            },
        };
        self.offsets.push(offset);
        self.timestamps.push(kafka_ms.unwrap_or(event_ms));
        self.days.push(day_of(event_ms));
        self.bytes += payload.len();
        Ok(())
    }

    /// Encodes the buffered rows into finished files (name, Parquet bytes, rows).
    pub fn into_files(
        self,
        topic: &str,
        partition: i32,
        by: PartitionBy,
        codec: Codec,
    ) -> Result<Vec<(FileName, Bytes, usize)>> {
        let rows = self.offsets.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let mut columns = self.columns.finish();
        columns.push((
            "_topic".into(),
            Arc::new(StringArray::from(vec![topic; rows])) as ArrayRef,
        ));
        columns.push((
            "_partition".into(),
            Arc::new(Int32Array::from(vec![partition; rows])),
        ));
        columns.push((
            "_offset".into(),
            Arc::new(Int64Array::from(self.offsets.clone())),
        ));
        columns.push((
            "_timestamp".into(),
            Arc::new(TimestampMillisecondArray::from(self.timestamps).with_timezone("UTC")),
        ));
        let batch = to_batch(columns)?;
        let mut days: Vec<i32> = match by {
            PartitionBy::Date => self.days.clone(),
            PartitionBy::None => Vec::new(),
        };
        days.sort_unstable();
        days.dedup();
        if days.len() <= 1 {
            let dt = days.first().map(|d| day_name(*d));
            let name = FileName {
                topic: topic.into(),
                dt,
                partition,
                first_offset: self.offsets[0],
            };
            return Ok(vec![(
                name,
                encode(&without_empty_columns(&batch)?, codec)?,
                rows,
            )]);
        }
        days.into_iter()
            .map(|day| {
                let mask =
                    BooleanArray::from(self.days.iter().map(|d| *d == day).collect::<Vec<_>>());
                let part = arrow_select::filter::filter_record_batch(&batch, &mask)?;
                let first = self
                    .days
                    .iter()
                    .position(|d| *d == day)
                    .expect("the day has rows");
                let name = FileName {
                    topic: topic.into(),
                    dt: Some(day_name(day)),
                    partition,
                    first_offset: self.offsets[first],
                };
                let count = part.num_rows();
                Ok((name, encode(&without_empty_columns(&part)?, codec)?, count))
            })
            .collect()
    }
}

fn to_batch(columns: Vec<(String, ArrayRef)>) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| {
            Field::new(
                name,
                array.data_type().clone(),
                !META_COLUMNS.contains(&name.as_str()),
            )
        })
        .collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Drops data columns with no value in these rows, so a file's schema is its rows'.
fn without_empty_columns(batch: &RecordBatch) -> Result<RecordBatch> {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.column(i).null_count() < batch.num_rows())
        .collect();
    if keep.len() == batch.num_columns() {
        return Ok(batch.clone());
    }
    Ok(batch.project(&keep)?)
}

fn encode(batch: &RecordBatch, codec: Codec) -> Result<Bytes> {
    let compression = match codec {
        Codec::Zstd => Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")),
        Codec::Snappy => Compression::SNAPPY,
    };
    let properties = WriterProperties::builder()
        .set_compression(compression)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("kpipe {}", env!("CARGO_PKG_VERSION")));
    // Offsets and timestamps are (nearly) unique: a dictionary would only be
    // built to be thrown away.
    let properties = ["_offset", "_timestamp"]
        .into_iter()
        .fold(properties, |p, column| {
            p.set_column_dictionary_enabled(ColumnPath::from(column), false)
        })
        .build();
    let mut out = Vec::with_capacity(batch.get_array_memory_size() / 4);
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties))
        .context("parquet writer")?;
    writer.write(batch).context("encoding parquet")?;
    writer.close().context("finishing parquet")?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn read(bytes: Bytes) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
        arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
    }

    #[test]
    fn times_from_fields() {
        assert_eq!(
            time_ms(&Scalar::Int(1_700_000_000)),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            time_ms(&Scalar::Int(1_700_000_000_123)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            time_ms(&Scalar::Text("2024-05-01".into())),
            Some(1_714_521_600_000)
        );
        assert_eq!(
            time_ms(&Scalar::Text("2024-05-01 00:00:01".into())),
            Some(1_714_521_601_000)
        );
        assert_eq!(
            time_ms(&Scalar::Text("2024-05-01T00:00:01Z".into())),
            Some(1_714_521_601_000)
        );
        assert_eq!(time_ms(&Scalar::Text("yesterday".into())), None);
        assert_eq!(day_name(day_of(1_714_521_601_000)), "2024-05-01");
    }

    #[test]
    fn rows_split_by_day_into_named_parquet_files() {
        let time = TimeSource::Field("ts_ms".into());
        let mut buffer = PartitionBuffer::default();
        let may_first = 1_714_521_600_000i64;
        let day = 86_400_000i64;
        for (offset, (ms, extra)) in [
            (may_first, ""),
            (may_first + day, r#","late":1"#),
            (may_first + 10, ""),
            (may_first + day + 5, ""),
        ]
        .iter()
        .enumerate()
        {
            let json = format!(r#"{{"id":{offset},"ts_ms":{ms}{extra}}}"#);
            buffer
                .push(json.as_bytes(), 100 + offset as i64, Some(7), &time)
                .unwrap();
        }
        let bad = buffer.push(br#"{"id":9}"#, 104, None, &time).unwrap_err();
        assert_eq!(bad.0, "time field ts_ms is missing or not a time");
        let files = buffer
            .into_files("t", 3, PartitionBy::Date, Codec::Zstd)
            .unwrap();
        let names: Vec<String> = files.iter().map(|f| f.0.relative()).collect();
        assert_eq!(
            names,
            [
                "t/dt=2024-05-01/t+3+00000000000000000100.parquet",
                "t/dt=2024-05-02/t+3+00000000000000000101.parquet"
            ]
        );
        let first = read(files[0].1.clone());
        let columns: Vec<String> = first
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            columns,
            [
                "id",
                "ts_ms",
                "_topic",
                "_partition",
                "_offset",
                "_timestamp"
            ],
            "'late' has no value that day"
        );
        let offsets: Vec<i64> = first
            .column(4)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec();
        assert_eq!(offsets, vec![100, 102]);
        let second = read(files[1].1.clone());
        assert!(second.schema().field_with_name("late").is_ok());
        assert_eq!(files[1].2, 2);
    }
}

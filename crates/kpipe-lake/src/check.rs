//! `kpipe lake check`: what the lake holds per topic and day, and per Kafka
//! partition whether every offset is there exactly once.
//!
//! Offsets come from each file's `_offset` column (only that column is read).
//! Duplicates are always an error. A gap is an error unless it is explained:
//! offsets that went to the dead-letter topic, offsets below the partition's
//! current log start (truncated by retention or DeleteRecords), or any gap in a
//! compacted topic — the last two need `-b` to ask Kafka.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use futures_util::{StreamExt, TryStreamExt};
use kpipe_kafka::client::{ClientOptions, CONNECT_TIMEOUT};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::store::{FileName, Lake};

#[derive(Debug, Clone, Default)]
pub struct DaySummary {
    pub topic: String,
    pub dt: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Column names and types of the day's files (union, first seen order).
    pub schema: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PartitionSummary {
    pub topic: String,
    pub partition: i32,
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub rows: u64,
    pub duplicates: u64,
    /// Offsets missing between first and last, not explained.
    pub missing: u64,
    /// Missing offsets explained, and why.
    pub explained: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub days: Vec<DaySummary>,
    pub partitions: Vec<PartitionSummary>,
}

impl CheckReport {
    /// One sentence per problem; empty when the lake is exact.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for p in &self.partitions {
            if p.duplicates > 0 {
                problems.push(format!(
                    "{}[{}]: {} offsets appear more than once",
                    p.topic, p.partition, p.duplicates
                ));
            }
            if p.missing > 0 {
                problems.push(format!("{}[{}]: {} offsets are missing (gaps not explained by the dead-letter topic, compaction or truncation)", p.topic, p.partition, p.missing));
            }
        }
        problems
    }
}

/// What Kafka can explain about gaps.
#[derive(Debug, Default)]
struct Explanations {
    compacted: BTreeSet<String>,
    /// (topic, partition) → log start offset.
    log_start: BTreeMap<(String, i32), i64>,
    /// (topic, partition) → offsets that were dead-lettered.
    dead_lettered: BTreeMap<(String, i32), BTreeSet<i64>>,
}

pub async fn check(
    lake: &Lake,
    topic: Option<&str>,
    kafka: Option<&ClientOptions>,
    dlq_topic: Option<&str>,
) -> Result<CheckReport> {
    let files = lake.list(topic).await?;
    let read = futures_util::stream::iter(files.into_iter().map(|(name, size)| async move {
        let relative = name.relative();
        let schema = lake.file_schema(&relative, size).await?;
        let columns: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        // Only the _offset column is decoded; the whole file is fetched, which a
        // check that reads every file anyway can afford.
        let bytes = lake.get(&relative).await?;
        let offsets = tokio::task::spawn_blocking(move || offsets_in(bytes))
            .await?
            .with_context(|| format!("cannot read the offsets of {relative}"))?;
        Ok::<_, anyhow::Error>((name, size, columns, offsets))
    }))
    .buffer_unordered(8)
    .try_collect::<Vec<_>>()
    .await?;

    let mut days: BTreeMap<(String, String), DaySummary> = BTreeMap::new();
    let mut offsets: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    for (name, size, schema, file_offsets) in read {
        let FileName {
            topic,
            dt,
            partition,
            ..
        } = name;
        let day = days
            .entry((topic.clone(), dt.clone().unwrap_or_else(|| "-".into())))
            .or_insert_with(|| DaySummary {
                topic: topic.clone(),
                dt: dt.unwrap_or_else(|| "-".into()),
                ..Default::default()
            });
        day.files += 1;
        day.rows += file_offsets.len() as u64;
        day.bytes += size;
        for column in schema {
            if !day.schema.contains(&column) {
                day.schema.push(column);
            }
        }
        offsets
            .entry((topic, partition))
            .or_default()
            .extend(file_offsets);
    }
    let topics: BTreeSet<String> = offsets.keys().map(|k| k.0.clone()).collect();
    let explanations = match kafka {
        Some(kafka) => explain(kafka, &topics, dlq_topic).await?,
        None => Explanations::default(),
    };
    let partitions = offsets
        .into_iter()
        .map(|((topic, partition), mut list)| summarize(topic, partition, &mut list, &explanations))
        .collect();
    Ok(CheckReport {
        days: days.into_values().collect(),
        partitions,
    })
}

fn offsets_in(bytes: bytes::Bytes) -> Result<Vec<i64>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let index = builder
        .schema()
        .index_of("_offset")
        .context("no _offset column")?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let mut offsets = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        offsets.extend_from_slice(batch?.column(0).as_primitive::<Int64Type>().values());
    }
    Ok(offsets)
}

fn summarize(
    topic: String,
    partition: i32,
    list: &mut [i64],
    why: &Explanations,
) -> PartitionSummary {
    list.sort_unstable();
    let mut summary = PartitionSummary {
        first: list.first().copied(),
        last: list.last().copied(),
        rows: list.len() as u64,
        ..Default::default()
    };
    let key = (topic.clone(), partition);
    let dead = why.dead_lettered.get(&key);
    let log_start = why.log_start.get(&key).copied().unwrap_or(i64::MIN);
    let compacted = why.compacted.contains(&topic);
    for pair in list.windows(2) {
        if pair[0] == pair[1] {
            summary.duplicates += 1;
            continue;
        }
        for missing in pair[0] + 1..pair[1] {
            let reason = if dead.is_some_and(|d| d.contains(&missing)) {
                "dead-lettered"
            } else if missing < log_start {
                "truncated"
            } else if compacted {
                "compacted"
            } else {
                summary.missing += 1;
                continue;
            };
            *summary.explained.entry(reason).or_default() += 1;
        }
    }
    PartitionSummary {
        topic,
        partition,
        ..summary
    }
}

/// Asks Kafka which topics are compacted, where each partition's log starts, and
/// which offsets the dead-letter topic holds.
async fn explain(
    kafka: &ClientOptions,
    topics: &BTreeSet<String>,
    dlq_topic: Option<&str>,
) -> Result<Explanations> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let mut why = Explanations::default();
    let client = kafka.metadata_client()?;
    let admin: AdminClient<kpipe_kafka::client::QuietContext> = kafka
        .config()
        .create_with_context(Default::default())
        .map_err(|e| kafka.config_error(e))?;
    let metadata = kafka.metadata(&client, None)?;
    for t in metadata
        .topics()
        .iter()
        .filter(|t| topics.contains(t.name()))
    {
        for p in t.partitions() {
            let (low, _) = client.fetch_watermarks(t.name(), p.id(), CONNECT_TIMEOUT)?;
            why.log_start.insert((t.name().to_string(), p.id()), low);
        }
        let options = AdminOptions::new().request_timeout(Some(CONNECT_TIMEOUT));
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(t.name())], &options)
            .await?;
        for resource in described.into_iter().flatten() {
            if resource
                .get("cleanup.policy")
                .and_then(|e| e.value.as_deref())
                .is_some_and(|v| v.contains("compact"))
            {
                why.compacted.insert(t.name().to_string());
            }
        }
    }
    if let Some(dlq) = dlq_topic {
        why.dead_lettered = dead_letters(kafka, dlq)?;
    }
    Ok(why)
}

/// Reads the dead-letter topic to its end and collects the origin of each letter.
fn dead_letters(
    kafka: &ClientOptions,
    dlq: &str,
) -> Result<BTreeMap<(String, i32), BTreeSet<i64>>> {
    let client = kafka.metadata_client()?;
    let partitions = kafka.require_topic(&client, dlq)?;
    let reader: BaseConsumer<kpipe_kafka::client::QuietContext> = kafka
        .config_with_defaults(&[
            ("group.id", "kpipe-lake-check"),
            ("enable.auto.commit", "false"),
        ])
        .create_with_context(Default::default())
        .map_err(|e| kafka.config_error(e))?;
    let mut assignment = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..partitions as i32 {
        let (low, high) = client.fetch_watermarks(dlq, p, CONNECT_TIMEOUT)?;
        remaining += high - low;
        assignment.add_partition_offset(dlq, p, Offset::Beginning)?;
    }
    reader.assign(&assignment)?;
    let mut found: BTreeMap<(String, i32), BTreeSet<i64>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while remaining > 0 && std::time::Instant::now() < deadline {
        let Some(message) = reader.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        remaining -= 1;
        let header = |key: &str| {
            message.headers().and_then(|h| {
                h.iter()
                    .find(|x| x.key == key)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if let (Some(topic), Some(partition), Some(offset)) = (
            header("kpipe.topic"),
            header("kpipe.partition"),
            header("kpipe.offset"),
        ) {
            if let (Ok(partition), Ok(offset)) = (partition.parse(), offset.parse()) {
                found.entry((topic, partition)).or_default().insert(offset);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_duplicates_are_counted_and_explained() {
        let mut why = Explanations::default();
        why.dead_lettered
            .insert(("t".into(), 0), BTreeSet::from([5]));
        why.log_start.insert(("t".into(), 0), 3);
        let mut offsets = vec![0, 1, 4, 6, 6, 7, 10];
        let summary = summarize("t".into(), 0, &mut offsets, &why);
        assert_eq!(
            (summary.first, summary.last, summary.rows),
            (Some(0), Some(10), 7)
        );
        assert_eq!(summary.duplicates, 1);
        assert_eq!(summary.explained.get("truncated"), Some(&1));
        assert_eq!(summary.explained.get("dead-lettered"), Some(&1));
        assert_eq!(
            summary.missing, 3,
            "3 (not below the log start), 8 and 9 are unexplained"
        );
    }
}

//! How a server's persistent query survives a restart or a kill -9: its
//! state is kept by tasks, whose changes go to a changelog topic together
//! with checkpoints of the input offsets they cover; a restart replays each
//! task's changelog partition up to its last checkpoint and resumes the
//! input right after it. A query whose state is keyed as its input is
//! partitioned (by the record key) has a task per input partition, as Kafka
//! Streams does; any other (GROUP BY a value column, which ksqlDB would
//! repartition through a topic) has one task for all partitions.
//!
//! A checkpoint, every commit interval and whenever the input runs dry:
//! 1. flush the sink's records, so no state is durable whose output is not;
//! 2. send the tasks' changed entries to the changelog and flush;
//! 3. send one marker per task, `{"offset": next input offset, "stream_time"}`,
//!    and flush;
//! 4. commit the input offsets under the query's consumer group (for lag
//!    and catch-up; the markers are what a restore trusts).
//!
//! Changes sent after the last marker are ignored on restore, and the input
//! after it is processed again from the state the marker covers, so nothing
//! is lost and nothing counted twice. The sink records of that stretch are
//! written again with the same values: an upsert for a table, a duplicate
//! for a stream (at-least-once within one commit interval), as without
//! broker transactions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kpipe_kafka::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use crate::engine::{Engine, Record};
use crate::live::{Sink, SinkTopic};

/// What makes a session's persistent queries durable (a server's).
#[derive(Debug, Clone)]
pub struct Durability {
    /// ksqlDB's `ksql.service.id`: names the queries' groups and changelogs.
    pub service_id: String,
    /// How often a query checkpoints while it has input to process.
    pub commit_interval: Duration,
}

/// How long a checkpoint may wait for the broker's acknowledgements.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// The changelog key of a checkpoint marker; entry keys start with their kind.
const MARKER: &[u8] = b"m";

/// A query's Kafka Streams application id under ksqlDB's `service_id`, also
/// its consumer group.
pub fn application_id(service_id: &str, query_id: &str) -> String {
    format!("_confluent-ksql-{service_id}query_{query_id}")
}

impl Durability {
    pub fn application_id(&self, query_id: &str) -> String {
        application_id(&self.service_id, query_id)
    }

    pub fn changelog(&self, query_id: &str) -> String {
        format!(
            "{}-Aggregate-Aggregate-Materialize-changelog",
            self.application_id(query_id)
        )
    }
}

/// A query's tasks restored: one engine per input partition (one in all
/// for a stateless query) and where each partition's input resumes.
pub(crate) struct Restored {
    pub(crate) tasks: Vec<Engine>,
    pub(crate) resume: Vec<i64>,
}

/// Query `id`'s tasks, from `started_at` where it first began reading. A
/// query `resuming` after a restart is rebuilt from its changelog (a stateful
/// one) or its committed offsets (a stateless one); its partitions never
/// checkpointed start at `started_at`.
pub(crate) fn restore(
    options: &ClientOptions,
    durability: &Durability,
    engine: &Engine,
    id: &str,
    started_at: &[i64],
    resuming: bool,
) -> Result<Restored> {
    let mut resume = started_at.to_vec();
    if !engine.is_stateful() {
        if resuming {
            let application = durability.application_id(id);
            let committed = committed_offsets(options, &application, engine, id, resume.len())?;
            for (next, committed) in resume.iter_mut().zip(committed) {
                *next = committed.unwrap_or(*next);
            }
        }
        return Ok(Restored {
            tasks: vec![engine.clone()],
            resume,
        });
    }
    let mut task = engine.clone();
    task.track_changes()?;
    let count = match engine.state_by_partition() {
        true => started_at.len().max(1),
        false => 1,
    };
    let mut tasks = vec![task; count];
    if !resuming {
        return Ok(Restored { tasks, resume });
    }
    let changelog = durability.changelog(id);
    let mut restored = 0u64;
    for (partition, task) in tasks.iter_mut().enumerate() {
        let mut staged: Vec<(String, Option<Value>)> = Vec::new();
        read_partition(options, &changelog, partition as i32, |m| {
            let (key, value) = (m.key().unwrap_or_default(), m.payload());
            if key == MARKER {
                let marker: Value = serde_json::from_slice(value.unwrap_or_default())
                    .context("a checkpoint marker that is not JSON")?;
                for (key, value) in staged.drain(..) {
                    task.restore(&key, value)?;
                    restored += 1;
                }
                let offsets = marker["offsets"]
                    .as_object()
                    .ok_or_else(|| anyhow!("a checkpoint marker without offsets"))?;
                for (input, next) in offsets {
                    let at = input.parse::<usize>().ok().filter(|p| *p < resume.len());
                    match (at, next.as_i64()) {
                        (Some(at), Some(next)) => resume[at] = next,
                        _ => bail!("a checkpoint marker with a bad offset ({input}: {next})"),
                    }
                }
                task.set_stream_time(marker["stream_time"].as_i64().unwrap_or(0));
                return Ok(());
            }
            let key =
                String::from_utf8(key.to_vec()).context("a changelog key that is not text")?;
            let value = value
                .map(serde_json::from_slice)
                .transpose()
                .context("a changelog entry that is not JSON")?;
            staged.push((key, value));
            Ok(())
        })
        .with_context(|| format!("restoring {changelog} [{partition}]"))?;
        // Staged changes past the last marker cover input processed again now.
        task.take_changes()?;
    }
    tracing::info!(
        query = id,
        restored,
        ?resume,
        "restored state from {changelog}"
    );
    Ok(Restored { tasks, resume })
}

/// The offsets group `application` committed for the query's source.
fn committed_offsets(
    options: &ClientOptions,
    application: &str,
    engine: &Engine,
    id: &str,
    partitions: usize,
) -> Result<Vec<Option<i64>>> {
    let (from, _) = engine
        .query_topics(id)
        .ok_or_else(|| anyhow!("query {id} is not in its engine"))?;
    let consumer = group_client(options, application)?;
    let mut wanted = TopicPartitionList::new();
    for p in 0..partitions {
        wanted.add_partition(&from, p as i32);
    }
    let committed = consumer.committed_offsets(wanted, CONNECT_TIMEOUT)?;
    Ok((0..partitions)
        .map(|p| {
            match committed
                .find_partition(&from, p as i32)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Some(offset),
                _ => None,
            }
        })
        .collect())
}

fn group_client(options: &ClientOptions, group: &str) -> Result<BaseConsumer<QuietContext>> {
    options
        .config_with_defaults(&[("group.id", group), ("enable.auto.commit", "false")])
        .create_with_context(QuietContext::default())
        .map_err(|e| options.config_error(e))
}

/// Calls `f` with every record of one partition, from its start to its end
/// as of now.
pub(crate) fn read_partition(
    options: &ClientOptions,
    topic: &str,
    partition: i32,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    let consumer: BaseConsumer<QuietContext> = options
        .config_with_defaults(&[
            ("group.id", "kpipe-restore"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
        ])
        .create_with_context(QuietContext::default())
        .map_err(|e| options.config_error(e))?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, CONNECT_TIMEOUT)?;
    if high <= low {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&assignment)?;
    loop {
        match consumer.poll(CONNECT_TIMEOUT) {
            Some(Ok(m)) => {
                f(&m)?;
                if m.offset() + 1 >= high {
                    return Ok(());
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => bail!("{e}"),
            None => bail!("no record for {CONNECT_TIMEOUT:?}"),
        }
    }
}

/// A durable query's sink: its topic, and checkpoints.
pub(crate) struct DurableSink {
    topic: SinkTopic,
    source: String,
    changelog: Option<String>,
    group: BaseConsumer<QuietContext>,
    every: Duration,
}

impl DurableSink {
    pub(crate) fn new(
        options: &ClientOptions,
        durability: &Durability,
        engine: &Engine,
        id: &str,
        topic: SinkTopic,
    ) -> Result<DurableSink> {
        let (source, _) = engine
            .query_topics(id)
            .ok_or_else(|| anyhow!("query {id} is not in its engine"))?;
        Ok(DurableSink {
            topic,
            source,
            changelog: engine.is_stateful().then(|| durability.changelog(id)),
            group: group_client(options, &durability.application_id(id))?,
            every: durability.commit_interval,
        })
    }
}

impl Sink for DurableSink {
    fn emit(&mut self, engine: &Engine, record: &Record) -> Result<bool> {
        self.topic.emit(engine, record)
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }

    fn checkpoint(&mut self, tasks: &mut [Engine], next: &BTreeMap<i32, i64>) -> Result<()> {
        let producer = &mut self.topic.producer;
        producer.flush(FLUSH_TIMEOUT)?;
        if let Some(changelog) = &self.changelog {
            let mut entries = 0;
            for (partition, task) in tasks.iter_mut().enumerate() {
                for (key, value) in task.take_changes()? {
                    entries += 1;
                    let value = value.map(|v| v.to_string());
                    producer.send_at(
                        changelog,
                        Some(partition as i32),
                        Some(key.as_bytes()),
                        value.as_deref().map(str::as_bytes),
                        None,
                        None,
                    )?;
                }
            }
            producer.flush(FLUSH_TIMEOUT)?;
            tracing::debug!(changelog, entries, ?next, "checkpoint");
            // Task i's marker goes to changelog partition i and holds the
            // offsets of the input partitions it reads: its own, or all.
            for (i, task) in tasks.iter().enumerate() {
                let offsets: serde_json::Map<String, Value> = next
                    .iter()
                    .filter(|(&p, _)| tasks.len() == 1 || p as usize == i)
                    .map(|(p, offset)| (p.to_string(), Value::from(*offset)))
                    .collect();
                if offsets.is_empty() {
                    continue;
                }
                let marker = json!({"offsets": offsets, "stream_time": task.stream_time()});
                producer.send_at(
                    changelog,
                    Some(i as i32),
                    Some(MARKER),
                    Some(marker.to_string().as_bytes()),
                    None,
                    None,
                )?;
            }
            producer.flush(FLUSH_TIMEOUT)?;
        }
        let mut offsets = TopicPartitionList::new();
        for (&partition, &offset) in next {
            offsets.add_partition_offset(&self.source, partition, Offset::Offset(offset))?;
        }
        self.group
            .commit(&offsets, CommitMode::Sync)
            .with_context(|| format!("committing {}'s offsets", self.source))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.topic.finish()
    }

    fn written(&self) -> u64 {
        self.topic.written()
    }
}

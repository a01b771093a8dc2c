//! How a server's persistent query survives restarts and kill -9, and how
//! several servers share it, as Kafka Streams does.
//!
//! **Tasks.** A query runs one task per partition of the topic it reads,
//! each with its own state. Every server of a service joins the query's
//! consumer group (its application id); the group assigns the partitions,
//! and a server runs the tasks of the partitions it holds. A query whose
//! state is not keyed as its source is partitioned (GROUP BY a value
//! column) runs in two stages: the first reads the source and forwards each
//! record unchanged to the repartition topic, to the partition of its group
//! (one partition for a table source), with its source partition and offset
//! in a header; the second runs the tasks over the repartition topic. A task
//! skips a record whose origin it has already counted, so a first stage that
//! replays after a crash doubles nothing.
//!
//! **Checkpoints**, every commit interval, whenever the input runs dry, and
//! before partitions are revoked:
//! 1. flush the sink's records, so no state is durable whose output is not;
//! 2. send the tasks' changed entries to the changelog partition of their
//!    input partition, and flush;
//! 3. send each task a marker, `{"offsets": {partition: next offset},
//!    "stream_time", "origins"}`, and flush;
//! 4. commit the input offsets in the group (what a stateless stage resumes
//!    from; the markers are what a stateful task trusts).
//!
//! **Restore.** A task assigned to a server replays its changelog partition
//! up to the last marker and reads its input from the marker's offset;
//! changes after the marker are dropped and their input processed again, so
//! nothing is lost and nothing counted twice. Sink records since the last
//! checkpoint are written again with the same values: an upsert for a
//! table, a duplicate for a stream (at-least-once within one commit
//! interval), as without broker transactions. Revocation checkpoints before
//! the partitions go, so their next owner starts where this server stopped.
//! A server that stalls past the session timeout is not fenced: its late
//! writes may duplicate output (the broker has no transactions).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use kpipe_kafka::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use kpipe_kafka::produce::Producer;
use rdkafka::bindings::rd_kafka_resp_err_t as RDKafkaRespErr;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::engine::{Engine, Record};
use crate::live::{Fed, Sink, Tasks};
use crate::merge::Carried;

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

/// The header of a repartitioned record: `partition:offset` in its source.
const ORIGIN: &str = "kpipe.origin";

/// A query's Kafka Streams application id under ksqlDB's `service_id`, also
/// its consumer group.
pub fn application_id(service_id: &str, query_id: &str) -> String {
    format!("_confluent-ksql-{service_id}query_{query_id}")
}

/// The topic a query's first stage repartitions its source into, by the
/// name ksqlDB gives it.
pub fn repartition_topic(service_id: &str, query_id: &str) -> String {
    format!(
        "{}-Aggregate-GroupBy-repartition",
        application_id(service_id, query_id)
    )
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

    pub fn repartition(&self, query_id: &str) -> String {
        repartition_topic(&self.service_id, query_id)
    }
}

/// A member of a query's consumer group.
pub(crate) type Member = BaseConsumer<MemberContext>;

/// Hands the group's rebalances to the query's thread, which owns the
/// tasks: an assignment waits until the tasks are restored (and learns where
/// their input resumes), a revocation until they are checkpointed.
pub(crate) struct MemberContext {
    quiet: QuietContext,
    processor: Mutex<Option<SyncSender<Fed>>>,
    /// How many rebalances there were, and the partitions held now.
    assignment: Mutex<(u64, Vec<i32>)>,
}

kpipe_kafka::quiet_client_context!(MemberContext, quiet);

impl MemberContext {
    fn ask<T>(&self, request: impl FnOnce(SyncSender<Result<T>>) -> Fed) -> Result<T> {
        let gone = || anyhow!("the query has stopped");
        let processor = self
            .processor
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .ok_or_else(gone)?;
        let (reply, answer) = sync_channel(1);
        processor.send(request(reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    pub(crate) fn assignment(&self) -> (u64, Vec<i32>) {
        self.assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Where rebalances are handed (None: nowhere, the query is stopping).
    pub(crate) fn hand_to(&self, processor: Option<SyncSender<Fed>>) {
        if let Ok(mut slot) = self.processor.lock() {
            *slot = processor;
        }
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let listed: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let held = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let numbers: Vec<i32> = listed.iter().map(|(_, p)| *p).collect();
                let resumed = self.ask(|reply| Fed::Assigned {
                    partitions: numbers.clone(),
                    reply,
                });
                let placed = resumed.and_then(|offsets| {
                    for ((topic, p), offset) in listed.iter().zip(offsets) {
                        partitions.set_partition_offset(topic, *p, Offset::Offset(offset))?;
                    }
                    Ok(consumer.assign(partitions)?)
                });
                match placed {
                    Ok(()) => numbers,
                    Err(e) => {
                        tracing::warn!("cannot take partitions {numbers:?}: {e:#}");
                        let _ = consumer.unassign();
                        Vec::new()
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = self.ask(|reply| Fed::Revoked { reply }) {
                    tracing::debug!("partitions revoked without a checkpoint: {e:#}");
                }
                let _ = consumer.unassign();
                Vec::new()
            }
            other => {
                tracing::warn!("rebalancing failed: {other:?}");
                let _ = consumer.unassign();
                Vec::new()
            }
        };
        if let Ok(mut assignment) = self.assignment.lock() {
            assignment.0 += 1;
            assignment.1 = held;
        }
    }
}

/// Joins query `id`'s consumer group (its stages share it, as Kafka
/// Streams' sub-topologies do).
pub(crate) fn member(
    options: &ClientOptions,
    durability: &Durability,
    id: &str,
) -> Result<Arc<Member>> {
    let group = durability.application_id(id);
    let context = MemberContext {
        quiet: QuietContext::default(),
        processor: Mutex::new(None),
        assignment: Mutex::default(),
    };
    let member = options
        .config_with_defaults(&[
            ("group.id", group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "true"),
            ("auto.offset.reset", "earliest"),
            ("fetch.queue.backoff.ms", "10"),
            // A server killed with -9 hands its tasks on after this long.
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "1000"),
        ])
        .create_with_context(context)
        .map_err(|e| options.config_error(e))?;
    Ok(Arc::new(member))
}

/// Sets what a message of a repartitioned query carries: its bytes for the
/// first stage, its origin for the second.
pub(crate) fn carried(m: &BorrowedMessage<'_>, forwarding: bool) -> Carried {
    if forwarding {
        return Carried {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            origin: None,
        };
    }
    let origin = m.headers().and_then(|headers| {
        let header = headers.iter().find(|h| h.key == ORIGIN)?;
        let text = std::str::from_utf8(header.value?).ok()?;
        let (partition, offset) = text.split_once(':')?;
        Some((partition.parse().ok()?, offset.parse().ok()?))
    });
    Carried {
        origin,
        ..Carried::default()
    }
}

/// Where a task's last checkpoint left it.
#[derive(Debug, Default)]
struct Marker {
    offset: Option<i64>,
    origins: BTreeMap<i32, i64>,
}

/// Restores `task` from changelog partition `partition` up to its last
/// marker, and returns the marker.
fn restore_task(
    options: &ClientOptions,
    changelog: &str,
    partition: i32,
    task: &mut Engine,
) -> Result<(Marker, u64)> {
    let mut marker = Marker::default();
    let mut restored = 0u64;
    let mut staged: Vec<(String, Option<Value>)> = Vec::new();
    read_partition(options, changelog, partition, |m| {
        let (key, value) = (m.key().unwrap_or_default(), m.payload());
        if key == MARKER {
            let saved: Value = serde_json::from_slice(value.unwrap_or_default())
                .context("a checkpoint marker that is not JSON")?;
            for (key, value) in staged.drain(..) {
                task.restore(&key, value)?;
                restored += 1;
            }
            let offset = saved["offsets"][partition.to_string()].as_i64();
            marker.offset = Some(offset.ok_or_else(|| {
                anyhow!("a checkpoint marker without partition {partition}'s offset")
            })?);
            marker.origins = numbered(&saved["origins"])?;
            task.set_stream_time(saved["stream_time"].as_i64().unwrap_or(0));
            return Ok(());
        }
        let key = String::from_utf8(key.to_vec()).context("a changelog key that is not text")?;
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
    Ok((marker, restored))
}

/// `{"partition": offset, …}` as numbers.
fn numbered(map: &Value) -> Result<BTreeMap<i32, i64>> {
    let Some(map) = map.as_object() else {
        return Ok(BTreeMap::new());
    };
    map.iter()
        .map(|(p, offset)| match (p.parse(), offset.as_i64()) {
            (Ok(p), Some(offset)) => Ok((p, offset)),
            _ => bail!("a checkpoint marker with a bad offset ({p}: {offset})"),
        })
        .collect()
}

/// Calls `f` with every record of one partition, from its start to its end
/// as of now.
pub(crate) fn read_partition(
    options: &ClientOptions,
    topic: &str,
    partition: i32,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> Result<()>,
) -> Result<()> {
    let consumer = options.partition_reader("kpipe-restore", &[])?;
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

/// One stage of a durable query: where its output goes, its tasks'
/// changelog, and its place in the group.
pub(crate) struct DurableSink {
    out: Box<dyn Sink + Send>,
    member: Arc<Member>,
    options: ClientOptions,
    /// The topic the tasks read.
    input: String,
    changelog: Option<String>,
    /// Sends the changelog's entries and markers.
    changes: Option<Producer>,
    /// A new task, before any input.
    fresh: Engine,
    /// Where the query first began reading, per input partition.
    started_at: Vec<i64>,
    /// Per partition held: the next input offset as of the last checkpoint.
    positions: BTreeMap<i32, i64>,
    /// Tasks revoked in the last rebalance: kept in case the next gives
    /// their partitions back, when no one else can have run them since.
    suspended: BTreeMap<i32, Engine>,
    /// Per task of a repartitioned input: per source partition, the last
    /// offset counted.
    origins: BTreeMap<i32, BTreeMap<i32, i64>>,
    every: Duration,
    /// Raised once the first assignment's tasks are restored.
    restored: Arc<AtomicBool>,
}

/// What a stage is made of.
pub(crate) struct Stage {
    pub(crate) out: Box<dyn Sink + Send>,
    pub(crate) member: Arc<Member>,
    pub(crate) input: String,
    /// Whether its tasks keep state (else they only resume from offsets).
    pub(crate) stateful: bool,
    pub(crate) started_at: Vec<i64>,
    pub(crate) restored: Arc<AtomicBool>,
}

impl DurableSink {
    pub(crate) fn new(
        options: &ClientOptions,
        durability: &Durability,
        engine: &Engine,
        id: &str,
        stage: Stage,
    ) -> Result<DurableSink> {
        let mut fresh = engine.clone();
        let (changelog, changes) = if stage.stateful {
            fresh.track_changes()?;
            (
                Some(durability.changelog(id)),
                Some(Producer::connect(options)?),
            )
        } else {
            (None, None)
        };
        Ok(DurableSink {
            out: stage.out,
            member: stage.member,
            options: options.clone(),
            input: stage.input,
            changelog,
            changes,
            fresh,
            started_at: stage.started_at,
            positions: BTreeMap::new(),
            suspended: BTreeMap::new(),
            origins: BTreeMap::new(),
            every: durability.commit_interval,
            restored: stage.restored,
        })
    }

    /// The offsets the group committed for the input.
    fn committed(&self, partitions: &[i32]) -> Result<BTreeMap<i32, i64>> {
        let mut wanted = TopicPartitionList::new();
        for &p in partitions {
            wanted.add_partition(&self.input, p);
        }
        let committed = self.member.committed_offsets(wanted, CONNECT_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }
}

impl Sink for DurableSink {
    fn emit(&mut self, engine: &Engine, record: &Record) -> Result<bool> {
        self.out.emit(engine, record)
    }

    fn forwards(&self) -> bool {
        self.out.forwards()
    }

    fn forward(&mut self, engine: &Engine, record: &Record, carried: &Carried) -> Result<()> {
        self.out.forward(engine, record, carried)
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }

    fn admit(&mut self, task: i32, (partition, offset): (i32, i64)) -> bool {
        let counted = self.origins.entry(task).or_default();
        if counted.get(&partition).is_some_and(|&last| offset <= last) {
            return false;
        }
        counted.insert(partition, offset);
        true
    }

    fn checkpoint(&mut self, tasks: &mut Tasks, next: &BTreeMap<i32, i64>) -> Result<()> {
        self.out.flush()?;
        if let (Some(changelog), Some(producer), Tasks::ByPartition(tasks)) =
            (&self.changelog, &mut self.changes, &mut *tasks)
        {
            let mut entries = 0;
            for (&partition, task) in tasks.iter_mut() {
                for (key, value) in task.take_changes()? {
                    entries += 1;
                    let value = value.map(|v| v.to_string());
                    producer.send_at(
                        changelog,
                        Some(partition),
                        Some(key.as_bytes()),
                        value.as_deref().map(str::as_bytes),
                        None,
                        None,
                    )?;
                }
            }
            producer.flush(FLUSH_TIMEOUT)?;
            tracing::debug!(changelog, entries, ?next, "checkpoint");
            for (&partition, &offset) in next {
                let Some(task) = tasks.get(&partition) else {
                    continue;
                };
                let origins: Map<String, Value> = self
                    .origins
                    .get(&partition)
                    .into_iter()
                    .flatten()
                    .map(|(p, offset)| (p.to_string(), Value::from(*offset)))
                    .collect();
                let marker = json!({
                    "offsets": {partition.to_string(): offset},
                    "stream_time": task.stream_time(),
                    "origins": origins,
                });
                producer.send_at(
                    changelog,
                    Some(partition),
                    Some(MARKER),
                    Some(marker.to_string().as_bytes()),
                    None,
                    None,
                )?;
            }
            producer.flush(FLUSH_TIMEOUT)?;
        }
        self.positions.extend(next);
        let mut offsets = TopicPartitionList::new();
        for (&partition, &offset) in next {
            offsets.add_partition_offset(&self.input, partition, Offset::Offset(offset))?;
        }
        if offsets.count() > 0 {
            // A rebalance under way refuses the commit; the next one, or the
            // revocation's checkpoint, carries these offsets too.
            if let Err(e) = self.member.commit(&offsets, CommitMode::Sync) {
                tracing::debug!("committing {}'s offsets: {e}", self.input);
            }
        }
        Ok(())
    }

    fn assigned(&mut self, partitions: &[i32], tasks: &mut Tasks) -> Result<Vec<i64>> {
        let Tasks::ByPartition(tasks) = tasks else {
            bail!("a query with one task for all partitions is not a group member");
        };
        let mut suspended = std::mem::take(&mut self.suspended);
        let committed = match self.changelog {
            None => self.committed(partitions)?,
            Some(_) => BTreeMap::new(),
        };
        let mut offsets = Vec::with_capacity(partitions.len());
        let mut restored = 0u64;
        for &p in partitions {
            let at = if let Some(task) = suspended.remove(&p) {
                tasks.insert(p, task);
                self.positions.get(&p).copied()
            } else {
                let mut task = self.fresh.clone();
                self.origins.remove(&p);
                let at = match &self.changelog {
                    Some(changelog) => {
                        let (marker, entries) =
                            restore_task(&self.options, changelog, p, &mut task)?;
                        restored += entries;
                        self.origins.insert(p, marker.origins);
                        marker.offset
                    }
                    None => committed.get(&p).copied(),
                };
                tasks.insert(p, task);
                at
            };
            let at = at
                .or_else(|| self.started_at.get(p as usize).copied())
                .unwrap_or(0);
            self.positions.insert(p, at);
            offsets.push(at);
        }
        // A first start restores nothing and is not news.
        if restored > 0 {
            tracing::info!(
                input = self.input,
                ?partitions,
                ?offsets,
                restored,
                "took partitions and restored their state"
            );
        } else {
            tracing::debug!(input = self.input, ?partitions, ?offsets, "took partitions");
        }
        self.restored.store(true, Ordering::Release);
        Ok(offsets)
    }

    fn revoked(&mut self, tasks: &mut Tasks) {
        if let Tasks::ByPartition(tasks) = tasks {
            self.suspended = std::mem::take(tasks);
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }

    fn written(&self) -> u64 {
        self.out.written()
    }
}

/// A repartitioning first stage's output: each source record, unchanged, to
/// the partition of its group.
pub(crate) struct Repartitioner {
    pub(crate) producer: Producer,
    pub(crate) topic: String,
    pub(crate) partitions: i32,
}

impl Sink for Repartitioner {
    fn emit(&mut self, _: &Engine, _: &Record) -> Result<bool> {
        bail!("a repartitioning stage forwards its input; it runs no query")
    }

    fn forwards(&self) -> bool {
        true
    }

    fn forward(&mut self, engine: &Engine, record: &Record, carried: &Carried) -> Result<()> {
        let Some(partition) = engine.repartition(record, self.partitions)? else {
            return Ok(());
        };
        let origin = format!("{}:{}", record.partition, record.offset);
        let headers = OwnedHeaders::new().insert(Header {
            key: ORIGIN,
            value: Some(origin.as_bytes()),
        });
        self.producer.send_at(
            &self.topic,
            Some(partition),
            carried.key.as_deref(),
            carried.value.as_deref(),
            Some(&headers),
            Some(record.timestamp),
        )
    }

    fn flush(&mut self) -> Result<()> {
        self.producer.flush(FLUSH_TIMEOUT)
    }

    fn written(&self) -> u64 {
        self.producer.sent()
    }
}

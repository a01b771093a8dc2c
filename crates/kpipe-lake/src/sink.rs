//! The lake sink: a consumer-group member that turns a topic into Parquet files
//! exactly once.
//!
//! Exactly once, because: a file's name is `<topic>+<partition>+<first offset>` of
//! its rows, so writing the same rows again replaces the file instead of adding
//! one; offsets are committed only after every file of a flush (and every
//! dead-lettered message) is durable; after a crash or a rebalance, reading
//! resumes at the committed offset and rewrites the same names. A later batch that
//! starts at a different offset can only cover rows whose earlier files it
//! overwrites, because each day's file is named after that day's first row.
//! Rows buffered for a partition that is revoked are dropped, never written: its
//! new owner reads them again from the committed offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{StreamExt, TryStreamExt};
use kpipe_kafka::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use kpipe_kafka::produce::Producer;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::file::{Codec, PartitionBuffer, PartitionBy, TimeSource};
use crate::store::Lake;

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub topic: String,
    pub group: String,
    pub flush_rows: usize,
    pub flush_bytes: usize,
    pub flush_interval: Duration,
    pub partition_by: PartitionBy,
    pub time: TimeSource,
    pub codec: Codec,
    pub until_end: bool,
    pub dlq_topic: Option<String>,
    /// Create the S3 bucket if it is missing.
    pub create_bucket: bool,
}

/// Running totals, reported after each flush and at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub rows: u64,
    pub files: u64,
    pub bytes: u64,
    pub dead_lettered: u64,
    pub flushes: u64,
}

/// Remembers rebalance events for the main loop, which owns the buffers.
#[derive(Default)]
struct SinkContext {
    quiet: QuietContext,
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.quiet.log(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.quiet.error(error, reason);
    }
}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if let Ok(mut revoked) = self.revoked.lock() {
                revoked.extend(partitions.elements().iter().map(|e| e.partition()));
            }
        }
    }
}

/// Messages that cannot become rows go to the dead-letter topic with the reason
/// in a header (or, without one, are counted and skipped).
struct DeadLetters {
    producer: Option<Producer>,
    topic: Option<String>,
}

impl DeadLetters {
    fn send(&mut self, message: &rdkafka::message::BorrowedMessage<'_>, error: &str) -> Result<()> {
        let (Some(producer), Some(topic)) = (self.producer.as_mut(), self.topic.as_deref()) else {
            tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                "skipping bad message: {error}"
            );
            return Ok(());
        };
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let origin = [
            ("kpipe.error", error.to_string()),
            ("kpipe.topic", message.topic().to_string()),
            ("kpipe.partition", message.partition().to_string()),
            ("kpipe.offset", message.offset().to_string()),
        ];
        for (key, value) in &origin {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        producer.send(
            topic,
            message.key(),
            message.payload().unwrap_or_default(),
            Some(&headers),
        )
    }

    /// Waits until every dead letter so far is acknowledged.
    fn flush(&mut self) -> Result<()> {
        if let Some(producer) = self.producer.as_mut() {
            producer.flush(Duration::from_secs(60))?;
        }
        Ok(())
    }
}

/// Runs the sink until `stop` (then flushes and commits) or, with `until_end`,
/// until the end offsets seen at start are in the lake.
pub fn run(
    kafka: &ClientOptions,
    lake: &Lake,
    options: &SinkOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(&SinkReport),
) -> Result<SinkReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let probe = kafka.metadata_client()?;
    let partitions = kafka.require_topic(&probe, &options.topic)?;
    if options.create_bucket {
        runtime.block_on(lake.ensure_bucket())?;
    }
    let mut dead_letters = DeadLetters {
        producer: None,
        topic: options.dlq_topic.clone(),
    };
    if let Some(dlq) = &options.dlq_topic {
        kafka.require_topic(&probe, dlq)?;
        dead_letters.producer = Some(Producer::connect(kafka)?);
    }
    // Where --until-end stops: the end of every partition as it is now.
    let targets: HashMap<i32, i64> = if options.until_end {
        (0..partitions as i32)
            .map(|p| {
                Ok((
                    p,
                    probe
                        .fetch_watermarks(&options.topic, p, CONNECT_TIMEOUT)?
                        .1,
                ))
            })
            .collect::<Result<_>>()?
    } else {
        HashMap::new()
    };
    let consumer: BaseConsumer<SinkContext> = kafka
        .config_with_defaults(&[
            ("group.id", options.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("fetch.message.max.bytes", "4194304"),
            // librdkafka's default pauses a partition's fetching for 1 s whenever its
            // local queue is full; a fast reader then idles (measured: 2.3x slower).
            ("fetch.queue.backoff.ms", "10"),
            ("queued.max.messages.kbytes", "262144"),
        ])
        .create_with_context(SinkContext::default())
        .map_err(|e| kafka.config_error(e))?;
    consumer.subscribe(&[&options.topic])?;

    let mut buffers: BTreeMap<i32, PartitionBuffer> = BTreeMap::new();
    // Next offset to commit per partition: rows and dead letters both advance it.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut report = SinkReport::default();
    let mut oldest = Instant::now();
    let mut buffered_rows = 0usize;
    let mut buffered_bytes = 0usize;
    loop {
        let message = consumer.poll(Duration::from_millis(100));
        let message_was_none = message.is_none();
        let revoked: Vec<i32> = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .map_err(|_| anyhow!("poisoned"))?,
        );
        for p in revoked {
            if let Some(dropped) = buffers.remove(&p) {
                buffered_rows -= dropped.rows();
                buffered_bytes -= dropped.bytes;
            }
            next.remove(&p);
        }
        let mut finished_partition = false;
        match message {
            Some(Ok(m)) => {
                if next.is_empty() {
                    oldest = Instant::now();
                }
                let p = m.partition();
                let buffer = buffers.entry(p).or_default();
                let before = buffer.bytes;
                let payload = m.payload().unwrap_or_default();
                match buffer.push(
                    payload,
                    m.offset(),
                    m.timestamp().to_millis(),
                    &options.time,
                ) {
                    Ok(()) => buffered_rows += 1,
                    Err(e) => {
                        report.dead_lettered += 1;
                        dead_letters.send(&m, &e.0)?;
                    }
                }
                buffered_bytes += buffer.bytes - before;
                next.insert(p, m.offset() + 1);
                finished_partition = targets.get(&p) == Some(&(m.offset() + 1));
            }
            Some(Err(KafkaError::MessageConsumption(code))) if is_transient(code) => {
                tracing::debug!("transient consumer error: {code}");
            }
            Some(Err(e)) => bail!("consuming {} failed: {e}", options.topic),
            None => {}
        }
        let stopping = stop.load(Ordering::Relaxed);
        // Asking the coordinator costs a round trip: only when idle or a partition just ended.
        let caught_up = options.until_end
            && (message_was_none || finished_partition)
            && reached(&consumer, &next, &targets)?;
        let due = buffered_rows >= options.flush_rows
            || buffered_bytes >= options.flush_bytes
            || (!next.is_empty() && oldest.elapsed() >= options.flush_interval);
        if (due || stopping || caught_up) && !next.is_empty() {
            flush(
                &runtime,
                &consumer,
                lake,
                options,
                &mut buffers,
                &mut next,
                &mut dead_letters,
                &mut report,
            )?;
            buffered_rows = 0;
            buffered_bytes = 0;
            progress(&report);
        }
        if stopping || caught_up {
            break;
        }
    }
    consumer.unsubscribe();
    Ok(report)
}

fn is_rebalance(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::RebalanceInProgress | C::IllegalGeneration | C::UnknownMemberId
    )
}

fn is_transient(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure | C::AllBrokersDown | C::OperationTimedOut | C::NotCoordinator
    )
}

/// With --until-end: every assigned partition's position has reached its target.
fn reached(
    consumer: &BaseConsumer<SinkContext>,
    next: &BTreeMap<i32, i64>,
    targets: &HashMap<i32, i64>,
) -> Result<bool> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(false);
    }
    let committed = consumer.committed(CONNECT_TIMEOUT).ok();
    for e in assignment.elements() {
        let target = targets.get(&e.partition()).copied().unwrap_or(0);
        let done_in_memory = next.get(&e.partition()).is_some_and(|n| *n >= target);
        let done_before = committed
            .as_ref()
            .and_then(|c| c.find_partition(e.topic(), e.partition()))
            .is_some_and(|c| matches!(c.offset(), Offset::Offset(o) if o >= target));
        if !(done_in_memory || done_before || target == 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn flush(
    runtime: &tokio::runtime::Runtime,
    consumer: &BaseConsumer<SinkContext>,
    lake: &Lake,
    options: &SinkOptions,
    buffers: &mut BTreeMap<i32, PartitionBuffer>,
    next: &mut BTreeMap<i32, i64>,
    dead_letters: &mut DeadLetters,
    report: &mut SinkReport,
) -> Result<()> {
    let mut files = Vec::new();
    for (partition, buffer) in std::mem::take(buffers) {
        files.extend(buffer.into_files(
            &options.topic,
            partition,
            options.partition_by,
            options.codec,
        )?);
    }
    let written: Vec<(usize, u64)> = runtime.block_on(async {
        futures_util::stream::iter(files)
            .map(|(name, bytes, rows)| async move {
                let size = bytes.len() as u64;
                lake.put(&name.relative(), bytes).await?;
                Ok::<_, anyhow::Error>((rows, size))
            })
            .buffer_unordered(8)
            .try_collect()
            .await
    })?;
    dead_letters.flush()?;
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in std::mem::take(next) {
        offsets.add_partition_offset(&options.topic, partition, Offset::Offset(offset))?;
    }
    match consumer.commit(&offsets, CommitMode::Sync) {
        Ok(()) => {}
        // The partitions moved to another member, which rewrites the same files.
        Err(KafkaError::ConsumerCommit(code)) if is_rebalance(code) => {
            tracing::info!(
                "offsets not committed ({code}); the partitions' new owner rewrites these files"
            );
        }
        Err(e) => bail!(
            "files are in the lake but committing offsets failed ({e}); a restart rewrites them"
        ),
    }
    report.flushes += 1;
    report.files += written.len() as u64;
    report.rows += written.iter().map(|w| w.0 as u64).sum::<u64>();
    report.bytes += written.iter().map(|w| w.1).sum::<u64>();
    Ok(())
}

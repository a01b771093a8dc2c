//! The lake sink: a consumer-group member that turns a topic into Parquet files
//! exactly once.
//!
//! Exactly once, because: a file's name is `<topic>+<partition>+<first offset>` of
//! its rows, so writing the same rows again replaces the file instead of adding
//! one; offsets are committed only after every file of a flush (and every
//! dead-lettered message) is durable; and before a partition is read, at start
//! and after every rebalance, its files that begin at or past the offset
//! reading starts at are deleted (`discard_unacknowledged`). Those were written
//! by flushes whose commit never happened: the sink was killed, the broker lost
//! the group or refused the commit. Reading again from the committed offset
//! writes their rows anew, perhaps cut at other offsets, so without the delete
//! two files could hold the same row. Rows buffered for a partition that is
//! revoked are dropped, never written: its new owner reads them again from the
//! committed offset.
//!
//! Not covered: a member that lost the group without noticing (a zombie) may
//! still write a file after the new owner deleted it, and offsets reset by hand
//! into the middle of a file leave that file's tail twice. `kpipe lake check`
//! reports both.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use kpipe_kafka::client::{close_consumer, ClientOptions};
use kpipe_kafka::feed::{Feed, MemberContext};
use kpipe_kafka::sink::{commit_written, end_offsets, reached, DeadLetters};
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::file::{Codec, PartitionBy, TimeSource};
use crate::store::Lake;
use crate::workers::{Shared, Workers, Written};

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
    /// Fetch with kpipe's own fetcher where the connection allows (plaintext);
    /// false leaves fetching to librdkafka.
    pub own_fetch: bool,
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

/// Messages read since the last flush began.
struct Pending {
    /// Next offset to commit per partition: rows and dead letters both advance it.
    offsets: BTreeMap<i32, i64>,
    rows: usize,
    bytes: usize,
    since: Instant,
}

/// A flush the workers are writing: committed once every worker has answered.
struct InFlight {
    epoch: u64,
    offsets: BTreeMap<i32, i64>,
    answers: usize,
    written: Written,
}

/// Runs the sink until `stop` (then flushes and commits) or, with `until_end`,
/// until the end offsets seen at start are in the lake.
///
/// The reading thread hands blocks of messages to workers (see `workers`),
/// which parse them and write files; while one flush is being written the next
/// one fills.
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
    let dead_letters = DeadLetters::connect(kafka, &probe, options.dlq_topic.as_deref())?;
    let targets: HashMap<i32, i64> = if options.until_end {
        end_offsets(&probe, &options.topic, partitions)?
    } else {
        HashMap::new()
    };
    let shared = Arc::new(Shared {
        topic: options.topic.clone(),
        lake: lake.clone(),
        runtime: runtime.handle().clone(),
        partition_by: options.partition_by,
        time: options.time.clone(),
        codec: options.codec,
        dead_letters: Mutex::new(dead_letters),
    });
    // A worker per core at most: the reading and fetching threads need some too.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = Arc::new(Workers::start(partitions.min(cores), shared.clone())?);
    let config = kafka.config_with_defaults(&[
        ("group.id", options.group.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        ("fetch.message.max.bytes", "4194304"),
        // librdkafka's default pauses a partition's fetching for 1 s whenever its
        // local queue is full; a fast reader then idles (measured: 2.3x slower).
        ("fetch.queue.backoff.ms", "10"),
        // Prefetch less than librdkafka's 100k messages per partition: the
        // workers queue enough, and the sink stays well under 300 MB.
        ("queued.min.messages", "20000"),
        ("queued.max.messages.kbytes", "65536"),
    ]);
    let mut feed = Feed::start(kafka, &config, &options.topic, options.own_fetch)?;
    // Before a partition leaves, the workers drop its rows and finish any flush
    // that holds them, so its next owner never races a file of ours.
    let revoking = workers.clone();
    let (lake_of_assign, topic, runtime_of_assign) = (
        lake.clone(),
        options.topic.clone(),
        runtime.handle().clone(),
    );
    let context = MemberContext::new(
        &config,
        feed.control(),
        move |partitions| revoking.revoke(partitions),
        move |starts| {
            runtime_of_assign.block_on(discard_unacknowledged(&lake_of_assign, &topic, starts))
        },
    );
    let consumer: BaseConsumer<MemberContext> = config
        .create_with_context(context)
        .map_err(|e| kafka.config_error(e))?;
    consumer.subscribe(&[&options.topic])?;

    let mut pending = Pending {
        offsets: BTreeMap::new(),
        rows: 0,
        bytes: 0,
        since: Instant::now(),
    };
    // Every partition's next offset as polled, for --until-end.
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut in_flight: Option<InFlight> = None;
    let mut next_epoch = 0u64;
    let mut report = SinkReport::default();
    let commit = |flight: InFlight, report: &mut SinkReport| -> Result<()> {
        shared
            .dead_letters
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .flush()?;
        commit_written(&consumer, &options.topic, &flight.offsets)?;
        report.flushes += 1;
        report.files += flight.written.files;
        report.rows += flight.written.rows;
        report.bytes += flight.written.bytes;
        report.dead_lettered += flight.written.dead_lettered;
        Ok(())
    };
    loop {
        let wait = Duration::from_millis(if in_flight.is_some() { 10 } else { 100 });
        let polled = feed.next(&consumer, wait)?;
        let idle = polled.block.is_none();
        for p in polled.revoked {
            pending.offsets.remove(&p);
            positions.remove(&p);
            if let Some(flight) = in_flight.as_mut() {
                flight.offsets.remove(&p);
            }
        }
        let mut finished_partition = false;
        let stopping = stop.load(Ordering::Relaxed);
        let mut blocks: Vec<_> = polled.block.into_iter().collect();
        // Blocks librdkafka's messages are still being copied into join a
        // flush that is about to be made, so a slow partition's few messages
        // never wait for their block to fill.
        let interval_due =
            !pending.offsets.is_empty() && pending.since.elapsed() >= options.flush_interval;
        if stopping || interval_due || options.until_end && idle {
            blocks.extend(feed.drain());
        }
        for block in blocks {
            if pending.offsets.is_empty() {
                pending.since = Instant::now();
            }
            let p = block.partition;
            let before = positions.insert(p, block.next_offset).unwrap_or(-1);
            finished_partition |= targets
                .get(&p)
                .is_some_and(|t| before < *t && block.next_offset >= *t);
            pending.offsets.insert(p, block.next_offset);
            pending.rows += block.messages.len();
            pending.bytes += block.payload_bytes();
            if !block.messages.is_empty() {
                workers.rows(block)?;
            }
        }
        if in_flight.is_some() {
            if let Some(done) = collect(&workers, &mut in_flight, Duration::ZERO)? {
                commit(done, &mut report)?;
                progress(&report);
            }
        }
        // Asking the coordinator costs a round trip: only when idle or a partition just ended.
        let caught_up = options.until_end
            && (idle || finished_partition)
            && reached(&consumer, &positions, &targets)?;
        let due = interval_due
            || pending.rows >= options.flush_rows
            || pending.bytes >= options.flush_bytes;
        if (due || stopping || caught_up) && !pending.offsets.is_empty() {
            // One flush writes while the next fills, never two: commits must come in
            // order, and a second flush's rows would double the memory held.
            while in_flight.is_some() {
                if let Some(done) = collect(&workers, &mut in_flight, Duration::from_secs(1))? {
                    commit(done, &mut report)?;
                    progress(&report);
                }
            }
            workers.flush(next_epoch)?;
            in_flight = Some(InFlight {
                epoch: next_epoch,
                offsets: std::mem::take(&mut pending.offsets),
                answers: 0,
                written: Written::default(),
            });
            next_epoch += 1;
            pending.rows = 0;
            pending.bytes = 0;
        }
        if stopping || caught_up {
            while in_flight.is_some() {
                if let Some(done) = collect(&workers, &mut in_flight, Duration::from_secs(1))? {
                    commit(done, &mut report)?;
                    progress(&report);
                }
            }
            break;
        }
    }
    close_consumer(&consumer);
    Ok(report)
}

/// Deletes the files of each assigned partition that begin at or past the
/// offset its reading starts at: a flush wrote them and its offsets were never
/// committed. Reading again from there writes those rows anew, maybe cut at
/// other offsets, so a file left behind would hold them twice.
async fn discard_unacknowledged(lake: &Lake, topic: &str, starts: &[(i32, i64)]) -> Result<()> {
    let starts: HashMap<i32, i64> = starts.iter().copied().collect();
    let mut discarded = 0;
    for (file, _) in lake.list(Some(topic)).await? {
        if starts
            .get(&file.partition)
            .is_some_and(|s| file.first_offset >= *s)
        {
            lake.remove(&file.relative()).await?;
            discarded += 1;
        }
    }
    if discarded > 0 {
        tracing::info!(
            "deleted {discarded} files written past the committed offsets; they are written again"
        );
    }
    Ok(())
}

/// Gathers the workers' answers to the flush in flight; returns it once all are in.
fn collect(
    workers: &Workers,
    in_flight: &mut Option<InFlight>,
    timeout: Duration,
) -> Result<Option<InFlight>> {
    let Some(flight) = in_flight.as_mut() else {
        return Ok(None);
    };
    while let Some(answer) = workers.next_flushed(timeout)? {
        if answer.epoch != flight.epoch {
            continue;
        }
        let written = answer.result?;
        flight.written.rows += written.rows;
        flight.written.files += written.files;
        flight.written.bytes += written.bytes;
        flight.written.dead_lettered += written.dead_lettered;
        flight.answers += 1;
        if flight.answers == workers.count() {
            return Ok(in_flight.take());
        }
    }
    Ok(None)
}

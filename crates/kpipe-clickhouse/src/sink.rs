//! `kpipe sink clickhouse`: seed 04's "pipeline without the Kafka engine", done
//! right. A consumer-group member that maps each JSON message onto the target
//! table's columns, inserts a batch per partition, and commits offsets only
//! after the insert succeeded.
//!
//! Delivery: when the table has `kafka_partition` and `kafka_offset` columns,
//! exactly once — batches of a partition are inserted in offset order, each
//! insert is atomic, and on every assignment the sink asks the table for the
//! highest offset it holds per partition and skips what is already there (a
//! crash between an insert and its commit therefore duplicates nothing).
//! Without those columns, at least once. Servers that know
//! `insert_deduplication_token` (22.2+) also get a token per batch, so a retried
//! insert after a lost answer is not stored twice. Rows the server rejects are
//! found by splitting the batch, and go to the dead-letter topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kpipe_kafka::client::{close_consumer, ClientOptions, QuietContext};
use kpipe_kafka::sink::{
    commit_written, end_offsets, header_pairs, is_transient, reached, DeadLetters, Origin,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use serde_json::Value;

use crate::client::{ClickHouse, ServerError};
use crate::sql;

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub topic: String,
    /// `db.table` or `table`.
    pub table: String,
    pub group: String,
    pub batch_rows: usize,
    pub batch_interval: Duration,
    pub until_end: bool,
    pub dlq_topic: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub rows: u64,
    pub inserts: u64,
    pub skipped_already_loaded: u64,
    pub dead_lettered: u64,
    pub retries: u64,
}

/// A column of the target table and where its value comes from.
#[derive(Debug, Clone)]
enum Source {
    Field,
    Partition,
    Offset,
    BatchId,
    Group,
    ProcessingTime,
    Topic,
}

#[derive(Debug, Clone)]
struct Column {
    name: String,
    /// `"name":` ready to write.
    json_key: String,
    is_text: bool,
    source: Source,
}

fn columns_of(described: &[Value]) -> Result<Vec<Column>> {
    described
        .iter()
        .filter(|c| !matches!(c["default_type"].as_str(), Some("MATERIALIZED" | "ALIAS")))
        .map(|c| {
            let name = c["name"]
                .as_str()
                .ok_or_else(|| anyhow!("DESCRIBE gave a column without a name"))?;
            let kind = c["type"].as_str().unwrap_or_default();
            let source = match name {
                "kafka_partition" => Source::Partition,
                "kafka_offset" => Source::Offset,
                "batch_id" => Source::BatchId,
                "consumer_group_id" => Source::Group,
                "processing_time" => Source::ProcessingTime,
                "kafka_topic" => Source::Topic,
                _ => Source::Field,
            };
            Ok(Column {
                name: name.to_string(),
                json_key: format!("{}:", Value::String(name.to_string())),
                is_text: kind.contains("String") && !kind.starts_with("Array"),
                source,
            })
        })
        .collect()
}

/// Looks a column up in a message: the top-level field first, then the
/// flattened dotted path (`event_param.user_id`).
fn lookup<'a>(message: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = message.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut current = message.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// Messages of one partition waiting for the next insert.
#[derive(Default)]
struct Batch {
    /// JSONEachRow lines, one per row, and where each ends.
    lines: Vec<u8>,
    ends: Vec<usize>,
    offsets: Vec<i64>,
    /// The original messages, for the dead-letter topic.
    originals: Vec<Original>,
}

struct Original {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
}

impl Batch {
    fn rows(&self) -> usize {
        self.offsets.len()
    }
    fn line_range(&self, i: usize) -> std::ops::Range<usize> {
        (if i == 0 { 0 } else { self.ends[i - 1] })..self.ends[i]
    }
    fn body(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        if range.is_empty() {
            return Vec::new();
        }
        self.lines[self.line_range(range.start).start..self.line_range(range.end - 1).end].to_vec()
    }
}

/// Remembers rebalance events for the main loop. Before partitions leave, it
/// waits until the insert in flight is done, so their next owner never races
/// an insert of ours (and the offsets it reads from the table are final).
struct SinkContext {
    quiet: QuietContext,
    inserter: Arc<Inserter>,
    revoked: Mutex<Vec<i32>>,
    assigned: AtomicBool,
}

kpipe_kafka::quiet_client_context!(SinkContext, quiet);

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                self.inserter.wait_idle();
                if let Ok(mut revoked) = self.revoked.lock() {
                    revoked.extend(partitions.elements().iter().map(|e| e.partition()));
                }
            }
            Rebalance::Assign(_) => self.assigned.store(true, Ordering::SeqCst),
            Rebalance::Error(_) => {}
        }
    }
}

/// Turns messages into JSONEachRow lines with the table's columns (main thread).
struct Converter {
    columns: Vec<Column>,
    topic: String,
    group: String,
}

impl Converter {
    /// Appends the message as a line; on error `out` is left as it was.
    fn row(
        &self,
        payload: &[u8],
        partition: i32,
        offset: i64,
        batch_id: &str,
        now: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let start = out.len();
        let result = self.write_row(payload, partition, offset, batch_id, now, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn write_row(
        &self,
        payload: &[u8],
        partition: i32,
        offset: i64,
        batch_id: &str,
        now: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| format!("message is not valid JSON: {e}"))?;
        let Value::Object(message) = value else {
            return Err("message is not a JSON object".into());
        };
        out.push(b'{');
        let mut first = true;
        for column in &self.columns {
            let field = match column.source {
                Source::Field => match lookup(&message, &column.name) {
                    Some(v) => Some(v),
                    None => continue,
                },
                _ => None,
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(column.json_key.as_bytes());
            // Values are written from where they are, not copied into new JSON values.
            let written = match (&column.source, field) {
                // Objects and arrays land in a String column as their JSON text.
                (_, Some(v @ (Value::Object(_) | Value::Array(_)))) if column.is_text => {
                    serde_json::to_writer(&mut *out, &v.to_string())
                }
                (_, Some(v)) => serde_json::to_writer(&mut *out, v),
                (Source::Partition, None) => serde_json::to_writer(&mut *out, &partition),
                (Source::Offset, None) => serde_json::to_writer(&mut *out, &offset),
                (Source::BatchId, None) => serde_json::to_writer(&mut *out, batch_id),
                (Source::Group, None) => serde_json::to_writer(&mut *out, &self.group),
                (Source::ProcessingTime, None) => serde_json::to_writer(&mut *out, now),
                (Source::Topic, None) => serde_json::to_writer(&mut *out, &self.topic),
                (Source::Field, None) => unreachable!("missing fields were skipped"),
            };
            written.map_err(|e| e.to_string())?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }
}

/// What an insert job did.
#[derive(Debug, Default, Clone, Copy)]
struct Inserted {
    rows: u64,
    inserts: u64,
    dead_lettered: u64,
    retries: u64,
}

/// Inserts batches on its own thread, in the order they were sent, while the
/// main thread reads and converts the next ones. One job runs at a time.
/// One insert job: each partition's batch, inserted in this order.
type Job = Vec<(i32, Batch)>;

struct Inserter {
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
    state: Mutex<InserterState>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct InserterState {
    done: mpsc::Receiver<Result<Inserted>>,
    busy: bool,
    /// A result taken while waiting out a revocation, for the main loop.
    parked: Option<Result<Inserted>>,
}

/// Everything the insert thread needs.
struct Writer {
    ch: ClickHouse,
    table: String,
    topic: String,
    settings: Vec<(&'static str, String)>,
    dedup_tokens: bool,
    dead_letters: Arc<Mutex<DeadLetters>>,
    /// The table's highest offset per partition, when it keeps offsets.
    offsets_query: Option<String>,
}

const ATTEMPTS: u32 = 6;

impl Inserter {
    fn start(writer: Writer) -> Result<Inserter> {
        let (jobs_tx, jobs) = mpsc::sync_channel::<Job>(0);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("clickhouse-insert".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = done_tx.send(Err(e.into()));
                        return;
                    }
                };
                for batches in jobs {
                    let mut inserted = Inserted::default();
                    let result = batches
                        .iter()
                        .try_for_each(|(p, batch)| {
                            writer.insert_range(&runtime, *p, batch, 0..batch.rows(), &mut inserted)
                        })
                        .map(|()| inserted);
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Inserter {
            jobs: Mutex::new(Some(jobs_tx)),
            state: Mutex::new(InserterState {
                done,
                busy: false,
                parked: None,
            }),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands batches to the insert thread; the previous job must be collected.
    fn send(&self, batches: Job) -> Result<()> {
        let jobs = self.jobs.lock().map_err(|_| anyhow!("poisoned"))?;
        let sender = jobs
            .as_ref()
            .ok_or_else(|| anyhow!("the insert thread is gone"))?;
        sender
            .send(batches)
            .map_err(|_| anyhow!("the insert thread stopped unexpectedly"))?;
        self.state.lock().map_err(|_| anyhow!("poisoned"))?.busy = true;
        Ok(())
    }

    /// The job's result, waiting up to `timeout`; None while it still runs.
    fn collect(&self, timeout: Duration) -> Result<Option<Inserted>> {
        let mut state = self.state.lock().map_err(|_| anyhow!("poisoned"))?;
        if let Some(result) = state.parked.take() {
            return result.map(Some);
        }
        if !state.busy {
            return Ok(None);
        }
        match state.done.recv_timeout(timeout) {
            Ok(result) => {
                state.busy = false;
                result.map(Some)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the insert thread stopped unexpectedly")
            }
        }
    }

    /// Blocks until no insert runs, keeping its result for [`Inserter::collect`].
    fn wait_idle(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.busy {
            let result = state
                .done
                .recv()
                .unwrap_or_else(|_| Err(anyhow!("the insert thread stopped unexpectedly")));
            state.parked = Some(result);
            state.busy = false;
        }
    }
}

impl Drop for Inserter {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Writer {
    /// Inserts with retries; a permanent refusal comes back as `Err`.
    ///
    /// An insert whose answer was lost may have landed: before retrying, a table
    /// that keeps offsets is asked whether it holds `last` of `partition` already
    /// (a batch is one block, so it landed whole or not at all).
    fn insert(
        &self,
        runtime: &tokio::runtime::Runtime,
        body: Vec<u8>,
        (partition, last): (i32, i64),
        token: &str,
        inserted: &mut Inserted,
    ) -> Result<Result<(), ServerError>> {
        let mut settings: Vec<(&str, &str)> = self
            .settings
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        if self.dedup_tokens {
            settings.push(("insert_deduplication_token", token));
        }
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            match runtime.block_on(self.ch.insert(&self.table, body.clone(), &settings)) {
                Ok(()) => return Ok(Ok(())),
                Err(e) if e.permanent => return Ok(Err(e)),
                Err(e) if attempt == ATTEMPTS => {
                    bail!("inserting into {} failed {ATTEMPTS} times: {e}", self.table)
                }
                Err(e) => {
                    tracing::warn!(
                        "insert into {} failed ({e}); retrying in {delay:?}",
                        self.table
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                    let landed = self.offsets_query.as_deref().and_then(|sql| {
                        let loaded = runtime.block_on(loaded_offsets(&self.ch, sql)).ok()?;
                        Some(loaded.get(&partition).is_some_and(|max| *max >= last))
                    });
                    if landed == Some(true) {
                        return Ok(Ok(()));
                    }
                    inserted.retries += 1;
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Inserts rows `range` of a partition's batch; rows the server refuses are
    /// found by halving and dead-lettered, the rest inserted in offset order.
    fn insert_range(
        &self,
        runtime: &tokio::runtime::Runtime,
        partition: i32,
        batch: &Batch,
        range: std::ops::Range<usize>,
        inserted: &mut Inserted,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let token = format!(
            "kpipe:{}:{partition}:{}-{}",
            self.topic,
            batch.offsets[range.start],
            batch.offsets[range.end - 1]
        );
        let last = (partition, batch.offsets[range.end - 1]);
        match self.insert(runtime, batch.body(range.clone()), last, &token, inserted)? {
            Ok(()) => {
                inserted.rows += range.len() as u64;
                inserted.inserts += 1;
                Ok(())
            }
            Err(refused) if range.len() == 1 => {
                let i = range.start;
                let original = &batch.originals[i];
                inserted.dead_lettered += 1;
                let mut dead_letters = self.dead_letters.lock().map_err(|_| anyhow!("poisoned"))?;
                dead_letters.send(
                    &Origin {
                        topic: &self.topic,
                        partition,
                        offset: batch.offsets[i],
                        key: original.key.as_deref(),
                        payload: &original.payload,
                        headers: header_pairs(original.headers.as_ref()),
                    },
                    &format!("ClickHouse refused the row: {refused}"),
                )?;
                // Later rows of this partition are about to be inserted: the skip
                // on resume must never pass over an unacknowledged dead letter.
                dead_letters.flush()
            }
            Err(refused) => {
                tracing::debug!("batch refused ({refused}); splitting it to find the bad rows");
                let middle = range.start + range.len() / 2;
                self.insert_range(runtime, partition, batch, range.start..middle, inserted)?;
                self.insert_range(runtime, partition, batch, middle..range.end, inserted)
            }
        }
    }
}

/// The query for the highest offset a table holds per partition, when the
/// table keeps offsets (exactly-once resume and retries).
fn offsets_query(table: &str, columns: &[Column], topic: &str) -> Option<String> {
    let has = |n: &str| columns.iter().any(|c| c.name == n);
    if !(has("kafka_partition") && has("kafka_offset")) {
        return None;
    }
    let filter = if has("kafka_topic") {
        format!(" WHERE kafka_topic = {}", sql::literal(topic))
    } else {
        String::new()
    };
    Some(format!(
        "SELECT toInt32(kafka_partition) AS p, toInt64(max(kafka_offset)) AS o FROM {table}{filter} GROUP BY p"
    ))
}

async fn loaded_offsets(ch: &ClickHouse, query: &str) -> Result<HashMap<i32, i64>> {
    Ok(ch
        .rows(query)
        .await?
        .iter()
        .filter_map(|r| Some((r["p"].as_i64()? as i32, r["o"].as_i64()?)))
        .collect())
}

/// Offsets to commit once the insert in flight is done.
struct InFlight {
    offsets: BTreeMap<i32, i64>,
}

fn account(report: &mut SinkReport, inserted: Inserted) {
    report.rows += inserted.rows;
    report.inserts += inserted.inserts;
    report.dead_lettered += inserted.dead_lettered;
    report.retries += inserted.retries;
}

pub fn run(
    kafka: &ClientOptions,
    ch: &ClickHouse,
    options: &SinkOptions,
    stop: &AtomicBool,
    mut progress: impl FnMut(&SinkReport),
) -> Result<SinkReport> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let table = match options.table.split_once('.') {
        Some((db, t)) => format!("{}.{}", sql::name("database", db)?, sql::name("table", t)?),
        None => sql::name("table", &options.table)?,
    };
    let version = runtime.block_on(ch.version())?;
    let described = runtime
        .block_on(ch.rows(&format!("DESCRIBE TABLE {table}")))
        .map_err(|e| anyhow!("cannot describe {} on {}: {e}", options.table, ch.url()))?;
    let columns = columns_of(&described)?;
    let offsets_query = offsets_query(&table, &columns, &options.topic);
    let probe = kafka.metadata_client()?;
    let partitions = kafka.require_topic(&probe, &options.topic)?;
    let dead_letters = Arc::new(Mutex::new(DeadLetters::connect(
        kafka,
        &probe,
        options.dlq_topic.as_deref(),
    )?));
    let targets = if options.until_end {
        end_offsets(&probe, &options.topic, partitions)?
    } else {
        HashMap::new()
    };
    let settings: Vec<(&'static str, String)> = vec![
        ("input_format_skip_unknown_fields", "1".into()),
        ("date_time_input_format", "best_effort".into()),
        // Every row must fit or be refused: never "allow some errors" on our inserts.
        ("input_format_allow_errors_num", "0".into()),
        ("input_format_allow_errors_ratio", "0".into()),
    ]
    .into_iter()
    // Omitted fields get the column's DEFAULT (ClickHouse 18: the type's default).
    .chain((version >= (19, 12)).then(|| ("input_format_defaults_for_omitted_fields", "1".into())))
    .collect();
    let inserter = Arc::new(Inserter::start(Writer {
        ch: ch.with_own_connections()?,
        table: table.clone(),
        topic: options.topic.clone(),
        settings,
        dedup_tokens: version >= (22, 2),
        dead_letters: dead_letters.clone(),
        offsets_query: offsets_query.clone(),
    })?);
    let consumer: BaseConsumer<SinkContext> = kafka
        .config_with_defaults(&[
            ("group.id", options.group.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("enable.partition.eof", "false"),
            ("fetch.queue.backoff.ms", "10"),
        ])
        .create_with_context(SinkContext {
            quiet: QuietContext::default(),
            inserter: inserter.clone(),
            revoked: Mutex::default(),
            assigned: AtomicBool::new(false),
        })
        .map_err(|e| kafka.config_error(e))?;
    consumer.subscribe(&[&options.topic])?;

    let converter = Converter {
        columns,
        topic: options.topic.clone(),
        group: options.group.clone(),
    };
    let mut report = SinkReport::default();
    let mut loaded: HashMap<i32, i64> = HashMap::new();
    let mut batches: BTreeMap<i32, Batch> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut in_flight: Option<InFlight> = None;
    let mut pending = 0usize;
    let mut oldest = Instant::now();
    let mut batch_ids: HashMap<i32, String> = HashMap::new();
    let mut now = String::new();
    let mut now_at = Instant::now() - Duration::from_secs(1);
    // Commits the insert in flight once its result is in.
    let mut finish = |inserted: Inserted,
                      flight: &mut Option<InFlight>,
                      report: &mut SinkReport|
     -> Result<()> {
        account(report, inserted);
        if let Some(flight) = flight.take() {
            dead_letters
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .flush()?;
            commit_written(&consumer, &options.topic, &flight.offsets)?;
        }
        progress(report);
        Ok(())
    };
    loop {
        let message = consumer.poll(Duration::from_millis(if in_flight.is_some() {
            10
        } else {
            100
        }));
        let idle = message.is_none();
        let revoked: Vec<i32> = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .map_err(|_| anyhow!("poisoned"))?,
        );
        for p in &revoked {
            if let Some(dropped) = batches.remove(p) {
                pending -= dropped.rows();
            }
            next.remove(p);
            positions.remove(p);
            if let Some(flight) = in_flight.as_mut() {
                flight.offsets.remove(p);
            }
        }
        if consumer.context().assigned.swap(false, Ordering::SeqCst) {
            // The insert in flight must land before the table's offsets are read.
            while in_flight.is_some() {
                if let Some(inserted) = inserter.collect(Duration::from_secs(1))? {
                    finish(inserted, &mut in_flight, &mut report)?;
                }
            }
            if let Some(query) = &offsets_query {
                loaded = runtime.block_on(loaded_offsets(ch, query))?;
            }
        }
        let mut finished_partition = false;
        match message {
            Some(Ok(m)) => {
                let (p, offset) = (m.partition(), m.offset());
                if next.is_empty() {
                    oldest = Instant::now();
                }
                next.insert(p, offset + 1);
                positions.insert(p, offset + 1);
                finished_partition = targets.get(&p) == Some(&(offset + 1));
                if loaded.get(&p).is_some_and(|max| offset <= *max) {
                    report.skipped_already_loaded += 1;
                } else {
                    let payload = m.payload().unwrap_or_default();
                    let batch = batches.entry(p).or_default();
                    let batch_id = batch_ids
                        .entry(p)
                        .or_insert_with(|| format!("{}-{p}-{offset}", options.topic));
                    if now_at.elapsed() >= Duration::from_millis(500) {
                        now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
                        now_at = Instant::now();
                    }
                    match converter.row(payload, p, offset, batch_id, &now, &mut batch.lines) {
                        Ok(()) => {
                            batch.ends.push(batch.lines.len());
                            batch.offsets.push(offset);
                            batch.originals.push(Original {
                                key: m.key().map(<[u8]>::to_vec),
                                payload: payload.to_vec(),
                                headers: m.headers().map(|h| h.detach()),
                            });
                            pending += 1;
                        }
                        Err(error) => {
                            report.dead_lettered += 1;
                            dead_letters.lock().map_err(|_| anyhow!("poisoned"))?.send(
                                &Origin {
                                    topic: &options.topic,
                                    partition: p,
                                    offset,
                                    key: m.key(),
                                    payload,
                                    headers: header_pairs(m.headers()),
                                },
                                &error,
                            )?;
                        }
                    }
                }
            }
            Some(Err(KafkaError::MessageConsumption(code))) if is_transient(code) => {
                tracing::debug!("transient consumer error: {code}");
            }
            Some(Err(e)) => bail!("consuming {} failed: {e}", options.topic),
            None => {}
        }
        if in_flight.is_some() {
            if let Some(inserted) = inserter.collect(Duration::ZERO)? {
                finish(inserted, &mut in_flight, &mut report)?;
            }
        }
        let stopping = stop.load(Ordering::Relaxed);
        let caught_up = options.until_end
            && (idle || finished_partition)
            && reached(&consumer, &positions, &targets)?;
        let due = pending >= options.batch_rows
            || (!next.is_empty() && oldest.elapsed() >= options.batch_interval);
        if (due || stopping || caught_up) && !next.is_empty() {
            // One insert runs while the next batch fills; a third waits for it.
            while in_flight.is_some() {
                if let Some(inserted) = inserter.collect(Duration::from_secs(1))? {
                    finish(inserted, &mut in_flight, &mut report)?;
                }
            }
            // Dead letters of parse errors first: resuming skips past their offsets.
            dead_letters
                .lock()
                .map_err(|_| anyhow!("poisoned"))?
                .flush()?;
            inserter.send(std::mem::take(&mut batches).into_iter().collect())?;
            in_flight = Some(InFlight {
                offsets: std::mem::take(&mut next),
            });
            batch_ids.clear();
            pending = 0;
        }
        if stopping || caught_up {
            while in_flight.is_some() {
                if let Some(inserted) = inserter.collect(Duration::from_secs(1))? {
                    finish(inserted, &mut in_flight, &mut report)?;
                }
            }
            break;
        }
    }
    close_consumer(&consumer);
    Ok(report)
}

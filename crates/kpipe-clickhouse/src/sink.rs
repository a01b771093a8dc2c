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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use kpipe_kafka::client::{ClientOptions, QuietContext};
use kpipe_kafka::sink::{commit_written, end_offsets, is_transient, reached, DeadLetters, Origin};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedHeaders};
use rdkafka::ClientContext;
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

#[derive(Default)]
struct SinkContext {
    quiet: QuietContext,
    revoked: Mutex<Vec<i32>>,
    assigned: AtomicBool,
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
        match rebalance {
            Rebalance::Revoke(partitions) => {
                if let Ok(mut revoked) = self.revoked.lock() {
                    revoked.extend(partitions.elements().iter().map(|e| e.partition()));
                }
            }
            Rebalance::Assign(_) => self.assigned.store(true, Ordering::SeqCst),
            Rebalance::Error(_) => {}
        }
    }
}

struct Sink<'a> {
    ch: &'a ClickHouse,
    runtime: &'a tokio::runtime::Runtime,
    options: &'a SinkOptions,
    table: String,
    columns: Vec<Column>,
    settings: Vec<(&'static str, String)>,
    dedup_tokens: bool,
    dead_letters: DeadLetters,
    report: SinkReport,
}

const ATTEMPTS: u32 = 6;

impl Sink<'_> {
    /// The message as a JSONEachRow line with the table's columns.
    fn row(
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
            let value = match column.source {
                Source::Field => match lookup(&message, &column.name) {
                    // Objects and arrays land in a String column as their JSON text.
                    Some(v @ (Value::Object(_) | Value::Array(_))) if column.is_text => {
                        Value::String(v.to_string())
                    }
                    Some(v) => v.clone(),
                    None => continue,
                },
                Source::Partition => Value::from(partition),
                Source::Offset => Value::from(offset),
                Source::BatchId => Value::from(batch_id),
                Source::Group => Value::from(self.options.group.as_str()),
                Source::ProcessingTime => Value::from(now),
                Source::Topic => Value::from(self.options.topic.as_str()),
            };
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(column.json_key.as_bytes());
            serde_json::to_writer(&mut *out, &value).map_err(|e| e.to_string())?;
        }
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    /// Inserts with retries; a permanent refusal comes back as `Err`.
    fn insert(&mut self, body: Vec<u8>, token: &str) -> Result<Result<(), ServerError>> {
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
            match self
                .runtime
                .block_on(self.ch.insert(&self.table, body.clone(), &settings))
            {
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
                    self.report.retries += 1;
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Inserts rows `range` of a partition's batch; rows the server refuses are
    /// found by halving and dead-lettered, the rest inserted in offset order.
    fn insert_range(
        &mut self,
        partition: i32,
        batch: &Batch,
        range: std::ops::Range<usize>,
    ) -> Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let token = format!(
            "kpipe:{}:{partition}:{}-{}",
            self.options.topic,
            batch.offsets[range.start],
            batch.offsets[range.end - 1]
        );
        match self.insert(batch.body(range.clone()), &token)? {
            Ok(()) => {
                self.report.rows += range.len() as u64;
                self.report.inserts += 1;
                Ok(())
            }
            Err(refused) if range.len() == 1 => {
                let i = range.start;
                let original = &batch.originals[i];
                self.report.dead_lettered += 1;
                self.dead_letters.send(
                    &Origin {
                        topic: &self.options.topic,
                        partition,
                        offset: batch.offsets[i],
                        key: original.key.as_deref(),
                        payload: &original.payload,
                        headers: original.headers.as_ref(),
                    },
                    &format!("ClickHouse refused the row: {refused}"),
                )?;
                // Later rows of this partition are about to be inserted: the skip
                // on resume must never pass over an unacknowledged dead letter.
                self.dead_letters.flush()
            }
            Err(refused) => {
                tracing::debug!("batch refused ({refused}); splitting it to find the bad rows");
                let middle = range.start + range.len() / 2;
                self.insert_range(partition, batch, range.start..middle)?;
                self.insert_range(partition, batch, middle..range.end)
            }
        }
    }
}

/// The highest offset the table holds per partition (exactly-once resume).
fn loaded_offsets(
    ch: &ClickHouse,
    runtime: &tokio::runtime::Runtime,
    table: &str,
    columns: &[Column],
    topic: &str,
) -> Result<HashMap<i32, i64>> {
    let has = |n: &str| columns.iter().any(|c| c.name == n);
    if !(has("kafka_partition") && has("kafka_offset")) {
        return Ok(HashMap::new());
    }
    let filter = if has("kafka_topic") {
        format!(" WHERE kafka_topic = {}", sql::literal(topic))
    } else {
        String::new()
    };
    let rows = runtime.block_on(ch.rows(&format!(
        "SELECT toInt32(kafka_partition) AS p, toInt64(max(kafka_offset)) AS o FROM {table}{filter} GROUP BY p"
    )))?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r["p"].as_i64()? as i32, r["o"].as_i64()?)))
        .collect())
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
    let probe = kafka.metadata_client()?;
    let partitions = kafka.require_topic(&probe, &options.topic)?;
    let dead_letters = DeadLetters::connect(kafka, &probe, options.dlq_topic.as_deref())?;
    let targets = if options.until_end {
        end_offsets(&probe, &options.topic, partitions)?
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
            ("fetch.queue.backoff.ms", "10"),
        ])
        .create_with_context(SinkContext::default())
        .map_err(|e| kafka.config_error(e))?;
    consumer.subscribe(&[&options.topic])?;

    let mut sink = Sink {
        ch,
        runtime: &runtime,
        options,
        table: table.clone(),
        columns,
        settings: vec![
            ("input_format_skip_unknown_fields", "1".into()),
            ("date_time_input_format", "best_effort".into()),
            // Every row must fit or be refused: never "allow some errors" on our inserts.
            ("input_format_allow_errors_num", "0".into()),
            ("input_format_allow_errors_ratio", "0".into()),
        ]
        .into_iter()
        // Omitted fields get the column's DEFAULT (ClickHouse 18: the type's default).
        .chain(
            (version >= (19, 12)).then(|| ("input_format_defaults_for_omitted_fields", "1".into())),
        )
        .collect(),
        dedup_tokens: version >= (22, 2),
        dead_letters,
        report: SinkReport::default(),
    };
    let mut loaded: HashMap<i32, i64> = HashMap::new();
    let mut batches: BTreeMap<i32, Batch> = BTreeMap::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut positions: BTreeMap<i32, i64> = BTreeMap::new();
    let mut pending = 0usize;
    let mut oldest = Instant::now();
    let mut batch_ids: HashMap<i32, String> = HashMap::new();
    loop {
        let message = consumer.poll(Duration::from_millis(100));
        let idle = message.is_none();
        if consumer.context().assigned.swap(false, Ordering::SeqCst) {
            loaded = loaded_offsets(ch, &runtime, &table, &sink.columns, &options.topic)?;
        }
        let revoked: Vec<i32> = std::mem::take(
            &mut *consumer
                .context()
                .revoked
                .lock()
                .map_err(|_| anyhow!("poisoned"))?,
        );
        for p in revoked {
            if let Some(dropped) = batches.remove(&p) {
                pending -= dropped.rows();
            }
            next.remove(&p);
            positions.remove(&p);
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
                    sink.report.skipped_already_loaded += 1;
                } else {
                    let payload = m.payload().unwrap_or_default();
                    let batch = batches.entry(p).or_default();
                    let batch_id = batch_ids
                        .entry(p)
                        .or_insert_with(|| format!("{}-{p}-{offset}", options.topic))
                        .clone();
                    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
                    match sink.row(payload, p, offset, &batch_id, &now, &mut batch.lines) {
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
                            // A torn line must not stay in the batch.
                            let keep = batch.ends.last().copied().unwrap_or(0);
                            batch.lines.truncate(keep);
                            sink.report.dead_lettered += 1;
                            sink.dead_letters.send(
                                &Origin {
                                    topic: &options.topic,
                                    partition: p,
                                    offset,
                                    key: m.key(),
                                    payload,
                                    headers: m.headers().map(|h| h.detach()).as_ref(),
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
        let stopping = stop.load(Ordering::Relaxed);
        let caught_up = options.until_end
            && (idle || finished_partition)
            && reached(&consumer, &positions, &targets)?;
        let due = pending >= options.batch_rows
            || (!next.is_empty() && oldest.elapsed() >= options.batch_interval);
        if (due || stopping || caught_up) && !next.is_empty() {
            sink.dead_letters.flush()?;
            for (p, batch) in std::mem::take(&mut batches) {
                sink.insert_range(p, &batch, 0..batch.rows())?;
            }
            commit_written(&consumer, &options.topic, &next)?;
            next.clear();
            batch_ids.clear();
            pending = 0;
            progress(&sink.report);
        }
        if stopping || caught_up {
            break;
        }
    }
    consumer.unsubscribe();
    Ok(sink.report)
}

//! The live runtime: a session runs statements against a Kafka cluster with the
//! same engine the QTT runner feeds in-memory topics.
//!
//! DDL creates topics. CREATE ... AS SELECT and INSERT INTO start persistent
//! queries, each on its own thread with an engine holding only that query: it
//! reads its source from the broker and produces its sink's records. A SELECT
//! runs on the caller's thread: a pull query reads up to the end offsets as of
//! its start (a table keeps each key's latest row), a push query streams rows
//! until its LIMIT, Ctrl-C or, with `until_end`, the end offsets. A pull
//! query is planned by `pull` (key lookups, window bounds, scans).
//!
//! A reader thread merges the source's partitions by timestamp (`merge`, as a
//! Kafka Streams task does) and decodes while the query's thread processes;
//! a session's reader fetches with kpipe's own fetcher where the connection
//! is plaintext (`kpipe_kafka::fetch`; bench/sql.sh: 8.0 → 6.1 CPU s for 5M
//! events).
//! A session's query reads every partition with one engine and commits
//! nothing: it starts from `auto.offset.reset` on each run. A durable
//! session's (`kpipe server`'s) queries are consumer-group members with a
//! task per partition held, checkpointed and restored (see `durable`), and a
//! table sink's view follows its topic for pull queries.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kpipe_kafka::admin::{Admin, IfExists, TopicSpec, TopicSummary};
use kpipe_kafka::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use kpipe_kafka::feed::MessageBlock;
use kpipe_kafka::fetch::{FetchControl, FetchSettings, Fetcher};
use kpipe_kafka::produce::Producer;
use kpipe_kafka::sink::{DeadLetters, Origin};
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::catalog::SourceInfo;
use crate::durable::{self, Durability, DurableSink, Member, Repartitioner, Stage};
use crate::engine::{Engine, Executed, Record, Source};
use crate::eval::Row;
use crate::merge::{merge, Bounds, Carried, Head, Partitions, Polled, Unreadable};
use crate::parser::{parse, ColumnDef, Listing, Select, SourceKind, SqlType, Statement};
use crate::pull::{partition_for, PullSettings, View};
use crate::rest;
use crate::wire::Message;

/// Where a session's results go: the command line prints them as tables.
pub trait Output {
    /// A statement's one-line result ("Stream created.").
    fn message(&mut self, text: &str);
    /// Rows follow in these columns; `streaming` when they arrive over time
    /// (a push query) rather than all at once.
    fn columns(&mut self, columns: &[ColumnDef], streaming: bool);
    fn row(&mut self, values: &[Value]);
    /// How a pull query over a stream ended ("Limit Reached", "Query
    /// Completed"), which ksqlDB's REST answers carry.
    fn final_message(&mut self, _how: &str) {}
    /// The rows are complete.
    fn end(&mut self);
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Persistent and push queries stop at the end offsets as of their start.
    pub until_end: bool,
    /// Records that cannot be read go here (else they are logged), and are counted.
    pub dead_letters: Option<String>,
    /// How long to wait for a partition known to hold more data before
    /// going on without it (Kafka Streams' max.task.idle.ms).
    pub idle: Duration,
    /// Persistent queries checkpoint and restore their state (a server's).
    pub durable: Option<Durability>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            until_end: false,
            dead_letters: None,
            idle: Duration::from_millis(500),
            durable: None,
        }
    }
}

/// What a query did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    /// Records that could not be read or processed (dead-lettered or logged).
    pub skipped: u64,
}

struct Running {
    id: String,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Counts>>,
    /// The topic the query writes.
    sink: String,
    /// A durable query's view of its table sink, for pull queries.
    view: Option<Arc<RwLock<View>>>,
    /// Raised once the query has first restored its tasks' state.
    restored: Arc<AtomicBool>,
    /// Raised once the view holds its topic as it was at the start.
    view_ready: Arc<AtomicBool>,
}

pub struct Session {
    options: ClientOptions,
    settings: Settings,
    engine: Engine,
    properties: BTreeMap<String, String>,
    running: Vec<Running>,
    stop: Arc<AtomicBool>,
    /// Raised to stop the SELECT running now (a shell's Ctrl-C), not the session.
    cancel: Arc<AtomicBool>,
    admin: Admin,
    runtime: tokio::runtime::Runtime,
    /// See [`Session::take_started_at`] and [`Session::resume_next_at`].
    started_at: Option<Vec<i64>>,
    resume_at: Option<Vec<i64>>,
    /// What the last statement did, for a REST entity.
    executed: Option<Executed>,
}

/// ksqlDB accepts the Kafka Streams name of the setting too.
const OFFSET_RESET: [&str; 2] = ["auto.offset.reset", "ksql.streams.auto.offset.reset"];

impl Session {
    pub fn connect(
        options: ClientOptions,
        settings: Settings,
        stop: Arc<AtomicBool>,
    ) -> Result<Session> {
        let admin = Admin::connect(&options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Session {
            options,
            settings,
            engine: Engine::default(),
            properties: BTreeMap::new(),
            running: Vec::new(),
            stop,
            cancel: Arc::new(AtomicBool::new(false)),
            admin,
            runtime,
            started_at: None,
            resume_at: None,
            executed: None,
        })
    }

    /// Runs a script's statements in order; the first error stops it.
    pub fn run(&mut self, sql: &str, out: &mut dyn Output) -> Result<()> {
        for statement in parse(sql)? {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            self.statement(&statement, out)?;
        }
        Ok(())
    }

    /// Waits for the persistent queries (until Ctrl-C, or with `until_end`
    /// until they catch up) and returns what each did.
    pub fn finish(self) -> Result<Vec<(String, Counts)>> {
        let mut done = Vec::new();
        for running in self.running {
            let counts = running
                .handle
                .join()
                .map_err(|_| anyhow!("query {} crashed", running.id))?
                .with_context(|| format!("query {} failed", running.id))?;
            done.push((running.id, counts));
        }
        Ok(done)
    }

    pub fn persistent_queries(&self) -> usize {
        self.running.len()
    }

    /// Runs `f` with `properties` set for it alone, as a REST request's
    /// `streamsProperties` are, and restores the session's own afterwards.
    pub fn with_properties<T>(
        &mut self,
        properties: &[(String, String)],
        f: impl FnOnce(&mut Session) -> T,
    ) -> T {
        let saved: Vec<(String, Option<String>, Option<String>)> = properties
            .iter()
            .map(|(name, _)| {
                let engine = self.engine.property(name).map(String::from);
                (name.clone(), self.properties.get(name).cloned(), engine)
            })
            .collect();
        for (name, value) in properties {
            self.properties.insert(name.clone(), value.clone());
            self.engine.set_property(name, value);
        }
        let result = f(self);
        for (name, session, engine) in saved {
            match session {
                Some(value) => self.properties.insert(name.clone(), value),
                None => self.properties.remove(&name),
            };
            match engine {
                Some(value) => self.engine.set_property(&name, &value),
                None => self.engine.unset_property(&name),
            }
        }
        result
    }

    /// Runs a statement in the engine, remembering what it did.
    fn execute(&mut self, statement: &Statement) -> Result<Executed> {
        let executed = self.engine.execute(statement)?;
        self.executed = Some(executed.clone());
        Ok(executed)
    }

    /// Runs one statement of a `/ksql` request and returns its REST entity
    /// (none for INSERT … VALUES); `sequence` is its place in the command log.
    pub fn rest_entity(
        &mut self,
        statement: &Statement,
        text: &str,
        sequence: i64,
    ) -> Result<Option<Value>> {
        match statement {
            Statement::Show(Listing::Topics) => {
                let topics: Vec<(String, i32)> = self
                    .user_topics()?
                    .map(|t| (t.name, t.partitions as i32))
                    .collect();
                Ok(Some(rest::listing(
                    &self.engine,
                    Listing::Topics,
                    text,
                    &topics,
                    &[],
                )))
            }
            Statement::Show(listing) => {
                let properties: Vec<(String, String)> =
                    self.properties.clone().into_iter().collect();
                Ok(Some(rest::listing(
                    &self.engine,
                    *listing,
                    text,
                    &[],
                    &properties,
                )))
            }
            Statement::Describe { name, .. } => {
                rest::description(&self.engine, name, text).map(Some)
            }
            Statement::Set { .. } | Statement::Unset { .. } => {
                let mut said = Said::default();
                self.statement(statement, &mut said)?;
                Ok(Some(rest::warning(text, &said.0)))
            }
            _ => {
                self.executed = None;
                self.statement(statement, &mut Said::default())?;
                Ok(self.executed.take().and_then(|executed| {
                    rest::command_status(text, statement, &executed, sequence)
                }))
            }
        }
    }

    /// Runs one statement.
    pub fn statement(&mut self, statement: &Statement, out: &mut dyn Output) -> Result<()> {
        match statement {
            Statement::Set { name, value } => {
                if OFFSET_RESET.contains(&name.as_str()) && value != "earliest" && value != "latest"
                {
                    bail!("{name} must be 'earliest' or 'latest', not '{value}'");
                }
                self.properties.insert(name.clone(), value.clone());
                // ksql.* settings (collect_list's limit, the output topic
                // prefix, ...) shape the queries started from now on.
                self.engine.set_property(name, value);
                out.message(&format!(
                    "Successfully changed local property '{name}' to '{value}'. Use the UNSET command to revert your change."
                ));
                Ok(())
            }
            Statement::Unset { name } => {
                self.properties.remove(name);
                out.message(&format!("Successfully unset local property '{name}'."));
                Ok(())
            }
            Statement::Show(listing) => self.show(*listing, out),
            Statement::Describe { name, .. } => {
                let source = self.engine.source(name).ok_or_else(|| {
                    anyhow!("Could not find STREAM/TABLE '{name}' in the Metastore")
                })?;
                describe(&source, out);
                Ok(())
            }
            Statement::CreateSource {
                kind, properties, ..
            } => {
                let Executed::Created { name, .. } = self.execute(statement)? else {
                    unreachable!("CREATE STREAM/TABLE creates a source")
                };
                let source = self.engine.source(&name).expect("just created");
                if let Err(e) = self.ensure_topic(&source.topic, properties, None) {
                    self.engine.execute(&Statement::Drop {
                        kind: *kind,
                        name,
                        if_exists: true,
                        delete_topic: false,
                    })?;
                    return Err(e);
                }
                out.message(match kind {
                    SourceKind::Stream => "Stream created",
                    SourceKind::Table => "Table created",
                });
                Ok(())
            }
            Statement::CreateAs { .. } | Statement::InsertInto { .. } => {
                let Executed::Started { id, .. } = self.execute(statement)? else {
                    unreachable!("CREATE ... AS SELECT starts a query")
                };
                let (from, to) = self.engine.query_topics(&id).expect("just started");
                let properties = match statement {
                    Statement::CreateAs { properties, .. } => properties.as_slice(),
                    _ => &[],
                };
                let started = self
                    .ensure_topic(&to, properties, Some(&from))
                    .and_then(|()| self.start(&id, from, to));
                if let Err(e) = started {
                    self.engine.execute(&Statement::Terminate {
                        query: Some(id.clone()),
                    })?;
                    return Err(e);
                }
                out.message(&format!("Created query with ID {id}"));
                Ok(())
            }
            Statement::Query(select) if select.emit.is_none() => self.pull(select, out),
            Statement::Query(_) => {
                let push = self.prepare_push(statement)?;
                let id = push.id.clone();
                self.cancel.store(false, Ordering::Relaxed);
                let result = push.run(out, self.cancel.clone());
                self.forget(&id)?;
                result
            }
            Statement::Drop {
                name, delete_topic, ..
            } => {
                let Executed::Dropped { topic, .. } = self.execute(statement)? else {
                    unreachable!("DROP drops")
                };
                if let (Some(topic), true) = (&topic, *delete_topic) {
                    self.runtime.block_on(self.admin.delete(topic))?;
                }
                out.message(&match topic {
                    Some(topic) => format!("Source `{name}` (topic: {topic}) was dropped."),
                    None => format!("Source `{name}` does not exist."),
                });
                Ok(())
            }
            Statement::Alter { kind, .. } => {
                self.execute(statement)?;
                out.message(match kind {
                    SourceKind::Stream => "Stream altered.",
                    SourceKind::Table => "Table altered.",
                });
                Ok(())
            }
            Statement::InsertValues { .. } => {
                self.execute(statement)?;
                let mut producer = Producer::connect(&self.options)?;
                for record in self.engine.take_inserted() {
                    let encoded = self.engine.encode_message(&record)?;
                    producer.send_at(
                        &record.topic,
                        None,
                        encoded.key.as_deref(),
                        encoded.value.as_deref(),
                        None,
                        Some(record.timestamp),
                    )?;
                }
                producer.finish(Duration::from_secs(60))?;
                Ok(())
            }
            Statement::Terminate { .. } => {
                let Executed::Terminated { ids } = self.execute(statement)? else {
                    unreachable!("TERMINATE terminates")
                };
                for running in self.running.iter().filter(|r| ids.contains(&r.id)) {
                    running.stop.store(true, Ordering::Relaxed);
                }
                out.message(if ids.len() == 1 {
                    "Query terminated."
                } else {
                    "All queries terminated."
                });
                Ok(())
            }
        }
    }

    /// Creates `topic` when missing: with PARTITIONS (and REPLICAS) from the
    /// statement, else for a query's sink as many partitions as its source.
    fn ensure_topic(
        &self,
        topic: &str,
        properties: &[(String, Value)],
        copy_from: Option<&str>,
    ) -> Result<()> {
        if self.admin.exists(topic)? {
            return Ok(());
        }
        let number = |name: &str| -> Result<Option<i32>> {
            match properties.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| *n > 0)
                    .map(Some)
                    .ok_or_else(|| anyhow!("{name} must be a positive whole number, not {v}")),
            }
        };
        let partitions = match (number("PARTITIONS")?, copy_from) {
            (Some(n), _) => n,
            (None, Some(source)) => {
                let probe = self.options.metadata_client()?;
                self.options.require_topic(&probe, source)? as i32
            }
            (None, None) => return Err(missing_topic(topic)),
        };
        let spec = TopicSpec {
            name: topic.to_string(),
            partitions,
            replication: number("REPLICAS")?.unwrap_or(1),
            configs: BTreeMap::new(),
        };
        self.runtime
            .block_on(self.admin.create(&spec, IfExists::Keep))?;
        Ok(())
    }

    fn start_offset(&self) -> Offset {
        let earliest = OFFSET_RESET
            .iter()
            .rev()
            .find_map(|k| self.properties.get(*k))
            .is_some_and(|v| v == "earliest");
        if earliest {
            Offset::Beginning
        } else {
            Offset::End
        }
    }

    /// Runs persistent query `id` on its own thread until the session stops,
    /// it is terminated, or (with `until_end`) it catches up. A durable
    /// session's query runs as a member of its consumer group, restoring
    /// its tasks' state as they are assigned (see `durable`), and keeps a
    /// view of a table sink for pull queries.
    fn start(&mut self, id: &str, from: String, to: String) -> Result<()> {
        let engine = self.engine.only(id).expect("the query exists");
        let probe = self.options.metadata_client()?;
        let resuming = self.resume_at.is_some();
        let offsets = match self.resume_at.take() {
            Some(offsets) => offsets,
            None => self.resolve(&probe, &from, self.start_offset())?,
        };
        self.started_at = Some(offsets.clone());
        let sink_partitions = self.options.require_topic(&probe, &to)? as i32;
        let durability = self.settings.durable.clone();
        let repartition = durability.as_ref().and_then(|d| {
            let count = engine.repartition_count(offsets.len() as i32)?;
            Some((d.repartition(id), count))
        });
        if let Some(durability) = &durability {
            let tasks = repartition.as_ref().map_or(offsets.len() as i32, |r| r.1);
            let mut internal = Vec::new();
            if engine.is_stateful() {
                internal.push((durability.changelog(id), tasks, "compact"));
            }
            if let Some((topic, count)) = &repartition {
                internal.push((topic.clone(), *count, "delete"));
            }
            for (name, partitions, cleanup) in internal {
                if !resuming && self.admin.exists(&name)? {
                    // A new query of a reused id must not restore an old one's state.
                    self.runtime.block_on(self.admin.delete(&name))?;
                }
                let spec = TopicSpec {
                    name,
                    partitions,
                    replication: 1,
                    configs: BTreeMap::from([("cleanup.policy".into(), cleanup.into())]),
                };
                self.runtime
                    .block_on(self.admin.create(&spec, IfExists::Keep))?;
            }
        }
        let table_sink = self
            .engine
            .queries()
            .into_iter()
            .find(|q| q.id == id)
            .and_then(|q| self.engine.source(&q.sink))
            .is_some_and(|sink| sink.kind == SourceKind::Table);
        let view = (durability.is_some() && table_sink)
            .then(|| Arc::new(RwLock::new(View::new(sink_partitions))));
        let mut options = self.options.clone();
        // ksqlDB's producers partition as Java's do (murmur2), so a key lands
        // where a Java client would put it; a user's -X still wins.
        options
            .overrides
            .insert(0, ("partitioner".into(), "murmur2_random".into()));
        let dead_letters = self.settings.dead_letters.clone();
        let query_stop = Arc::new(AtomicBool::new(false));
        let stops = [self.stop.clone(), query_stop.clone()];
        let restored = Arc::new(AtomicBool::new(durability.is_none()));
        let view_ready = Arc::new(AtomicBool::new(view.is_none()));
        let bounded = self.settings.until_end;
        let idle = self.settings.idle;
        let sink = to.clone();
        let query = id.to_string();
        let (thread_view, thread_restored, thread_view_ready) =
            (view.clone(), restored.clone(), view_ready.clone());
        let handle =
            std::thread::Builder::new()
                .name(id.to_string())
                .spawn(move || -> Result<Counts> {
                    let ended = AtomicBool::new(false);
                    let keep_going = || !ended.load(Ordering::Relaxed) && !stopped(&stops);
                    std::thread::scope(|scope| {
                        let following = thread_view.as_ref().map(|view| {
                            scope.spawn(|| {
                                follow(&options, &engine, &to, view, &thread_view_ready, keep_going)
                            })
                        });
                        let topic = SinkTopic {
                            producer: Producer::connect(&options)?,
                            to: to.clone(),
                            partitions: sink_partitions,
                        };
                        let dead_letters = dead_letters.as_deref();
                        let counts = match &durability {
                            Some(durability) => {
                                let run = DurableRun {
                                    options: &options,
                                    durability,
                                    engine: &engine,
                                    id: &query,
                                    source: &from,
                                    started_at: &offsets,
                                    idle,
                                    dead_letters,
                                    keep_going: &keep_going,
                                };
                                run.stages(topic, repartition, &thread_restored)
                            }
                            None => {
                                let feed = Feed {
                                    topic: from.clone(),
                                    start: Offset::Beginning,
                                    from: Some(offsets.clone()),
                                    bounded,
                                    idle,
                                };
                                let read = |fed, quit: &AtomicBool, rows| {
                                    read_merged(
                                        &options,
                                        &engine,
                                        &feed,
                                        &stops,
                                        quit,
                                        fed,
                                        Some(rows),
                                    )
                                };
                                let mut topic = topic;
                                let counts = drive(
                                    &options,
                                    Tasks::One(engine.clone()),
                                    &from,
                                    read,
                                    dead_letters,
                                    &mut topic,
                                );
                                counts.map(|counts| Counts {
                                    written: topic.written(),
                                    ..counts
                                })
                            }
                        };
                        ended.store(true, Ordering::Relaxed);
                        if let Err(e) = &counts {
                            // A server runs on: say so now, not when it stops.
                            tracing::error!(query, "the query stopped: {e:#}");
                        }
                        if let Some(following) = following {
                            following
                                .join()
                                .map_err(|_| anyhow!("the view of {to} crashed"))??;
                        }
                        counts
                    })
                })?;
        self.running.push(Running {
            id: id.to_string(),
            stop: query_stop,
            handle,
            sink,
            view,
            restored,
            view_ready,
        });
        Ok(())
    }

    /// Whether a query is still restoring its state or filling its view (a
    /// server answers its health check with 503 meanwhile).
    pub fn restoring(&self) -> bool {
        self.running.iter().any(|r| {
            let ready = r.restored.load(Ordering::Acquire) && r.view_ready.load(Ordering::Acquire);
            !ready && !r.handle.is_finished()
        })
    }

    /// The view a running query keeps of `topic`, once it is filled.
    fn view_of(&self, topic: &str) -> Option<Arc<RwLock<View>>> {
        self.running
            .iter()
            .filter(|r| {
                r.sink == topic && !r.stop.load(Ordering::Relaxed) && !r.handle.is_finished()
            })
            .filter(|r| r.view_ready.load(Ordering::Acquire))
            .find_map(|r| r.view.clone())
    }

    /// A pull query: planned as ksqlDB plans it, then answered from the
    /// topic as it is now (to its end offsets): a table's latest row per key
    /// and window, or a stream's records.
    fn pull(&mut self, select: &Select, out: &mut dyn Output) -> Result<()> {
        let mut settings = PullSettings::default();
        for (name, value) in &self.properties {
            settings.set(name, &Value::from(value.as_str()));
        }
        let pull = self.engine.plan_pull(select, settings)?;
        out.columns(pull.columns(), false);
        let pulled = if pull.reads_table() {
            // A running query's view answers at once; else the topic is read.
            match self.view_of(pull.topic()) {
                Some(view) => {
                    let view = view
                        .read()
                        .map_err(|_| anyhow!("the view of {} was poisoned", pull.topic()))?;
                    pull.from_table(&view)?
                }
                None => pull.from_table(&read_view(&self.options, &self.engine, pull.topic())?)?,
            }
        } else {
            let (_, mut records) = self.read_to_end(pull.topic())?;
            records.sort_by_key(|r| (r.partition, r.offset));
            pull.from_stream(&records)?
        };
        for row in &pulled.rows {
            out.row(row);
        }
        if let Some(how) = pulled.final_message {
            out.final_message(how);
        }
        out.end();
        Ok(())
    }

    /// A topic's partition count and its records, from the beginning to the
    /// end offsets as of now (records that cannot be read are logged).
    fn read_to_end(&self, topic: &str) -> Result<(i32, Vec<Record>)> {
        let probe = self.options.metadata_client()?;
        let partitions = self.options.require_topic(&probe, topic)? as i32;
        let feed = Feed {
            topic: topic.to_string(),
            start: Offset::Beginning,
            from: None,
            bounded: true,
            idle: self.settings.idle,
        };
        self.cancel.store(false, Ordering::Relaxed);
        let stops = [self.stop.clone(), self.cancel.clone()];
        let quit = AtomicBool::new(false);
        let (fed, received) = std::sync::mpsc::sync_channel::<Fed>(4);
        let mut records = Vec::new();
        std::thread::scope(|scope| -> Result<()> {
            let reader = scope.spawn(|| {
                read_merged(&self.options, &self.engine, &feed, &stops, &quit, fed, None)
            });
            let batches = received.iter().filter_map(|fed| match fed {
                Fed::Batch(batch) => Some(batch),
                _ => None,
            });
            for head in batches.flatten() {
                match head {
                    Head::Record(record) | Head::Carried(record, _) => records.push(*record),
                    Head::Decoded(_) => unreachable!("read without rows to decode into"),
                    Head::Bad(bad) => tracing::warn!(
                        partition = bad.partition,
                        offset = bad.offset,
                        "skipping a record: {}",
                        bad.error
                    ),
                }
            }
            reader
                .join()
                .map_err(|_| anyhow!("the reader of {topic} crashed"))?
        })?;
        Ok((partitions, records))
    }

    /// The cluster's topics but its internal ones (`__consumer_offsets`, …).
    fn user_topics(&self) -> Result<impl Iterator<Item = TopicSummary>> {
        Ok(self
            .admin
            .list()?
            .into_iter()
            .filter(|t| !t.name.starts_with("__")))
    }

    /// Each partition's offset that `start` (earliest or latest) means now.
    fn resolve(
        &self,
        probe: &BaseConsumer<QuietContext>,
        topic: &str,
        start: Offset,
    ) -> Result<Vec<i64>> {
        let partitions = self.options.require_topic(probe, topic)? as i32;
        (0..partitions)
            .map(|p| {
                let (low, high) = probe.fetch_watermarks(topic, p, CONNECT_TIMEOUT)?;
                Ok(if start == Offset::Beginning {
                    low
                } else {
                    high
                })
            })
            .collect()
    }

    /// Where the persistent query started last began reading, per partition:
    /// stored with its statement, it lets a restart recompute the same state.
    pub fn take_started_at(&mut self) -> Option<Vec<i64>> {
        self.started_at.take()
    }

    /// Makes the next persistent query begin at these offsets instead of
    /// `auto.offset.reset` (a restarted server resuming a stored query).
    pub fn resume_next_at(&mut self, offsets: Vec<i64>) {
        self.resume_at = Some(offsets);
    }

    /// Registers a push query (the engine checks it) and makes it ready to run
    /// apart from the session; once it has run, [`Session::forget`] it.
    pub fn prepare_push(&mut self, statement: &Statement) -> Result<Push> {
        let Statement::Query(select) = statement else {
            bail!("a push query must be a SELECT");
        };
        let Executed::Transient { id, .. } = self.engine.execute(statement)? else {
            unreachable!("SELECT registers a transient query")
        };
        let from = self
            .engine
            .source(&select.from)
            .expect("the query's source exists");
        Ok(Push {
            engine: self.engine.only(&id).expect("the query exists"),
            columns: self.engine.shown_columns(&id),
            feed: Feed {
                topic: from.topic.clone(),
                start: self.start_offset(),
                from: None,
                bounded: self.settings.until_end,
                idle: self.settings.idle,
            },
            limit: select.limit.unwrap_or(u64::MAX),
            options: self.options.clone(),
            stop: self.stop.clone(),
            dead_letters: self.settings.dead_letters.clone(),
            id,
        })
    }

    /// Terminates every query and drops every source, as ksqlDB's
    /// `/ksql/terminate` ends a cluster (the topics stay).
    pub fn terminate_all(&mut self) -> Result<()> {
        if let Executed::Terminated { ids } =
            self.engine.execute(&Statement::Terminate { query: None })?
        {
            for running in self.running.iter().filter(|r| ids.contains(&r.id)) {
                running.stop.store(true, Ordering::Relaxed);
            }
        }
        for source in self.engine.sources() {
            self.engine.execute(&Statement::Drop {
                kind: source.kind,
                name: source.name,
                if_exists: true,
                delete_topic: false,
            })?;
        }
        Ok(())
    }

    /// Drops a finished push query from the engine.
    pub fn forget(&mut self, query_id: &str) -> Result<()> {
        self.engine.execute(&Statement::Terminate {
            query: Some(query_id.to_string()),
        })?;
        Ok(())
    }

    fn show(&self, listing: Listing, out: &mut dyn Output) -> Result<()> {
        let text = |name: &str| ColumnDef {
            name: name.to_string(),
            ty: SqlType::String,
            key: false,
        };
        let rows: Vec<Vec<Value>> = match listing {
            Listing::Streams | Listing::Tables => {
                let kind = if listing == Listing::Streams {
                    SourceKind::Stream
                } else {
                    SourceKind::Table
                };
                let header = [
                    if kind == SourceKind::Stream {
                        "Stream Name"
                    } else {
                        "Table Name"
                    },
                    "Kafka Topic",
                    "Key Format",
                    "Value Format",
                    "Windowed",
                ];
                out.columns(&header.map(text), false);
                self.engine
                    .sources()
                    .into_iter()
                    .filter(|s| s.kind == kind)
                    .map(|s| {
                        vec![
                            Value::from(s.name),
                            Value::from(s.topic),
                            Value::from(s.key_format),
                            Value::from(s.value_format),
                            Value::from(s.window.is_some()),
                        ]
                    })
                    .collect()
            }
            Listing::Topics => {
                out.columns(
                    &["Kafka Topic", "Partitions", "Partition Replicas"].map(text),
                    false,
                );
                self.user_topics()?
                    .map(|t| {
                        vec![
                            Value::from(t.name),
                            Value::from(t.partitions),
                            Value::from(t.replication),
                        ]
                    })
                    .collect()
            }
            Listing::Queries => {
                out.columns(
                    &["Query ID", "Status", "Sink Name", "Source Name"].map(text),
                    false,
                );
                self.engine
                    .queries()
                    .into_iter()
                    .filter(|q| !q.transient)
                    .map(|q| {
                        let running = self.running.iter().any(|r| {
                            r.id == q.id
                                && !r.handle.is_finished()
                                && !r.stop.load(Ordering::Relaxed)
                        });
                        vec![
                            Value::from(q.id),
                            Value::from(if running { "RUNNING" } else { "DONE" }),
                            Value::from(q.sink),
                            Value::from(q.from),
                        ]
                    })
                    .collect()
            }
            Listing::Properties => {
                out.columns(&["Property", "Value"].map(text), false);
                self.properties
                    .iter()
                    .map(|(k, v)| vec![Value::from(k.as_str()), Value::from(v.as_str())])
                    .collect()
            }
        };
        for row in &rows {
            out.row(row);
        }
        out.end();
        Ok(())
    }
}

/// Keeps what a statement said, for an entity's message.
#[derive(Default)]
struct Said(String);

impl Output for Said {
    fn message(&mut self, text: &str) {
        self.0 = text.to_string();
    }
    fn columns(&mut self, _: &[ColumnDef], _: bool) {}
    fn row(&mut self, _: &[Value]) {}
    fn end(&mut self) {}
}

/// A push query ready to stream rows, on whatever thread runs it.
pub struct Push {
    id: String,
    engine: Engine,
    columns: Vec<ColumnDef>,
    feed: Feed,
    limit: u64,
    options: ClientOptions,
    /// The session's stop: a push query ends with its session.
    stop: Arc<AtomicBool>,
    dead_letters: Option<String>,
}

impl Push {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn columns(&self) -> &[ColumnDef] {
        &self.columns
    }

    /// Streams rows into `out` until LIMIT, `cancel`, the session's stop or
    /// (with `until_end`) the end offsets.
    pub fn run(self, out: &mut dyn Output, cancel: Arc<AtomicBool>) -> Result<()> {
        out.columns(&self.columns, true);
        let stops = [self.stop, cancel];
        let mut rows = 0u64;
        if self.limit > 0 {
            let mut sink = |engine: &Engine, record: &Record| {
                if !record.value.is_null() {
                    out.row(&engine.display_row(&self.id, record));
                    rows += 1;
                }
                Ok(rows < self.limit)
            };
            let (options, engine, feed) = (&self.options, &self.engine, &self.feed);
            let read = |fed, quit: &AtomicBool, rows| {
                read_merged(options, engine, feed, &stops, quit, fed, Some(rows))
            };
            drive(
                options,
                Tasks::One(engine.clone()),
                &feed.topic,
                read,
                self.dead_letters.as_deref(),
                &mut sink,
            )?;
        }
        out.end();
        Ok(())
    }
}

/// A persistent query's sink topic.
pub(crate) struct SinkTopic {
    pub(crate) producer: Producer,
    pub(crate) to: String,
    pub(crate) partitions: i32,
}

impl Sink for SinkTopic {
    fn emit(&mut self, engine: &Engine, record: &Record) -> Result<bool> {
        let encoded = engine.encode_message(record)?;
        // Placed by the key alone (a windowed key too, as Kafka Streams'
        // WindowedStreamPartitioner does, murmur2 otherwise), so a pull finds
        // every window of a key in the partition it asks. Only a windowed
        // key is encoded again, without its window.
        let key = match record.window {
            None => encoded.key.clone(),
            Some(_) => engine.key_bytes(&self.to, &record.key)?,
        };
        let partition = key.as_ref().map(|k| partition_for(k, self.partitions));
        self.producer.send_at(
            &self.to,
            partition,
            encoded.key.as_deref(),
            encoded.value.as_deref(),
            None,
            Some(record.timestamp),
        )?;
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        self.producer.flush(durable::FLUSH_TIMEOUT)
    }

    fn written(&self) -> u64 {
        self.producer.sent()
    }
}

/// A table's view as its topic holds it now: each key's (and window's)
/// latest row. Records that cannot be read are left out.
fn read_view(options: &ClientOptions, engine: &Engine, topic: &str) -> Result<View> {
    let probe = options.metadata_client()?;
    let partitions = options.require_topic(&probe, topic)? as i32;
    let view = RwLock::new(View::new(partitions));
    let caught_up = AtomicBool::new(false);
    follow(options, engine, topic, &view, &caught_up, || {
        !caught_up.load(Ordering::Acquire)
    })?;
    view.into_inner()
        .map_err(|_| anyhow!("the view of {topic} was poisoned"))
}

/// Keeps `view` as table `topic` is: reads it from its start, raises
/// `caught_up` at its end offsets as of then, and follows it while
/// `keep_going`. A view follows the topic rather than its own query's
/// output, so every server of a service answers pulls on every key,
/// whichever holds the key's task.
fn follow(
    options: &ClientOptions,
    engine: &Engine,
    topic: &str,
    view: &RwLock<View>,
    caught_up: &AtomicBool,
    keep_going: impl Fn() -> bool,
) -> Result<()> {
    let consumer = options.partition_reader("kpipe-view", &[("fetch.wait.max.ms", "50")])?;
    let partitions = options.require_topic(&consumer, topic)? as i32;
    let mut behind = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, CONNECT_TIMEOUT)?;
        if high > low {
            behind.insert(p, high);
        }
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    caught_up.store(behind.is_empty(), Ordering::Release);
    while keep_going() {
        let reached = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Head::Record(mut record) = read(engine, topic, &m) {
                    if let Some(key) = engine.key_bytes(topic, &record.key)? {
                        record.partition = m.partition();
                        view.write()
                            .map_err(|_| anyhow!("the view of {topic} was poisoned"))?
                            .apply(key, *record);
                    }
                }
                behind
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() + 1 >= end)
                    .then_some(m.partition())
            }
            Some(Err(KafkaError::PartitionEOF(p))) => Some(p),
            Some(Err(e)) => {
                tracing::warn!("reading {topic}: {e}");
                None
            }
            None => None,
        };
        if let Some(p) = reached {
            if behind.remove(&p).is_some() && behind.is_empty() {
                caught_up.store(true, Ordering::Release);
            }
        }
    }
    Ok(())
}

/// ksqlDB's refusal of a CREATE over a topic that does not exist, without
/// the PARTITIONS to create it.
pub(crate) fn missing_topic(topic: &str) -> anyhow::Error {
    anyhow!("Topic '{topic}' does not exist. If you want to create a new topic for the stream/table please re-run the statement providing the required 'PARTITIONS' configuration in the WITH clause (and optionally 'REPLICAS').")
}

fn describe(source: &SourceInfo, out: &mut dyn Output) {
    let text = |name: &str| ColumnDef {
        name: name.to_string(),
        ty: SqlType::String,
        key: false,
    };
    out.columns(&["Field", "Type"].map(text), false);
    for column in &source.columns {
        let ty = match (column.key, source.kind) {
            (true, SourceKind::Table) => format!("{} (primary key)", column.ty),
            (true, SourceKind::Stream) => format!("{} (key)", column.ty),
            (false, _) => column.ty.to_string(),
        };
        out.row(&[Value::from(column.name.as_str()), Value::from(ty)]);
    }
    out.end();
}

/// Where a query reads.
struct Feed {
    topic: String,
    start: Offset,
    /// Exact offsets per partition, instead of `start` for every one.
    from: Option<Vec<i64>>,
    /// Stop at the end offsets as of the start.
    bounded: bool,
    idle: Duration,
}

fn read(engine: &Engine, topic: &str, m: &BorrowedMessage<'_>) -> Head {
    decode(
        engine,
        &Message {
            topic,
            key: m.key(),
            value: m.payload(),
            timestamp: m.timestamp().to_millis().unwrap_or(0),
            partition: m.partition(),
            offset: m.offset(),
        },
    )
}

fn decode(engine: &Engine, message: &Message<'_>) -> Head {
    match engine.decode_message(message) {
        Ok(record) => Head::Record(Box::new(record)),
        Err(e) => Head::Bad(Box::new(Unreadable {
            error: format!("{e:#}"),
            key: message.key.map(<[u8]>::to_vec),
            payload: message.value.unwrap_or_default().to_vec(),
            partition: message.partition,
            offset: message.offset,
        })),
    }
}

/// Where a running query's records go.
pub(crate) trait Sink {
    /// Takes one record the query wrote; false stops the query.
    fn emit(&mut self, engine: &Engine, record: &Record) -> Result<bool>;
    /// Whether the sink takes the input as read instead of the query's
    /// output (a repartitioning stage): then `forward` gets each record.
    fn forwards(&self) -> bool {
        false
    }
    fn forward(&mut self, _engine: &Engine, _record: &Record, _carried: &Carried) -> Result<()> {
        bail!("this sink takes a query's output, not its input")
    }
    /// How often to checkpoint while input flows (None: never).
    fn every(&self) -> Option<Duration> {
        None
    }
    /// Whether task `task` has yet to count a repartitioned record from
    /// `origin` (source partition, offset).
    fn admit(&mut self, _task: i32, _origin: (i32, i64)) -> bool {
        true
    }
    /// Makes the query's output and state so far durable; `next` holds, per
    /// input partition read since the last checkpoint, its next offset.
    fn checkpoint(&mut self, _tasks: &mut Tasks, _next: &BTreeMap<i32, i64>) -> Result<()> {
        Ok(())
    }
    /// The group gave these partitions: set up their tasks and say where
    /// each partition's input resumes.
    fn assigned(&mut self, _partitions: &[i32], _tasks: &mut Tasks) -> Result<Vec<i64>> {
        bail!("only a durable query is a group member")
    }
    /// The group took every partition back (after a checkpoint).
    fn revoked(&mut self, _tasks: &mut Tasks) {}
    /// Sends what is queued and waits for the broker's acknowledgement (also
    /// when the query stops).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// Records written so far.
    fn written(&self) -> u64 {
        0
    }
}

impl<F: FnMut(&Engine, &Record) -> Result<bool>> Sink for F {
    fn emit(&mut self, engine: &Engine, record: &Record) -> Result<bool> {
        self(engine, record)
    }
}

/// What a query's reader hands its processing thread.
pub(crate) enum Fed {
    Batch(Vec<Head>),
    /// The group assigned partitions: their tasks must be ready, and the
    /// reply says where each one's input resumes.
    Assigned {
        partitions: Vec<i32>,
        reply: SyncSender<Result<Vec<i64>>>,
    },
    /// The group revokes the partitions: checkpoint, then reply.
    Revoked {
        reply: SyncSender<Result<()>>,
    },
}

/// A query's engines.
pub(crate) enum Tasks {
    /// One engine reads every partition (a session's query).
    One(Engine),
    /// An engine per partition held (a server's query, see `durable`).
    ByPartition(BTreeMap<i32, Engine>),
}

impl Tasks {
    fn get_mut(&mut self, partition: i32) -> Option<&mut Engine> {
        match self {
            Tasks::One(engine) => Some(engine),
            Tasks::ByPartition(tasks) => tasks.get_mut(&partition),
        }
    }
}

/// Hands a rebalance's outcome to the member waiting for it; a failure stops
/// the query too.
fn answer<T>(reply: SyncSender<Result<T>>, outcome: Result<T>) -> Result<()> {
    let failed = outcome.as_ref().err().map(|e| anyhow!("{e:#}"));
    let _ = reply.send(outcome);
    failed.map_or(Ok(()), Err)
}

/// How long input may pause before a query checkpoints what it has: a
/// caught-up query's offsets show so soon after its last record.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(100);

/// Feeds a query's tasks from `read` (a reader thread that polls, merges
/// partitions by timestamp and decodes) and hands every record they write to
/// `sink`; this thread runs the query, so reading and processing overlap.
/// Records of partitions without a task (revoked meanwhile) are left to
/// their next owner.
fn drive(
    options: &ClientOptions,
    mut tasks: Tasks,
    topic: &str,
    read: impl FnOnce(SyncSender<Fed>, &AtomicBool, Receiver<Vec<Row>>) -> Result<()> + Send,
    dead_letter_topic: Option<&str>,
    sink: &mut dyn Sink,
) -> Result<Counts> {
    let probe = options.metadata_client()?;
    let mut dead_letters = DeadLetters::connect(options, &probe, dead_letter_topic)?;
    let quit = AtomicBool::new(false);
    let mut counts = Counts::default();
    let every = sink.every();
    // Per partition read since the last checkpoint: its next offset.
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut checkpointed = Instant::now();
    let processed = std::thread::scope(|scope| -> Result<()> {
        let (fed, received) = std::sync::mpsc::sync_channel::<Fed>(4);
        // Rows the reader decoded, going back to it to be decoded into again.
        let (give_back, rows_back) = std::sync::mpsc::channel::<Vec<Row>>();
        let mut used_rows = Vec::new();
        let quit = &quit;
        let reader = std::thread::Builder::new()
            .name("sql-reader".into())
            .spawn_scoped(scope, move || read(fed, quit, rows_back))?;
        let ran = (|| -> Result<()> {
            loop {
                let fed = match every {
                    None => match received.recv() {
                        Ok(fed) => fed,
                        Err(_) => return Ok(()),
                    },
                    Some(every) => {
                        let due = every.saturating_sub(checkpointed.elapsed());
                        match received.recv_timeout(due.min(IDLE_CHECKPOINT)) {
                            Ok(fed) => fed,
                            Err(RecvTimeoutError::Timeout) => {
                                if !next.is_empty() {
                                    sink.checkpoint(&mut tasks, &next)?;
                                    next.clear();
                                }
                                checkpointed = Instant::now();
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => return Ok(()),
                        }
                    }
                };
                let batch = match fed {
                    Fed::Batch(batch) => batch,
                    Fed::Assigned { partitions, reply } => {
                        answer(reply, sink.assigned(&partitions, &mut tasks))?;
                        continue;
                    }
                    Fed::Revoked { reply } => {
                        let saved = sink.checkpoint(&mut tasks, &next);
                        next.clear();
                        checkpointed = Instant::now();
                        sink.revoked(&mut tasks);
                        answer(reply, saved)?;
                        continue;
                    }
                };
                if !used_rows.is_empty() {
                    // A reader that does not decode ahead has gone: no matter.
                    let _ = give_back.send(std::mem::take(&mut used_rows));
                }
                for head in batch {
                    let (partition, offset) = (head.partition(), head.offset());
                    let Some(task) = tasks.get_mut(partition) else {
                        continue;
                    };
                    counts.read += 1;
                    next.insert(partition, offset + 1);
                    let outcome = match head {
                        Head::Bad(bad) => {
                            counts.skipped += 1;
                            let origin = Origin {
                                topic,
                                partition,
                                offset,
                                key: bad.key.as_deref(),
                                payload: &bad.payload,
                                headers: Vec::new(),
                            };
                            dead_letters.send(&origin, &bad.error)?;
                            continue;
                        }
                        // Rows are decoded ahead only by read_merged, whose
                        // records all come from `topic`.
                        Head::Decoded(decoded) => {
                            let outcome = task.process_row(topic, &decoded);
                            used_rows.push(decoded.row);
                            outcome
                        }
                        Head::Record(record) => task.process(&record),
                        Head::Carried(record, carried) => {
                            if carried
                                .origin
                                .is_some_and(|origin| !sink.admit(partition, origin))
                            {
                                continue;
                            }
                            if sink.forwards() {
                                sink.forward(task, &record, &carried).map(|()| Vec::new())
                            } else {
                                task.process(&record)
                            }
                        }
                    };
                    if !emit_all(sink, task, outcome, partition, offset, &mut counts)? {
                        return Ok(());
                    }
                }
                if every.is_some_and(|every| checkpointed.elapsed() >= every) {
                    sink.checkpoint(&mut tasks, &next)?;
                    next.clear();
                    checkpointed = Instant::now();
                }
            }
        })();
        quit.store(true, Ordering::Relaxed);
        drop(received);
        let read = reader
            .join()
            .map_err(|_| anyhow!("the reader of {topic} crashed"))?;
        ran.and(read)
    });
    processed?;
    if every.is_some() && !next.is_empty() {
        sink.checkpoint(&mut tasks, &next)?;
    }
    sink.flush()?;
    dead_letters.flush()?;
    Ok(counts)
}

/// What processing a record produced, written to `sink`; a record the
/// query cannot process is counted and skipped. False when the sink wants
/// no more.
fn emit_all(
    sink: &mut dyn Sink,
    task: &Engine,
    outcome: Result<Vec<Record>>,
    partition: i32,
    offset: i64,
    counts: &mut Counts,
) -> Result<bool> {
    let produced = match outcome {
        Ok(produced) => produced,
        Err(e) => {
            counts.skipped += 1;
            tracing::warn!(
                partition,
                offset,
                "skipping a record the query cannot process: {e:#}"
            );
            return Ok(true);
        }
    };
    for record in &produced {
        if !sink.emit(task, record)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn stopped(stops: &[Arc<AtomicBool>]) -> bool {
    stops.iter().any(|s| s.load(Ordering::Relaxed))
}

/// A durable query running as a member of its group.
struct DurableRun<'a> {
    options: &'a ClientOptions,
    durability: &'a Durability,
    engine: &'a Engine,
    id: &'a str,
    source: &'a str,
    started_at: &'a [i64],
    idle: Duration,
    dead_letters: Option<&'a str>,
    keep_going: &'a (dyn Fn() -> bool + Sync),
}

impl DurableRun<'_> {
    /// Runs the query's stages: one, or a repartitioning one before the one
    /// that runs the query, through `repartition` (topic, partitions).
    /// `restored` is raised once the query's tasks are first restored.
    fn stages(
        &self,
        out: SinkTopic,
        repartition: Option<(String, i32)>,
        restored: &Arc<AtomicBool>,
    ) -> Result<Counts> {
        let Some((through, partitions)) = repartition else {
            let stateful = self.engine.is_stateful();
            let started_at = self.started_at.to_vec();
            return self.stage(
                self.source,
                Carry::Nothing,
                Box::new(out),
                stateful,
                started_at,
                restored,
            );
        };
        // Either stage ending ends the other.
        let halt = AtomicBool::new(false);
        let halted = |counts: Result<Counts>| {
            halt.store(true, Ordering::Relaxed);
            counts
        };
        let halting = DurableRun {
            keep_going: &|| !halt.load(Ordering::Relaxed) && (self.keep_going)(),
            ..*self
        };
        std::thread::scope(|scope| {
            let forwarding = std::thread::Builder::new()
                .name(format!("{}-repartition", self.id))
                .spawn_scoped(scope, || {
                    let out = Repartitioner {
                        producer: Producer::connect(self.options)?,
                        topic: through.clone(),
                        partitions,
                    };
                    let started_at = self.started_at.to_vec();
                    let unused = Arc::new(AtomicBool::new(false));
                    halted(halting.stage(
                        self.source,
                        Carry::Bytes,
                        Box::new(out),
                        false,
                        started_at,
                        &unused,
                    ))
                })?;
            let second = halted(halting.stage(
                &through,
                Carry::Origin,
                Box::new(out),
                true,
                vec![0; partitions as usize],
                restored,
            ));
            let forwarded = forwarding
                .join()
                .map_err(|_| anyhow!("the repartitioning of {} crashed", self.source))?;
            let (forwarded, second) = (forwarded?, second?);
            Ok(Counts {
                read: forwarded.read,
                written: second.written,
                skipped: forwarded.skipped + second.skipped,
            })
        })
    }

    /// One stage: tasks over `input`'s partitions held by this member.
    fn stage(
        &self,
        input: &str,
        carry: Carry,
        out: Box<dyn Sink + Send>,
        stateful: bool,
        started_at: Vec<i64>,
        restored: &Arc<AtomicBool>,
    ) -> Result<Counts> {
        let member = durable::member(self.options, self.durability, self.id)?;
        let stage = Stage {
            out,
            member: member.clone(),
            input: input.to_string(),
            stateful,
            started_at,
            restored: restored.clone(),
        };
        let mut sink =
            DurableSink::new(self.options, self.durability, self.engine, self.id, stage)?;
        let reading = Reading {
            topic: input,
            decode_as: self.source,
            decoder: self.engine,
            carry,
        };
        // The group's records are not decoded ahead: its stages carry bytes.
        let read = |fed, quit: &AtomicBool, _rows| {
            let keep_going = || !quit.load(Ordering::Relaxed) && (self.keep_going)();
            read_group(&member, &reading, self.idle, keep_going, fed)
        };
        let tasks = Tasks::ByPartition(BTreeMap::new());
        let counts = drive(
            self.options,
            tasks,
            input,
            read,
            self.dead_letters,
            &mut sink,
        )?;
        Ok(Counts {
            written: sink.written(),
            ..counts
        })
    }
}

/// Reads `feed` in timestamp order across partitions, decoded, in batches,
/// until the bound, a stop, `quit`, or the receiver goes away.
fn read_merged(
    options: &ClientOptions,
    decoder: &Engine,
    feed: &Feed,
    stops: &[Arc<AtomicBool>],
    quit: &AtomicBool,
    fed: SyncSender<Fed>,
    rows_back: Option<Receiver<Vec<Row>>>,
) -> Result<()> {
    let probe = options.metadata_client()?;
    let partitions = options.require_topic(&probe, &feed.topic)? as i32;
    let mut ends = vec![i64::MAX; partitions as usize];
    if feed.bounded {
        for (p, end) in ends.iter_mut().enumerate() {
            *end = probe
                .fetch_watermarks(&feed.topic, p as i32, CONNECT_TIMEOUT)?
                .1;
        }
    }
    let reading = Reading {
        topic: &feed.topic,
        decode_as: &feed.topic,
        decoder,
        carry: Carry::Nothing,
    };
    let bounds = Bounds {
        ends,
        bounded: feed.bounded,
    };
    let keep_going =
        || !quit.load(Ordering::Relaxed) && !stops.iter().any(|s| s.load(Ordering::Relaxed));
    let deliver = |batch| fed.send(Fed::Batch(batch)).is_ok();
    // Small fetches per partition: the merge holds every partition's fetched
    // blocks until their timestamps come up, and bench/sql.sh's peak RSS fell
    // from 303 to 83 MB (128 KB instead of 1 MB) at the same speed.
    let mut config = options.config_with_defaults(&[("max.partition.fetch.bytes", "131072")]);
    let reset = if matches!(feed.start, Offset::End) {
        "latest"
    } else {
        "earliest"
    };
    config.set("auto.offset.reset", reset);
    if let Some(settings) = FetchSettings::from_config(&config, &feed.topic) {
        let fetcher = Fetcher::start(options, settings)?;
        let starts: Vec<(i32, Option<i64>)> = (0..partitions)
            .map(|p| {
                let from = feed.from.as_ref().and_then(|f| f.get(p as usize)).copied();
                (p, from)
            })
            .collect();
        fetcher.control().assign(&starts);
        let failed = AtomicBool::new(false);
        let rows = rows_back.and_then(|returned| {
            Some(DecodedRows {
                source: decoder.row_source(&feed.topic)?,
                template: None,
                spare: Vec::new(),
                returned,
            })
        });
        let mut fetched = FetchedPartitions {
            control: fetcher.control(),
            fetcher,
            rows,
            queued: (0..partitions).map(|_| VecDeque::new()).collect(),
            paused: vec![false; partitions as usize],
            next: vec![0; partitions as usize],
            reading: &reading,
            failed: &failed,
            failure: None,
        };
        merge(
            &mut fetched,
            bounds,
            feed.idle,
            || keep_going() && !failed.load(Ordering::Relaxed),
            deliver,
        );
        return fetched.failure.map_or(Ok(()), Err);
    }
    let anonymous_group = format!("kpipe-sql-{}", std::process::id());
    let consumer =
        Arc::new(options.partition_reader(&anonymous_group, &[("fetch.queue.backoff.ms", "10")])?);
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        let start = feed
            .from
            .as_ref()
            .and_then(|from| from.get(p as usize))
            .map_or(feed.start, |&offset| Offset::Offset(offset));
        assignment.add_partition_offset(&feed.topic, p, start)?;
    }
    consumer.assign(&assignment)?;
    let mut partitions =
        reading.split(&consumer, (0..partitions).collect(), &mut BTreeMap::new())?;
    merge(&mut partitions, bounds, feed.idle, keep_going, deliver);
    Ok(())
}

/// Blocks (of up to `max.partition.fetch.bytes`, 128 KB here) a partition
/// may have waiting before its fetching pauses: the reader holds at most
/// this many per partition, however far apart their timestamps are.
const QUEUED_PER_PARTITION: usize = 8;

/// A topic's partitions read by kpipe's own fetcher (plaintext connections):
/// blocks of every partition queue here until the merge asks for them, and
/// their messages are decoded one by one as it does.
struct FetchedPartitions<'a> {
    fetcher: Fetcher,
    control: FetchControl,
    queued: Vec<VecDeque<MessageBlock>>,
    /// Partitions not fetched while their queue is full: the merge may
    /// wait long on another partition whose records are older.
    paused: Vec<bool>,
    /// The next message of each partition's first queued block.
    next: Vec<usize>,
    reading: &'a Reading<'a>,
    /// Decoding into rows here, off the query's thread, when the query allows.
    rows: Option<DecodedRows<'a>>,
    /// Set when the fetcher failed, which stops the merge.
    failed: &'a AtomicBool,
    failure: Option<anyhow::Error>,
}

impl Partitions for FetchedPartitions<'_> {
    fn count(&self) -> usize {
        self.queued.len()
    }

    fn poll(&mut self, p: usize, timeout: Duration) -> Polled {
        loop {
            if let Some(block) = self.queued[p].front() {
                if let Some(span) = block.messages.get(self.next[p]) {
                    self.next[p] += 1;
                    let message = Message {
                        topic: self.reading.decode_as,
                        key: block.key(span),
                        value: block.value(span),
                        timestamp: span.timestamp.max(0),
                        partition: block.partition,
                        offset: span.offset,
                    };
                    let decoder = self.reading.decoder;
                    let decoded = self.rows.as_mut().and_then(|r| r.decode(decoder, &message));
                    return Polled::Head(decoded.unwrap_or_else(|| decode(decoder, &message)));
                }
                let at_end = block.at_end;
                self.queued[p].pop_front();
                self.next[p] = 0;
                if self.paused[p] && self.queued[p].len() <= QUEUED_PER_PARTITION / 2 {
                    self.paused[p] = false;
                    self.control.pause(p as i32, false);
                }
                if at_end && self.queued[p].is_empty() {
                    return Polled::End;
                }
                continue;
            }
            // Any partition's block may come; it waits in its queue.
            match self.fetcher.next(timeout) {
                Ok(Some(block)) => {
                    let q = block.partition as usize;
                    if let Some(queue) = self.queued.get_mut(q) {
                        queue.push_back(block);
                        if queue.len() >= QUEUED_PER_PARTITION && !self.paused[q] {
                            self.paused[q] = true;
                            self.control.pause(q as i32, true);
                        }
                    }
                    if q != p {
                        return Polled::Nothing;
                    }
                }
                Ok(None) => return Polled::Nothing,
                Err(e) => {
                    self.failure.get_or_insert(e);
                    self.failed.store(true, Ordering::Relaxed);
                    return Polled::Nothing;
                }
            }
        }
    }
}

/// Records decoded into their source's rows by the reader, so the query's
/// thread, the busier one, only evaluates them: with the JSON parsed
/// straight into the row's columns, bench/sql.sh went from 1.26M to 2.3M
/// events/s.
struct DecodedRows<'a> {
    source: &'a Source,
    /// The first row decoded: new rows are its copies, so all share its names.
    template: Option<Row>,
    spare: Vec<Row>,
    /// Rows the query is done with, their column names kept for reuse.
    returned: Receiver<Vec<Row>>,
}

impl DecodedRows<'_> {
    /// The message decoded into a row; None when it is no row (a tombstone,
    /// say): the query takes it as a whole record.
    fn decode(&mut self, decoder: &Engine, message: &Message<'_>) -> Option<Head> {
        if self.spare.is_empty() {
            self.spare.extend(self.returned.try_iter().flatten());
        }
        let row = self
            .spare
            .pop()
            .or_else(|| self.template.clone())
            .unwrap_or_default();
        let decoded = decoder.decode_row(self.source, message, row)?;
        if self.template.is_none() {
            self.template = Some(decoded.row.clone());
        }
        Some(Head::Decoded(decoded))
    }
}

/// Reads a durable query's input as a member of its group: the partitions
/// held now, merged by timestamp, until a rebalance changes them, then the
/// next ones (see `durable`).
fn read_group(
    member: &Arc<Member>,
    reading: &Reading<'_>,
    idle: Duration,
    keep_going: impl Fn() -> bool,
    fed: SyncSender<Fed>,
) -> Result<()> {
    member.context().hand_to(Some(fed.clone()));
    member.subscribe(&[reading.topic])?;
    // Messages polled off the consumer's own queue before their partition's
    // queue was split off; they come first.
    let mut early: BTreeMap<i32, VecDeque<Head>> = BTreeMap::new();
    while keep_going() {
        let (generation, held) = member.context().assignment();
        if held.is_empty() {
            if let Some(Ok(m)) = member.poll(Duration::from_millis(100)) {
                early
                    .entry(m.partition())
                    .or_default()
                    .push_back(reading.head(&m));
            }
            continue;
        }
        let mut partitions = reading.split(member, held, &mut early)?;
        let ends = vec![i64::MAX; partitions.count()];
        merge(
            &mut partitions,
            Bounds {
                ends,
                bounded: false,
            },
            idle,
            || keep_going() && member.context().assignment().0 == generation,
            |batch| fed.send(Fed::Batch(batch)).is_ok(),
        );
        early = std::mem::take(&mut partitions.stray);
    }
    // The member stays in the group until it is dropped, after the last
    // checkpoint has committed its offsets.
    member.context().hand_to(None);
    Ok(())
}

/// What a reader reads and how it decodes.
pub(crate) struct Reading<'a> {
    /// The topic read.
    topic: &'a str,
    /// The source whose format its messages have (a repartition topic
    /// holds its source's messages).
    decode_as: &'a str,
    decoder: &'a Engine,
    carry: Carry,
}

/// What a record read for a repartitioned query carries besides itself.
#[derive(Clone, Copy, PartialEq)]
enum Carry {
    Nothing,
    /// Its bytes, for the first stage to forward.
    Bytes,
    /// Its origin in the source, for the second stage's tasks.
    Origin,
}

impl Reading<'_> {
    fn head(&self, m: &BorrowedMessage<'_>) -> Head {
        let head = read(self.decoder, self.decode_as, m);
        match (head, self.carry) {
            (Head::Record(record), Carry::Bytes | Carry::Origin) => Head::Carried(
                record,
                Box::new(durable::carried(m, self.carry == Carry::Bytes)),
            ),
            (head, _) => head,
        }
    }

    /// One queue per partition in `held`, split off `consumer`'s own.
    fn split<'a, C: ConsumerContext>(
        &'a self,
        consumer: &'a Arc<BaseConsumer<C>>,
        held: Vec<i32>,
        early: &mut BTreeMap<i32, VecDeque<Head>>,
    ) -> Result<BrokerPartitions<'a, C>> {
        let queues = held
            .iter()
            .map(|&p| {
                consumer
                    .split_partition_queue(self.topic, p)
                    .ok_or_else(|| anyhow!("cannot read partition {p} of {}", self.topic))
            })
            .collect::<Result<Vec<_>>>()?;
        while let Some(polled) = consumer.poll(Duration::ZERO) {
            if let Ok(m) = polled {
                early
                    .entry(m.partition())
                    .or_default()
                    .push_back(self.head(&m));
            }
        }
        let early = held
            .iter()
            .map(|p| early.remove(p).unwrap_or_default())
            .collect();
        Ok(BrokerPartitions {
            consumer,
            held,
            queues,
            early,
            stray: BTreeMap::new(),
            reading: self,
        })
    }
}

/// A topic's partitions on the broker: one librdkafka queue each.
struct BrokerPartitions<'a, C: ConsumerContext + 'static> {
    consumer: &'a BaseConsumer<C>,
    /// The partition numbers, in the order of `queues`.
    held: Vec<i32>,
    queues: Vec<PartitionQueue<C>>,
    /// Records fetched before the queues were split off; they come first.
    early: Vec<VecDeque<Head>>,
    /// Records of partitions not held here yet (assigned while merging).
    stray: BTreeMap<i32, VecDeque<Head>>,
    reading: &'a Reading<'a>,
}

impl<C: ConsumerContext> Partitions for BrokerPartitions<'_, C> {
    fn count(&self) -> usize {
        self.queues.len()
    }

    fn poll(&mut self, p: usize, timeout: Duration) -> Polled {
        if let Some(head) = self.early[p].pop_front() {
            return Polled::Head(head);
        }
        match self.queues[p].poll(timeout) {
            Some(Ok(m)) => Polled::Head(self.reading.head(&m)),
            Some(Err(KafkaError::PartitionEOF(_))) => Polled::End,
            Some(Err(e)) => {
                tracing::warn!("reading {} [{}]: {e}", self.reading.topic, self.held[p]);
                Polled::Nothing
            }
            None => Polled::Nothing,
        }
    }

    /// librdkafka's events (errors, rebalances) arrive on the consumer's own
    /// queue; so do the first messages of partitions assigned meanwhile.
    fn serve(&mut self) {
        if let Some(Ok(m)) = self.consumer.poll(Duration::ZERO) {
            let head = self.reading.head(&m);
            match self.held.iter().position(|&p| p == m.partition()) {
                Some(at) => self.early[at].push_back(head),
                None => self.stray.entry(m.partition()).or_default().push_back(head),
            }
        }
    }
}

//! The command topic: every statement that changed what a service runs, in
//! order, where ksqlDB keeps it (`_confluent-ksql-<service>_command_topic`).
//! A server reads it at start, so a restarted one (even after kill -9) runs
//! the same sources and queries, and follows it, so every server of a
//! service runs what any of them accepted. A command is acknowledged only
//! once the broker has it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kpipe_kafka::admin::{Admin, IfExists, TopicSpec};
use kpipe_kafka::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use kpipe_kafka::produce::Producer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// One stored statement, with what it needs to run again the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub sql: String,
    /// The request's `streamsProperties` it ran with.
    #[serde(default)]
    pub properties: Vec<(String, String)>,
    /// Where a persistent query began reading, per partition: every server
    /// starts its share of the query from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Vec<i64>>,
    /// The server that ran it first (it does not run it twice).
    #[serde(default)]
    pub server: String,
}

/// How long reading the topic to its end may take.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CommandTopic {
    topic: String,
    admin: Admin,
    runtime: tokio::runtime::Runtime,
    producer: Producer,
    consumer: BaseConsumer<QuietContext>,
    /// The next offset to read.
    next: i64,
    /// How many commands the topic holds as far as read or written (the
    /// next one's sequence number).
    count: u64,
    /// This server's id, in the commands it writes.
    server: String,
}

impl CommandTopic {
    /// Opens (or creates) the service's command topic and returns the
    /// commands in it.
    pub fn open(
        options: &ClientOptions,
        service_id: &str,
        server: &str,
    ) -> Result<(CommandTopic, Vec<Command>)> {
        let topic = format!("_confluent-ksql-{service_id}_command_topic");
        let admin = Admin::connect(options)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let consumer = options
            .partition_reader("kpipe-command-runner", &[("auto.offset.reset", "earliest")])?;
        let mut log = CommandTopic {
            topic,
            admin,
            runtime,
            // librdkafka's default acks=all: a command is on every replica.
            producer: Producer::connect(options)?,
            consumer,
            next: 0,
            count: 0,
            server: server.to_string(),
        };
        log.create()?;
        let commands = log.catch_up()?.into_values().collect();
        Ok((log, commands))
    }

    fn create(&mut self) -> Result<()> {
        let spec = TopicSpec {
            name: self.topic.clone(),
            partitions: 1,
            replication: 1,
            configs: BTreeMap::from([("retention.ms".into(), "-1".into())]),
        };
        self.runtime
            .block_on(self.admin.create(&spec, IfExists::Keep))?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, 0, Offset::Offset(self.next))?;
        self.consumer.assign(&assignment)?;
        Ok(())
    }

    /// Whether the topic holds commands not read yet.
    pub fn behind(&self) -> Result<bool> {
        let (_, end) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, CONNECT_TIMEOUT)?;
        Ok(end > self.next)
    }

    /// Reads the topic to its end as of now: the commands other servers
    /// wrote since the last call, by offset.
    pub fn catch_up(&mut self) -> Result<BTreeMap<i64, Command>> {
        let (_, end) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, CONNECT_TIMEOUT)?;
        let mut commands = BTreeMap::new();
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        while self.next < end {
            if Instant::now() > deadline {
                bail!("cannot read {} up to offset {end}", self.topic);
            }
            let m = match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => m,
                Some(Err(KafkaError::PartitionEOF(_))) | None => continue,
                Some(Err(e)) => bail!("reading {}: {e}", self.topic),
            };
            self.next = m.offset() + 1;
            let command: Command = serde_json::from_slice(m.payload().unwrap_or_default())
                .with_context(|| format!("command {} of {} is not one", m.offset(), self.topic))?;
            // This server's own were counted when it wrote them.
            if command.server != self.server {
                self.count += 1;
                commands.insert(m.offset(), command);
            }
        }
        Ok(commands)
    }

    /// Appends a command, once the broker has it; returns its sequence
    /// number.
    pub fn append(&mut self, mut command: Command) -> Result<u64> {
        command.server = self.server.clone();
        let line = serde_json::to_vec(&command)?;
        self.producer.send(&self.topic, None, &line, None)?;
        self.producer
            .flush(CATCH_UP_TIMEOUT)
            .with_context(|| format!("cannot write {}", self.topic))?;
        self.count += 1;
        Ok(self.count - 1)
    }

    /// The sequence number the next command will get.
    pub fn next_sequence(&self) -> u64 {
        self.count
    }

    /// Deletes the topic, and with it every command.
    pub fn delete(self) -> Result<()> {
        self.runtime.block_on(self.admin.delete(&self.topic))
    }

    /// Forgets every command (the cluster was terminated).
    pub fn clear(&mut self) -> Result<()> {
        self.runtime.block_on(self.admin.delete(&self.topic))?;
        self.next = 0;
        self.count = 0;
        self.create()
            .map_err(|e| anyhow!("cannot create {} again: {e:#}", self.topic))
    }
}

//! Consuming to a writer, in kafka-console-consumer's three modes (seed 01):
//! everything from the beginning without a group, only new messages, or as a
//! group member resuming from committed offsets.
//!
//! With a group, an offset is stored for commit only after its message has been
//! written *and flushed*, so a crash or Ctrl-C never commits a message the reader
//! did not get; on a clean exit the stored offsets are committed synchronously.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::client::{close_consumer, ClientOptions, QuietContext};

#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub topic: String,
    pub group: Option<String>,
    /// Without a group: start at the beginning instead of the end. With a group:
    /// where a group without committed offsets starts.
    pub from_beginning: bool,
    pub max: Option<u64>,
    /// Stop after this long without a message.
    pub idle_timeout: Option<Duration>,
    pub with_meta: bool,
}

/// What a run printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsumeReport {
    pub messages: u64,
}

#[derive(Serialize)]
struct WithMeta<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<String>,
    timestamp: Option<i64>,
    headers: serde_json::Map<String, serde_json::Value>,
    value: Option<String>,
}

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

fn write_message(out: &mut impl Write, m: &BorrowedMessage<'_>, with_meta: bool) -> io::Result<()> {
    if !with_meta {
        out.write_all(m.payload().unwrap_or_default())?;
        return out.write_all(b"\n");
    }
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        text(h.value).map_or(serde_json::Value::Null, serde_json::Value::String),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let line = WithMeta {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        key: text(m.key()),
        timestamp: m.timestamp().to_millis(),
        headers,
        value: text(m.payload()),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// Reads until `max` messages, the idle timeout, or `stop` (Ctrl-C); a closed
/// output (a pipe into `head`) also ends the run cleanly.
pub fn consume(
    options: &ClientOptions,
    request: &ConsumeOptions,
    stop: &AtomicBool,
    out: &mut impl Write,
) -> Result<ConsumeReport> {
    let probe = options.metadata_client()?;
    let partitions = options.require_topic(&probe, &request.topic)?;
    let reset = if request.from_beginning {
        "earliest"
    } else {
        "latest"
    };
    let mut defaults = vec![
        ("auto.offset.reset", reset),
        ("enable.partition.eof", "false"),
        // librdkafka's default pauses fetching for 1 s whenever the local queue
        // is full, which idles a fast reader (see kpipe-lake's sink).
        ("fetch.queue.backoff.ms", "10"),
    ];
    // librdkafka's assign() needs a group id even when the group is never joined;
    // without --group this one is never committed to, so no group appears.
    let anonymous_group = format!("kpipe-console-{}", std::process::id());
    if request.group.is_none() {
        defaults.extend([
            ("group.id", anonymous_group.as_str()),
            ("enable.auto.commit", "false"),
        ]);
    }
    if let Some(group) = &request.group {
        defaults.extend([
            ("group.id", group.as_str()),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
        ]);
    }
    let consumer: BaseConsumer<QuietContext> = options
        .config_with_defaults(&defaults)
        .create_with_context(QuietContext::default())
        .map_err(|e| options.config_error(e))?;
    match &request.group {
        Some(_) => consumer.subscribe(&[&request.topic])?,
        None => {
            let start = if request.from_beginning {
                Offset::Beginning
            } else {
                Offset::End
            };
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions as i32 {
                assignment.add_partition_offset(&request.topic, partition, start)?;
            }
            consumer.assign(&assignment)?;
        }
    }
    let mut report = ConsumeReport::default();
    let mut pending = Unflushed {
        consumer: &consumer,
        topic: &request.topic,
        store: request.group.is_some(),
        offsets: Vec::new(),
    };
    let mut last_message = Instant::now();
    let result = (|| -> Result<()> {
        while !stop.load(Ordering::Relaxed) && request.max.is_none_or(|max| report.messages < max) {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    last_message = Instant::now();
                    if write_message(out, &message, request.with_meta).is_err() {
                        return Ok(()); // the reader went away
                    }
                    report.messages += 1;
                    pending
                        .offsets
                        .push((message.partition(), message.offset()));
                    if pending.offsets.len() >= 1000 {
                        pending.flush(out);
                    }
                }
                Some(Err(e)) => return Err(anyhow!("consuming {} failed: {e}", request.topic)),
                None => {
                    pending.flush(out);
                    if request
                        .idle_timeout
                        .is_some_and(|t| last_message.elapsed() >= t)
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    })();
    pending.flush(out);
    if request.group.is_some() {
        // Commit what was printed; "no offset" just means nothing new was read.
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(())
            | Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => return Err(anyhow!("cannot commit consumed offsets for group: {e}")),
        }
    }
    close_consumer(&consumer);
    result?;
    Ok(report)
}

/// Messages written but not yet flushed to the reader: their offsets are stored
/// for the next commit only once the output is flushed.
struct Unflushed<'a> {
    consumer: &'a BaseConsumer<QuietContext>,
    topic: &'a str,
    store: bool,
    offsets: Vec<(i32, i64)>,
}

impl Unflushed<'_> {
    fn flush(&mut self, out: &mut impl Write) {
        if self.offsets.is_empty() {
            return;
        }
        if out.flush().is_ok() && self.store {
            for &(partition, offset) in &self.offsets {
                // Fails only for a partition revoked meanwhile: its new owner re-reads it.
                if let Err(e) = self.consumer.store_offset(self.topic, partition, offset) {
                    tracing::debug!(partition, offset, "offset not stored: {e}");
                }
            }
        }
        self.offsets.clear();
    }
}

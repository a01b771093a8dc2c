//! What every sink that is a consumer-group member needs, whatever it writes
//! to: the end offsets `--until-end` stops at, knowing when they are reached,
//! committing after a write, classifying consumer errors, and dead letters.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{bail, Result};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use crate::produce::Producer;

/// Where `--until-end` stops: every partition's end offset as it is now.
pub fn end_offsets(
    probe: &BaseConsumer<QuietContext>,
    topic: &str,
    partitions: usize,
) -> Result<HashMap<i32, i64>> {
    (0..partitions as i32)
        .map(|p| Ok((p, probe.fetch_watermarks(topic, p, CONNECT_TIMEOUT)?.1)))
        .collect()
}

/// Every assigned partition has reached its target, by the positions read so
/// far or by the group's committed offsets.
pub fn reached<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    positions: &BTreeMap<i32, i64>,
    targets: &HashMap<i32, i64>,
) -> Result<bool> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(false);
    }
    let committed = consumer.committed(CONNECT_TIMEOUT).ok();
    for e in assignment.elements() {
        let target = targets.get(&e.partition()).copied().unwrap_or(0);
        let done_in_memory = positions.get(&e.partition()).is_some_and(|n| *n >= target);
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

/// A consumer error worth waiting out rather than stopping for.
pub fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure | C::AllBrokersDown | C::OperationTimedOut | C::NotCoordinator
    )
}

/// Commits the next offsets to read after a successful write. A commit refused
/// because the partitions moved is fine: their new owner reads them again.
pub fn commit_written<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    next: &BTreeMap<i32, i64>,
) -> Result<()> {
    if next.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, offset) in next {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    use RDKafkaErrorCode as C;
    match consumer.commit(&offsets, CommitMode::Sync) {
        Ok(()) => Ok(()),
        Err(KafkaError::ConsumerCommit(
            code @ (C::RebalanceInProgress | C::IllegalGeneration | C::UnknownMemberId),
        )) => {
            tracing::info!(
                "offsets not committed ({code}); the partitions' new owner reads them again"
            );
            Ok(())
        }
        Err(e) => bail!(
            "the data is written but committing offsets failed ({e}); a restart writes it again"
        ),
    }
}

/// Where a dead letter came from.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Vec<kpipe_records::Header<'a>>,
}

/// A librdkafka message's headers, as [`Origin`] takes them.
pub fn header_pairs<H: Headers>(headers: Option<&H>) -> Vec<kpipe_records::Header<'_>> {
    headers.map_or_else(Vec::new, |hs| {
        hs.iter().map(|h| (h.key.as_bytes(), h.value)).collect()
    })
}

/// Messages a sink cannot write go to the dead-letter topic unchanged, with the
/// reason in `kpipe.error` and the origin in `kpipe.topic/partition/offset`
/// (or, without a dead-letter topic, are logged and skipped). Either way the
/// caller counts them.
pub struct DeadLetters {
    producer: Option<Producer>,
    topic: Option<String>,
}

impl DeadLetters {
    /// Checks that `topic` exists before anything is consumed.
    pub fn connect(
        kafka: &ClientOptions,
        probe: &BaseConsumer<QuietContext>,
        topic: Option<&str>,
    ) -> Result<DeadLetters> {
        let producer = match topic {
            Some(t) => {
                kafka.require_topic(probe, t)?;
                Some(Producer::connect(kafka)?)
            }
            None => None,
        };
        Ok(DeadLetters {
            producer,
            topic: topic.map(String::from),
        })
    }

    pub fn send(&mut self, origin: &Origin<'_>, error: &str) -> Result<()> {
        let (Some(producer), Some(topic)) = (self.producer.as_mut(), self.topic.as_deref()) else {
            tracing::warn!(
                partition = origin.partition,
                offset = origin.offset,
                "skipping bad message: {error}"
            );
            return Ok(());
        };
        let mut headers = OwnedHeaders::new_with_capacity(origin.headers.len() + 4);
        for (key, value) in &origin.headers {
            headers = headers.insert(Header {
                key: &String::from_utf8_lossy(key),
                value: *value,
            });
        }
        let fields = [
            ("kpipe.error", error.to_string()),
            ("kpipe.topic", origin.topic.to_string()),
            ("kpipe.partition", origin.partition.to_string()),
            ("kpipe.offset", origin.offset.to_string()),
        ];
        for (key, value) in &fields {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        producer.send(topic, origin.key, origin.payload, Some(&headers))
    }

    /// Waits until every dead letter so far is acknowledged.
    pub fn flush(&mut self) -> Result<()> {
        if let Some(producer) = self.producer.as_mut() {
            producer.flush(Duration::from_secs(60))?;
        }
        Ok(())
    }
}

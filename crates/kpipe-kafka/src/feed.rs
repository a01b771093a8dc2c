//! A consumer-group member's messages, in blocks: each block is one
//! partition's run of messages in one buffer, with every message a set of
//! byte ranges into it.
//!
//! On plaintext connections the blocks come from kpipe's own fetcher (see
//! `fetch`) and point straight into the fetched responses. Otherwise, or when
//! asked, librdkafka fetches and its messages are copied into blocks. Either
//! way librdkafka runs the group: [`MemberContext`] turns its rebalance
//! callbacks into the fetcher's assignments and the sink's revocations.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use kpipe_records::{Header, RecordSpan};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use crate::fetch::{resets_to_earliest, FetchControl, FetchSettings, Fetcher};
use crate::sink::{header_pairs, is_transient};

/// Messages copied out of librdkafka into one block before it is handed on.
const BLOCK_MESSAGES: usize = 1000;
const BLOCK_BYTES: usize = 512 << 10;

/// One partition's messages in one buffer.
pub struct MessageBlock {
    pub partition: i32,
    pub bytes: Bytes,
    pub messages: Vec<RecordSpan>,
    /// The offset after this block: past its last message, and past any
    /// records not handed out (transaction markers, aborted transactions).
    pub next_offset: i64,
    /// The partition is read to its end for now (own fetcher only): a block
    /// with no messages may come just to say so.
    pub at_end: bool,
    pub(crate) generation: u64,
}

impl MessageBlock {
    pub(crate) fn new(partition: i32, bytes: Bytes, generation: u64) -> MessageBlock {
        MessageBlock {
            partition,
            bytes,
            messages: Vec::new(),
            next_offset: -1,
            at_end: false,
            generation,
        }
    }

    /// Whether any batch was read into it (even one whose records were all left out).
    pub(crate) fn is_touched(&self) -> bool {
        self.next_offset >= 0
    }

    /// A message's value, None for a null one.
    pub fn value(&self, message: &RecordSpan) -> Option<&[u8]> {
        message.value.clone().map(|r| &self.bytes[r])
    }

    /// A message's value; a null value reads as empty.
    pub fn payload(&self, message: &RecordSpan) -> &[u8] {
        self.value(message).unwrap_or_default()
    }

    pub fn key(&self, message: &RecordSpan) -> Option<&[u8]> {
        message.key.clone().map(|r| &self.bytes[r])
    }

    pub fn headers(&self, message: &RecordSpan) -> Vec<Header<'_>> {
        kpipe_records::headers(&self.bytes[message.headers.clone()]).unwrap_or_default()
    }

    /// Bytes of all values, for flushing by size.
    pub fn payload_bytes(&self) -> usize {
        self.messages
            .iter()
            .map(|m| m.value.as_ref().map_or(0, |r| r.len()))
            .sum()
    }
}

/// librdkafka's messages of one partition, being copied into a block.
pub struct Copying {
    bytes: Vec<u8>,
    messages: Vec<RecordSpan>,
}

impl Copying {
    fn new() -> Copying {
        Copying {
            bytes: Vec::with_capacity(BLOCK_BYTES),
            messages: Vec::with_capacity(BLOCK_MESSAGES),
        }
    }

    fn push(&mut self, m: &BorrowedMessage<'_>) {
        let key = m.key().map(|k| self.copy(k));
        let value = m.payload().map(|v| self.copy(v));
        let start = self.bytes.len();
        kpipe_records::encode_headers(&mut self.bytes, header_pairs(m.headers()).into_iter());
        self.messages.push(RecordSpan {
            offset: m.offset(),
            timestamp: m.timestamp().to_millis().unwrap_or(-1),
            key,
            value,
            headers: start..self.bytes.len(),
        });
    }

    fn copy(&mut self, data: &[u8]) -> std::ops::Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(data);
        start..self.bytes.len()
    }

    fn is_full(&self) -> bool {
        self.messages.len() >= BLOCK_MESSAGES || self.bytes.len() >= BLOCK_BYTES
    }

    fn finish(self, partition: i32) -> MessageBlock {
        let mut block = MessageBlock::new(partition, Bytes::from(self.bytes), 0);
        block.next_offset = self.messages.last().map_or(-1, |m| m.offset + 1);
        block.messages = self.messages;
        block
    }
}

/// What one read gave: partitions revoked since the last read (their earlier
/// blocks must be dropped first), then perhaps a block.
pub struct Polled {
    pub revoked: Vec<i32>,
    pub block: Option<MessageBlock>,
}

/// Where a member's blocks come from.
pub enum Feed {
    Own(Fetcher),
    Librdkafka(BTreeMap<i32, Copying>),
}

impl Feed {
    /// kpipe's own fetcher when `own` is asked for and the connection is
    /// plaintext; librdkafka's fetching otherwise.
    pub fn start(
        kafka: &ClientOptions,
        config: &ClientConfig,
        topic: &str,
        own: bool,
    ) -> Result<Feed> {
        match FetchSettings::from_config(config, topic).filter(|_| own) {
            Some(settings) => Ok(Feed::Own(Fetcher::start(kafka, settings)?)),
            None => Ok(Feed::Librdkafka(BTreeMap::new())),
        }
    }

    /// What the member's context needs to steer the own fetcher.
    pub fn control(&self) -> Option<FetchControl> {
        match self {
            Feed::Own(fetcher) => Some(fetcher.control()),
            Feed::Librdkafka(_) => None,
        }
    }

    /// Serves the group's callbacks, then returns the next block, waiting up to `timeout`.
    pub fn next(
        &mut self,
        consumer: &BaseConsumer<MemberContext>,
        timeout: Duration,
    ) -> Result<Polled> {
        match self {
            Feed::Own(fetcher) => {
                // Until partitions are assigned there is nothing to fetch: the
                // wait is in librdkafka's poll, whose callback assigns them,
                // so reading starts at once (waiting beside it cost ~50 ms).
                let assigned = fetcher.assigned();
                let wait = if assigned { Duration::ZERO } else { timeout };
                // The partitions are paused: a message here was fetched before
                // the pause took hold, and the own fetcher reads it anyway.
                if let Some(Err(e)) = consumer.poll(wait) {
                    check(e)?;
                }
                consumer.context().check_failure()?;
                let revoked = consumer.context().take_revoked();
                let block = if assigned || fetcher.assigned() {
                    fetcher.next(timeout)?
                } else {
                    None
                };
                Ok(Polled { revoked, block })
            }
            Feed::Librdkafka(copying) => loop {
                // A zero wait spares librdkafka a clock read per message while data flows.
                let message = consumer
                    .poll(Duration::ZERO)
                    .or_else(|| consumer.poll(timeout));
                consumer.context().check_failure()?;
                let revoked = consumer.context().take_revoked();
                for p in &revoked {
                    copying.remove(p);
                }
                let full = match message {
                    Some(Ok(m)) => {
                        let block = copying.entry(m.partition()).or_insert_with(Copying::new);
                        block.push(&m);
                        block.is_full().then_some(m.partition())
                    }
                    Some(Err(e)) => {
                        check(e)?;
                        None
                    }
                    // Idle: hand out what has gathered.
                    None => {
                        let block = copying.pop_first().map(|(p, c)| c.finish(p));
                        return Ok(Polled { revoked, block });
                    }
                };
                let block = full.and_then(|p| copying.remove(&p).map(|c| c.finish(p)));
                if block.is_some() || !revoked.is_empty() {
                    return Ok(Polled { revoked, block });
                }
            },
        }
    }

    /// Blocks still gathering, for a flush or a stop.
    pub fn drain(&mut self) -> Vec<MessageBlock> {
        match self {
            Feed::Own(_) => Vec::new(),
            Feed::Librdkafka(copying) => std::mem::take(copying)
                .into_iter()
                .map(|(p, c)| c.finish(p))
                .collect(),
        }
    }
}

/// Transient consumer errors are waited out; anything else stops the member.
fn check(e: KafkaError) -> Result<()> {
    match e {
        KafkaError::MessageConsumption(code) if is_transient(code) => {
            tracing::debug!("transient consumer error: {code}");
            Ok(())
        }
        e => bail!("consuming failed: {e}"),
    }
}

/// What a member does with partitions before they leave.
type OnRevoke = dyn Fn(&[i32]) + Send + Sync;

/// What a member does with partitions before it reads them: each comes with
/// the offset reading starts at.
type OnAssign = dyn Fn(&[(i32, i64)]) -> Result<()> + Send + Sync;

/// The context of a group member reading through a [`Feed`]: before a
/// partition leaves, `on_revoke` runs (a sink drops or finishes what it holds
/// of it) and the own fetcher stops reading it; when partitions arrive, the
/// offsets reading starts at are settled (the group's committed offset, else
/// where `auto.offset.reset` points), `on_assign` runs, and only then are they
/// read: by the own fetcher, with librdkafka's fetching paused, or by librdkafka.
/// A failure in between stops the member at its next read: reading from
/// anywhere else could skip or repeat data.
pub struct MemberContext {
    quiet: QuietContext,
    fetch: Option<FetchControl>,
    reset_to_earliest: bool,
    on_revoke: Box<OnRevoke>,
    on_assign: Box<OnAssign>,
    revoked: Mutex<Vec<i32>>,
    failure: Mutex<Option<String>>,
}

crate::quiet_client_context!(MemberContext, quiet);

impl MemberContext {
    pub fn new(
        config: &ClientConfig,
        fetch: Option<FetchControl>,
        on_revoke: impl Fn(&[i32]) + Send + Sync + 'static,
        on_assign: impl Fn(&[(i32, i64)]) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        MemberContext {
            quiet: QuietContext::default(),
            fetch,
            reset_to_earliest: resets_to_earliest(config),
            on_revoke: Box::new(on_revoke),
            on_assign: Box::new(on_assign),
            revoked: Mutex::default(),
            failure: Mutex::default(),
        }
    }

    fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Fails the member's next read.
    fn fail(&self, error: String) {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(error);
    }

    fn check_failure(&self) -> Result<()> {
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }

    /// Where each assigned partition's reading starts.
    fn starts(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &TopicPartitionList,
    ) -> Result<Vec<(i32, i64)>> {
        let committed = consumer
            .committed_offsets(partitions.clone(), CONNECT_TIMEOUT)
            .map_err(|e| anyhow!("cannot read the group's committed offsets: {e}"))?;
        committed
            .elements()
            .iter()
            .map(|e| {
                if let Offset::Offset(o) = e.offset() {
                    return Ok((e.partition(), o));
                }
                let (low, high) = consumer
                    .fetch_watermarks(e.topic(), e.partition(), CONNECT_TIMEOUT)
                    .map_err(|err| {
                        anyhow!(
                            "cannot read where {}[{}] starts: {err}",
                            e.topic(),
                            e.partition()
                        )
                    })?;
                let start = if self.reset_to_earliest { low } else { high };
                Ok((e.partition(), start))
            })
            .collect()
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) -> Result<()> {
        if self.fetch.is_some() {
            consumer
                .pause(partitions)
                .map_err(|e| anyhow!("cannot pause librdkafka's own fetching: {e}"))?;
        }
        let starts = self.starts(consumer, partitions)?;
        (self.on_assign)(&starts)?;
        if let Some(fetch) = &self.fetch {
            let starts: Vec<(i32, Option<i64>)> =
                starts.iter().map(|&(p, o)| (p, Some(o))).collect();
            fetch.assign(&starts);
        }
        Ok(())
    }
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let partitions: Vec<i32> = partitions
                .elements()
                .iter()
                .map(|e| e.partition())
                .collect();
            if let Some(fetch) = &self.fetch {
                fetch.revoke(&partitions);
            }
            (self.on_revoke)(&partitions);
            self.revoked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(partitions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            if let Err(e) = self.assign(consumer, partitions) {
                self.fail(format!("{e:#}"));
            }
        }
    }
}

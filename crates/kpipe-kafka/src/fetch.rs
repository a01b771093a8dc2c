//! kpipe's own fetch path: Fetch requests straight to each assigned
//! partition's leader, with records read in place out of the response — no
//! copy and no queue operation per message. The lake sink (a group member)
//! and `kpipe sql`'s session reader (which assigns itself every partition)
//! read through it.
//!
//! Why: profiles of the lake sink put about 30% of its CPU in librdkafka's
//! fetch thread and its per-message polling. librdkafka keeps what it does
//! well — group membership, committed offsets, commits — while the partitions
//! it is assigned stay paused, so it fetches nothing itself (see `feed`).
//! The same cost showed in `kpipe sql`'s reader thread. Only plaintext connections take this path; with SSL or SASL librdkafka
//! fetches as before.
//!
//! One thread fetches for all partitions: it sends one request to every
//! leader, then reads the answers, so several leaders are read at once. The
//! reading thread takes the results from a bounded channel, which is all the
//! prefetching there is. Every assignment of a partition has a generation;
//! blocks fetched for an earlier generation are dropped on arrival, so nothing
//! read before a revocation is ever handed out after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{AbortedTransaction, PartitionData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kpipe_records::{Batch, RecordSpan};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use crate::client::{ClientOptions, QuietContext, CONNECT_TIMEOUT};
use crate::feed::MessageBlock;

/// Fetch v11 (Kafka 2.3+): topic names, not ids, and no flexible encoding.
const FETCH_VERSION: i16 = 11;
/// Blocks waiting in the channel: with up to a request's worth per block, this
/// bounds the memory fetched ahead of the consumer.
const QUEUED_BLOCKS: usize = 8;
/// Pause after a failed round before trying again.
const RETRY_BACKOFF: Duration = Duration::from_millis(200);

/// The librdkafka settings this path honours, with librdkafka's meaning.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub topic: String,
    pub client_id: String,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    pub read_committed: bool,
    /// `auto.offset.reset`: where a partition without a usable offset starts.
    pub reset_to_earliest: bool,
}

impl FetchSettings {
    /// Reads the settings from the consumer's configuration, or None when the
    /// connection is not plaintext (this path speaks neither TLS nor SASL).
    pub fn from_config(config: &ClientConfig, topic: &str) -> Option<FetchSettings> {
        let protocol = config.get("security.protocol").unwrap_or("plaintext");
        if !protocol.eq_ignore_ascii_case("plaintext") {
            return None;
        }
        let number = |keys: &[&str], default: i32| {
            keys.iter()
                .find_map(|k| config.get(k).and_then(|v| v.parse().ok()))
                .unwrap_or(default)
        };
        Some(FetchSettings {
            topic: topic.to_string(),
            client_id: config.get("client.id").unwrap_or("kpipe").to_string(),
            max_wait_ms: number(&["fetch.wait.max.ms"], 500),
            min_bytes: number(&["fetch.min.bytes"], 1),
            // librdkafka's 50 MB per request would let the channel hold ~400 MB.
            max_bytes: number(&["fetch.max.bytes"], 4 << 20).min(4 << 20),
            // A larger batch still comes whole: the broker always returns a
            // partition's first batch, whatever the limit.
            partition_max_bytes: number(
                &["max.partition.fetch.bytes", "fetch.message.max.bytes"],
                1 << 20,
            )
            .min(1 << 20),
            read_committed: !config
                .get("isolation.level")
                .is_some_and(|v| v.eq_ignore_ascii_case("read_uncommitted")),
            reset_to_earliest: resets_to_earliest(config),
        })
    }
}

/// `auto.offset.reset` sends a partition without a usable offset to its start.
pub(crate) fn resets_to_earliest(config: &ClientConfig) -> bool {
    config
        .get("auto.offset.reset")
        .is_some_and(|v| matches!(v, "earliest" | "smallest" | "beginning"))
}

/// Where an assigned partition's fetching stands.
#[derive(Debug, Clone, Copy)]
struct Fetching {
    /// The next offset to fetch, or None until `auto.offset.reset` decides.
    next: Option<i64>,
    generation: u64,
    /// The reader holds enough of it for now.
    paused: bool,
}

#[derive(Default)]
struct State {
    partitions: BTreeMap<i32, Fetching>,
    generations: u64,
}

impl State {
    /// What the next round asks for: every partition with a known offset
    /// that is not paused.
    fn asked(&self) -> Vec<Asked> {
        self.partitions
            .iter()
            .filter(|(_, f)| !f.paused)
            .filter_map(|(p, f)| {
                Some(Asked {
                    partition: *p,
                    offset: f.next?,
                    generation: f.generation,
                })
            })
            .collect()
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stopped: AtomicBool,
    /// The fetch thread's sockets, shut down to end a wait for an answer at once.
    sockets: Mutex<HashMap<i32, TcpStream>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Tells the fetcher what the group assigned; cheap to clone into a consumer
/// context's rebalance callbacks.
#[derive(Clone)]
pub struct FetchControl(Arc<Shared>);

impl FetchControl {
    /// Starts fetching `partitions`, each at its committed offset (None: as
    /// `auto.offset.reset` says).
    pub fn assign(&self, partitions: &[(i32, Option<i64>)]) {
        let mut state = self.0.state();
        state.generations += 1;
        let generation = state.generations;
        for &(partition, next) in partitions {
            let fetching = Fetching {
                next,
                generation,
                paused: false,
            };
            state.partitions.insert(partition, fetching);
        }
        self.0.changed.notify_all();
    }

    /// Stops fetching `partition` for now (`paused`), or goes on with it.
    pub fn pause(&self, partition: i32, paused: bool) {
        if let Some(f) = self.0.state().partitions.get_mut(&partition) {
            f.paused = paused;
        }
        self.0.changed.notify_all();
    }

    /// Stops fetching `partitions`; whatever was fetched for them is dropped.
    pub fn revoke(&self, partitions: &[i32]) {
        let mut state = self.0.state();
        for p in partitions {
            state.partitions.remove(p);
        }
    }
}

/// The fetch thread and the channel it fills.
pub struct Fetcher {
    shared: Arc<Shared>,
    blocks: Receiver<Result<MessageBlock, String>>,
}

impl Fetcher {
    /// Starts the fetch thread; it waits until partitions are assigned.
    pub fn start(kafka: &ClientOptions, settings: FetchSettings) -> Result<Fetcher> {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            sockets: Mutex::default(),
        });
        let (tx, blocks) = mpsc::sync_channel(QUEUED_BLOCKS);
        let mut round = Round {
            shared: shared.clone(),
            probe: kafka.metadata_client()?,
            settings,
            connections: HashMap::new(),
            leaders: HashMap::new(),
            addresses: HashMap::new(),
            correlation: 0,
            ended: HashMap::new(),
            answered: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("kpipe-fetch".into())
            .spawn(move || {
                if let Err(e) = round.run(&tx) {
                    let _ = tx.send(Err(format!("{e:#}")));
                }
            })?;
        Ok(Fetcher { shared, blocks })
    }

    pub fn control(&self) -> FetchControl {
        FetchControl(self.shared.clone())
    }

    /// Some partition is assigned to be fetched.
    pub fn assigned(&self) -> bool {
        !self.shared.state().partitions.is_empty()
    }

    /// The next block of a currently assigned partition, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<Option<MessageBlock>> {
        let received = self.blocks.recv_timeout(timeout);
        let block = match received {
            Ok(Ok(block)) => block,
            Ok(Err(e)) => bail!("fetching failed: {e}"),
            Err(RecvTimeoutError::Timeout) => return Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("the fetch thread stopped"),
        };
        let current = self
            .shared
            .state()
            .partitions
            .get(&block.partition)
            .is_some_and(|f| f.generation == block.generation);
        Ok(current.then_some(block))
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        let sockets = self
            .shared
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for socket in sockets.values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The fetch thread's own state.
struct Round {
    shared: Arc<Shared>,
    probe: BaseConsumer<QuietContext>,
    settings: FetchSettings,
    connections: HashMap<i32, Connection>,
    /// Partition to leader, empty when it must be looked up again.
    leaders: HashMap<i32, i32>,
    addresses: HashMap<i32, String>,
    correlation: i32,
    /// Partitions last said to be read to their end, by assignment generation.
    ended: HashMap<i32, u64>,
    /// Partitions answered at least once, by assignment generation.
    answered: HashMap<i32, u64>,
}

/// How long the broker may hold a request for data. Not at all while a
/// partition asked for has not been answered since it was assigned: an empty
/// one then says at once where its end is, and a bounded read of an empty
/// topic ends without waiting out `fetch.wait.max.ms`.
fn max_wait_ms(settings: &FetchSettings, answered: &HashMap<i32, u64>, asked: &[Asked]) -> i32 {
    let first = asked
        .iter()
        .any(|a| answered.get(&a.partition) != Some(&a.generation));
    if first {
        0
    } else {
        settings.max_wait_ms
    }
}

/// A partition of one request, as it stood when the request was sent.
#[derive(Clone, Copy)]
struct Asked {
    partition: i32,
    offset: i64,
    generation: u64,
}

impl Round {
    fn run(&mut self, tx: &SyncSender<Result<MessageBlock, String>>) -> Result<()> {
        while !self.shared.stopped.load(Ordering::Relaxed) {
            let Some(wanted) = self.wanted() else {
                continue;
            };
            let ok = self.fetch(&wanted, tx)?;
            if !ok && !self.shared.stopped.load(Ordering::Relaxed) {
                std::thread::sleep(RETRY_BACKOFF);
            }
        }
        Ok(())
    }

    /// The partitions to fetch and their offsets, once there are any;
    /// resolves partitions waiting for `auto.offset.reset` first.
    fn wanted(&mut self) -> Option<Vec<Asked>> {
        let unresolved: Vec<(i32, u64)> = {
            let state = self.shared.state();
            let unresolved: Vec<_> = state
                .partitions
                .iter()
                .filter(|(_, f)| f.next.is_none())
                .map(|(p, f)| (*p, f.generation))
                .collect();
            if unresolved.is_empty() {
                let asked = state.asked();
                if asked.is_empty() {
                    // Nothing assigned, or all of it paused: wait for a change.
                    let _ = self
                        .shared
                        .changed
                        .wait_timeout(state, Duration::from_millis(100));
                    return None;
                }
                return Some(asked);
            }
            unresolved
        };
        for (partition, generation) in unresolved {
            // An unreachable cluster is waited out, as librdkafka does.
            let watermarks =
                self.probe
                    .fetch_watermarks(&self.settings.topic, partition, CONNECT_TIMEOUT);
            let Ok((low, high)) = watermarks.inspect_err(|e| {
                tracing::debug!(partition, "cannot read the partition's offsets: {e}")
            }) else {
                std::thread::sleep(RETRY_BACKOFF);
                return None;
            };
            let start = if self.settings.reset_to_earliest {
                low
            } else {
                high
            };
            self.set_next(partition, generation, Some(start));
        }
        None
    }

    /// Moves a partition's next offset (None: to be reset), unless it was
    /// reassigned meanwhile.
    fn set_next(&self, partition: i32, generation: u64, next: Option<i64>) {
        if let Some(f) = self.shared.state().partitions.get_mut(&partition) {
            if f.generation == generation {
                f.next = next;
            }
        }
    }

    /// One round: a request to every leader, then their answers. False when
    /// something needs a retry after a pause.
    fn fetch(
        &mut self,
        wanted: &[Asked],
        tx: &SyncSender<Result<MessageBlock, String>>,
    ) -> Result<bool> {
        if wanted
            .iter()
            .any(|a| !self.leaders.contains_key(&a.partition))
        {
            // An unreachable cluster is waited out, as librdkafka does.
            if let Err(e) = self.look_up_leaders() {
                tracing::debug!("{e:#}");
                return Ok(false);
            }
        }
        let mut by_leader: BTreeMap<i32, Vec<Asked>> = BTreeMap::new();
        for asked in wanted {
            if let Some(leader) = self.leaders.get(&asked.partition) {
                by_leader.entry(*leader).or_default().push(*asked);
            }
        }
        // A partition without a leader right now waits for the next round.
        let mut healthy = by_leader.values().map(Vec::len).sum::<usize>() == wanted.len();
        let mut sent = Vec::new();
        for (leader, asked) in by_leader {
            match self.send(leader, &asked) {
                Ok(correlation) => sent.push((leader, asked, correlation)),
                Err(e) => {
                    tracing::debug!(leader, "fetch request failed: {e:#}");
                    self.forget(leader);
                    healthy = false;
                }
            }
        }
        for (leader, asked, correlation) in sent {
            let response = self
                .connections
                .get_mut(&leader)
                .ok_or_else(|| anyhow!("connection to broker {leader} lost"))
                .and_then(|c| c.receive(correlation));
            let response = match response {
                Ok(response) => response,
                Err(e) => {
                    tracing::debug!(leader, "fetch answer failed: {e:#}");
                    self.forget(leader);
                    healthy = false;
                    continue;
                }
            };
            if let Some(e) = ResponseError::try_from_code(response.error_code) {
                tracing::debug!(leader, "fetch refused: {e}");
                healthy = false;
            }
            for topic in response.responses {
                for data in topic.partitions {
                    let Some(asked) = asked.iter().find(|a| a.partition == data.partition_index)
                    else {
                        continue;
                    };
                    healthy &= self.take(*asked, data, tx)?;
                }
            }
        }
        Ok(healthy)
    }

    /// Handles one partition's answer; false when it needs a retry.
    fn take(
        &mut self,
        asked: Asked,
        data: PartitionData,
        tx: &SyncSender<Result<MessageBlock, String>>,
    ) -> Result<bool> {
        match ResponseError::try_from_code(data.error_code) {
            None => {
                self.answered.insert(asked.partition, asked.generation);
            }
            Some(ResponseError::OffsetOutOfRange) => {
                tracing::warn!(
                    partition = asked.partition,
                    offset = asked.offset,
                    "offset out of range; starting again as auto.offset.reset says"
                );
                self.set_next(asked.partition, asked.generation, None);
                return Ok(true);
            }
            Some(e) if e.is_retriable() => {
                tracing::debug!(
                    partition = asked.partition,
                    "fetch: {e:?}; looking up leaders again"
                );
                self.leaders.clear();
                return Ok(false);
            }
            Some(e) => bail!(
                "fetching {} partition {} failed: {e}",
                self.settings.topic,
                asked.partition
            ),
        }
        // What a reader can read now: up to the last stable offset when it
        // skips open transactions.
        let end = if self.settings.read_committed && data.last_stable_offset >= 0 {
            data.last_stable_offset
        } else {
            data.high_watermark
        };
        let Some(records) = data.records.filter(|r| !r.is_empty()) else {
            // Read to the end: said once per assignment, until records come again.
            if asked.offset >= end && self.ended.get(&asked.partition) != Some(&asked.generation) {
                self.ended.insert(asked.partition, asked.generation);
                let mut block = MessageBlock::new(asked.partition, Bytes::new(), asked.generation);
                block.next_offset = asked.offset;
                block.at_end = true;
                let _ = tx.send(Ok(block));
            }
            return Ok(true);
        };
        let aborted = if self.settings.read_committed {
            data.aborted_transactions.unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut blocks = read_blocks(&records, &asked, aborted).with_context(|| {
            format!(
                "{} partition {} at offset {}",
                self.settings.topic, asked.partition, asked.offset
            )
        })?;
        if let Some(last) = blocks.last_mut() {
            last.at_end = last.next_offset >= end;
            if last.at_end {
                self.ended.insert(asked.partition, asked.generation);
            } else {
                self.ended.remove(&asked.partition);
            }
            self.set_next(asked.partition, asked.generation, Some(last.next_offset));
        }
        for block in blocks {
            if tx.send(Ok(block)).is_err() {
                self.shared.stopped.store(true, Ordering::Relaxed);
            }
        }
        Ok(true)
    }

    fn look_up_leaders(&mut self) -> Result<()> {
        let metadata = self
            .probe
            .fetch_metadata(Some(&self.settings.topic), CONNECT_TIMEOUT)
            .with_context(|| format!("cannot look up {}'s leaders", self.settings.topic))?;
        self.addresses = metadata
            .brokers()
            .iter()
            .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
            .collect();
        self.leaders = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == self.settings.topic)
            .flat_map(|t| t.partitions())
            .filter(|p| p.leader() >= 0)
            .map(|p| (p.id(), p.leader()))
            .collect();
        Ok(())
    }

    fn forget(&mut self, leader: i32) {
        self.connections.remove(&leader);
        self.leaders.clear();
        if let Ok(mut sockets) = self.shared.sockets.lock() {
            sockets.remove(&leader);
        }
    }

    fn send(&mut self, leader: i32, asked: &[Asked]) -> Result<i32> {
        if !self.connections.contains_key(&leader) {
            let address = self
                .addresses
                .get(&leader)
                .ok_or_else(|| anyhow!("broker {leader} is not in the metadata"))?;
            let wait = Duration::from_millis(self.settings.max_wait_ms.max(0) as u64);
            let connection = Connection::open(address, wait + CONNECT_TIMEOUT)?;
            if let Ok(mut sockets) = self.shared.sockets.lock() {
                sockets.insert(leader, connection.stream.try_clone()?);
            }
            self.connections.insert(leader, connection);
        }
        let settings = &self.settings;
        let partitions = asked
            .iter()
            .map(|a| {
                FetchPartition::default()
                    .with_partition(a.partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(a.offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(settings.partition_max_bytes)
            })
            .collect();
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(max_wait_ms(settings, &self.answered, asked))
            .with_min_bytes(settings.min_bytes)
            .with_max_bytes(settings.max_bytes)
            .with_isolation_level(i8::from(settings.read_committed))
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(settings.topic.clone())))
                .with_partitions(partitions)]);
        self.correlation = self.correlation.wrapping_add(1);
        let connection = self.connections.get_mut(&leader).expect("connected above");
        connection.send(&request, self.correlation, &settings.client_id)?;
        Ok(self.correlation)
    }
}

/// Splits one partition's fetched record set into blocks: a run of plain
/// batches is one block pointing into the response; a compressed batch is a
/// block of its own, over its decompressed records. Records before the asked
/// offset, control batches and aborted transactions are left out; a batch cut
/// off at the end of the response is fetched again next round.
fn read_blocks(
    records: &Bytes,
    asked: &Asked,
    mut aborted: Vec<AbortedTransaction>,
) -> Result<Vec<MessageBlock>> {
    aborted.sort_by_key(|a| a.first_offset);
    let mut aborted = aborted.into_iter().peekable();
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut blocks = Vec::new();
    let mut plain = MessageBlock::new(asked.partition, records.clone(), asked.generation);
    let mut at = 0;
    while at < records.len() {
        let batch = match Batch::parse(&records[at..]) {
            Ok(batch) => batch,
            Err(kpipe_records::BatchError::Truncated) => break,
            Err(e) => return Err(e.into()),
        };
        let start = at;
        at += batch.len();
        while let Some(txn) = aborted.next_if(|t| t.first_offset <= batch.last_offset()) {
            aborting.insert(txn.producer_id.0);
        }
        let skip = if batch.is_control() {
            // A commit or abort marker ends its producer's transaction.
            aborting.remove(&batch.producer_id());
            true
        } else {
            batch.is_transactional() && aborting.contains(&batch.producer_id())
        };
        let keep = |span: &RecordSpan| span.offset >= asked.offset;
        if skip {
            plain.next_offset = batch.next_offset();
        } else if batch.compression() == 0 {
            kpipe_records::read_records(
                &batch,
                batch.records(),
                start + kpipe_records::HEADER_LEN,
                |span| {
                    if keep(&span) {
                        plain.messages.push(span);
                    }
                },
            )?;
            plain.next_offset = batch.next_offset();
        } else {
            let section = kpipe_records::decompress(&batch)?;
            let mut block = MessageBlock::new(asked.partition, section.clone(), asked.generation);
            kpipe_records::read_records(&batch, &section, 0, |span| {
                if keep(&span) {
                    block.messages.push(span);
                }
            })?;
            block.next_offset = batch.next_offset();
            if plain.is_touched() {
                let next = MessageBlock::new(asked.partition, records.clone(), asked.generation);
                blocks.push(std::mem::replace(&mut plain, next));
            }
            blocks.push(block);
        }
    }
    if plain.is_touched() {
        blocks.push(plain);
    }
    Ok(blocks)
}

/// One broker connection, requests answered in order.
struct Connection {
    stream: TcpStream,
    frame: BytesMut,
}

impl Connection {
    fn open(address: &str, read_timeout: Duration) -> Result<Connection> {
        let mut last = None;
        for addr in address
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {address}"))?
        {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(read_timeout))?;
                    return Ok(Connection {
                        stream,
                        frame: BytesMut::new(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow!(
            "cannot connect to {address}: {}",
            last.map_or("no address".into(), |e| e.to_string())
        ))
    }

    fn send(&mut self, request: &FetchRequest, correlation: i32, client_id: &str) -> Result<()> {
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Fetch as i16)
            .with_request_api_version(FETCH_VERSION)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
        self.frame.clear();
        self.frame.extend_from_slice(&[0; 4]);
        header.encode(&mut self.frame, FetchRequest::header_version(FETCH_VERSION))?;
        request.encode(&mut self.frame, FETCH_VERSION)?;
        let len = (self.frame.len() - 4) as u32;
        self.frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&self.frame)?;
        Ok(())
    }

    fn receive(&mut self, correlation: i32) -> Result<FetchResponse> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut body = Vec::with_capacity(len);
        // read_to_end into spare capacity: no zeroing of a buffer of megabytes.
        (&mut self.stream).take(len as u64).read_to_end(&mut body)?;
        if body.len() < len {
            bail!("connection closed mid-answer");
        }
        let mut body = Bytes::from(body);
        let header =
            ResponseHeader::decode(&mut body, FetchResponse::header_version(FETCH_VERSION))?;
        if header.correlation_id != correlation {
            bail!(
                "answer {} arrived for request {correlation}",
                header.correlation_id
            );
        }
        FetchResponse::decode(&mut body, FETCH_VERSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::ProducerId;
    use kafka_protocol::records::Compression;
    use kpipe_records::testing::{encode_spec, Spec};

    /// A batch of `n` records from `base`, valued `v<offset>`.
    fn batch(
        base: i64,
        n: i64,
        producer: i64,
        kind: (bool, bool),
        compression: Compression,
    ) -> Vec<u8> {
        let (transactional, control) = kind;
        encode_spec(&Spec {
            base,
            count: n,
            timestamp: 1000,
            compression,
            producer_id: producer,
            transactional,
            control,
        })
    }

    const PLAIN: (bool, bool) = (false, false);

    fn asked(offset: i64) -> Asked {
        Asked {
            partition: 0,
            offset,
            generation: 1,
        }
    }

    fn values(blocks: &[MessageBlock]) -> Vec<String> {
        blocks
            .iter()
            .flat_map(|b| {
                b.messages
                    .iter()
                    .map(|m| String::from_utf8(b.payload(m).to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_round_waits_for_data_only_once_every_partition_was_answered() {
        let settings = FetchSettings {
            topic: "t".into(),
            client_id: "kpipe".into(),
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            read_committed: true,
            reset_to_earliest: true,
        };
        let at = |partition, generation| Asked {
            partition,
            offset: 0,
            generation,
        };
        let mut answered = HashMap::new();
        assert_eq!(max_wait_ms(&settings, &answered, &[at(0, 1), at(1, 1)]), 0);
        answered.insert(0, 1);
        assert_eq!(max_wait_ms(&settings, &answered, &[at(0, 1), at(1, 1)]), 0);
        answered.insert(1, 1);
        assert_eq!(
            max_wait_ms(&settings, &answered, &[at(0, 1), at(1, 1)]),
            500
        );
        // Assigned again: a new generation is a first answer again.
        assert_eq!(max_wait_ms(&settings, &answered, &[at(0, 2), at(1, 1)]), 0);
    }

    #[test]
    fn paused_and_unplaced_partitions_are_left_out_of_a_round() {
        let control = FetchControl(Arc::new(Shared {
            state: Mutex::default(),
            changed: Condvar::new(),
            stopped: AtomicBool::new(false),
            sockets: Mutex::default(),
        }));
        control.assign(&[(0, Some(5)), (1, Some(7)), (2, None)]);
        let asked = |control: &FetchControl| -> Vec<(i32, i64)> {
            let state = control.0.state();
            state
                .asked()
                .iter()
                .map(|a| (a.partition, a.offset))
                .collect()
        };
        assert_eq!(asked(&control), [(0, 5), (1, 7)]);
        control.pause(1, true);
        assert_eq!(asked(&control), [(0, 5)]);
        control.pause(0, true);
        assert_eq!(asked(&control), []);
        control.pause(1, false);
        assert_eq!(asked(&control), [(1, 7)]);
        control.revoke(&[1]);
        control.pause(1, false);
        assert_eq!(asked(&control), []);
    }

    #[test]
    fn plain_runs_share_the_response_and_compressed_batches_get_their_own_block() {
        let mut records = batch(0, 5, -1, PLAIN, Compression::None);
        records.extend(batch(5, 3, -1, PLAIN, Compression::Zstd));
        records.extend(batch(8, 2, -1, PLAIN, Compression::None));
        let records = Bytes::from(records);
        let blocks = read_blocks(&records, &asked(2), Vec::new()).unwrap();
        assert_eq!(
            values(&blocks),
            (2..10).map(|o| format!("v{o}")).collect::<Vec<_>>()
        );
        let ends: Vec<i64> = blocks.iter().map(|b| b.next_offset).collect();
        assert_eq!(ends, vec![5, 8, 10]);
        assert_eq!(blocks[0].messages[0].timestamp, 1002);
    }

    #[test]
    fn aborted_transactions_and_markers_are_left_out_but_passed_over() {
        let mut records = batch(0, 3, -1, PLAIN, Compression::None);
        records.extend(batch(3, 2, 7, (true, false), Compression::None));
        records.extend(batch(5, 1, 7, (true, true), Compression::None));
        records.extend(batch(6, 2, 8, (true, false), Compression::None));
        let records = Bytes::from(records);
        let aborted = vec![AbortedTransaction::default()
            .with_producer_id(ProducerId(7))
            .with_first_offset(3)];
        let blocks = read_blocks(&records, &asked(0), aborted).unwrap();
        assert_eq!(values(&blocks), ["v0", "v1", "v2", "v6", "v7"]);
        assert_eq!(blocks.last().unwrap().next_offset, 8);
        // Read uncommitted (no aborted list), everything but the marker shows.
        let blocks = read_blocks(&records, &asked(0), Vec::new()).unwrap();
        assert_eq!(values(&blocks).len(), 7);
    }

    #[test]
    fn a_batch_cut_off_by_the_size_limit_waits_for_the_next_round() {
        let mut records = batch(0, 2, -1, PLAIN, Compression::None);
        let first = records.len();
        records.extend(batch(2, 4, -1, PLAIN, Compression::None));
        records.truncate(first + 30);
        let blocks = read_blocks(&Bytes::from(records), &asked(0), Vec::new()).unwrap();
        assert_eq!(values(&blocks), ["v0", "v1"]);
        assert_eq!(blocks[0].next_offset, 2);
        let none = read_blocks(&Bytes::from_static(&[0; 10]), &asked(0), Vec::new()).unwrap();
        assert!(none.is_empty());
    }
}

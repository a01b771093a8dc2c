//! One partition's log: append-only segment files of record batches with a sparse
//! offset index and a time index beside each, recovered after a crash by CRC.
//!
//! Files in a partition directory, named after the segment's base offset:
//! `00000000000000000000.log` (batches exactly as produced, offsets assigned),
//! `.index` (pairs of relative offset and byte position, every `index.interval.bytes`),
//! `.timeindex` (pairs of the largest timestamp *before* a batch and that batch's
//! relative offset), and `log-start-offset` (moved by DeleteRecords and retention).
//! Segments are fsynced when they roll, so after a kill -9 only the active one can
//! hold a torn tail: recovery rescans it, verifies each batch's CRC, truncates at
//! the first bad one and rebuilds its indexes.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::batch::{self, Batch, HEADER_LEN};
use super::write_atomic;

const INDEX_ENTRY: usize = 8;
const TIME_INDEX_ENTRY: usize = 12;
/// Batches remembered per producer for duplicate detection, as in Kafka.
const PRODUCER_BATCH_MEMORY: usize = 5;
const LOG_START_FILE: &str = "log-start-offset";
/// Idempotent producers' state as of the start of the active segment, written
/// when a segment rolls, so duplicates are still caught after a restart even when
/// a producer's last batches sit in older segments.
const PRODUCER_SNAPSHOT_FILE: &str = "producer-state.json";

/// The settings of a topic that shape its log; read on every call so that
/// altered topic configs apply at once.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub index_interval_bytes: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub delete_enabled: bool,
    pub log_append_time: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            delete_enabled: true,
            log_append_time: false,
        }
    }
}

/// Why an append was refused; maps onto a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Corrupt(#[from] batch::BatchError),
    #[error("producer epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch { got: i16, current: i16 },
    #[error("sequence {got} does not follow {last} for producer {producer_id}")]
    OutOfOrderSequence {
        producer_id: i64,
        got: i32,
        last: i32,
    },
    #[error("transactional batches are not supported by this broker")]
    Transactional,
    #[error("{0}")]
    Io(String),
}

impl From<io::Error> for AppendError {
    fn from(e: io::Error) -> Self {
        AppendError::Io(e.to_string())
    }
}

/// Where a record set landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: i64,
    /// The broker's clock for LogAppendTime topics, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// True when every batch was a retry of one already in the log.
    pub duplicate: bool,
}

/// Bytes read for a fetch, always whole batches.
#[derive(Debug, Clone)]
pub struct Slice {
    pub records: Bytes,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ProducerState {
    epoch: i16,
    /// (first sequence, last sequence, base offset) of the latest batches.
    recent: VecDeque<(i32, i32, i64)>,
}

impl ProducerState {
    fn last_sequence(&self) -> i32 {
        self.recent.back().map_or(-1, |b| b.1)
    }
    fn remember(&mut self, first: i32, last: i32, base_offset: i64) {
        if self.recent.len() == PRODUCER_BATCH_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back((first, last, base_offset));
    }
}

enum Verdict {
    Append,
    Duplicate(i64),
}

struct Segment {
    base_offset: i64,
    next_offset: i64,
    size: u64,
    max_timestamp: i64,
    created_ms: i64,
    log: Arc<File>,
    index_file: File,
    time_index_file: File,
    index: Vec<(u32, u32)>,
    time_index: Vec<(i64, u32)>,
    bytes_since_index: u64,
}

fn segment_path(dir: &Path, base: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

impl Segment {
    /// Opens (creating when missing) the three files of the segment at `base_offset`.
    fn open_files(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        Ok(Segment {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_timestamp: -1,
            created_ms: now_ms(),
            log: Arc::new(open_rw(&segment_path(dir, base_offset, "log"))?),
            index_file: open_rw(&segment_path(dir, base_offset, "index"))?,
            time_index_file: open_rw(&segment_path(dir, base_offset, "timeindex"))?,
            index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
        })
    }

    fn create(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let segment = Self::open_files(dir, base_offset)?;
        super::sync_dir(dir)?;
        Ok(segment)
    }

    /// Opens an existing segment. The active one (`rescan`) is read batch by batch
    /// with CRC checks and truncated at the first torn or corrupt batch; a closed one
    /// trusts its index files unless they are damaged.
    fn open(
        dir: &Path,
        base_offset: i64,
        rescan: bool,
        producers: &mut HashMap<i64, ProducerState>,
    ) -> io::Result<Segment> {
        let mut segment = Self::open_files(dir, base_offset)?;
        if let Ok(modified) = segment.log.metadata().and_then(|m| m.modified()) {
            segment.created_ms = modified
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
        }
        let file_len = segment.log.metadata()?.len();
        if !rescan && segment.load_indexes(dir, file_len)? {
            return Ok(segment);
        }
        segment.rebuild(file_len, rescan.then_some(producers))?;
        Ok(segment)
    }

    /// Loads index files of a closed segment; false when they cannot be trusted.
    fn load_indexes(&mut self, dir: &Path, file_len: u64) -> io::Result<bool> {
        let index = fs::read(segment_path(dir, self.base_offset, "index"))?;
        let time_index = fs::read(segment_path(dir, self.base_offset, "timeindex"))?;
        if index.len() % INDEX_ENTRY != 0 || time_index.len() % TIME_INDEX_ENTRY != 0 {
            return Ok(false);
        }
        self.index = index
            .chunks_exact(INDEX_ENTRY)
            .map(|c| {
                (
                    u32::from_be_bytes(c[..4].try_into().unwrap()),
                    u32::from_be_bytes(c[4..].try_into().unwrap()),
                )
            })
            .collect();
        self.time_index = time_index
            .chunks_exact(TIME_INDEX_ENTRY)
            .map(|c| {
                (
                    i64::from_be_bytes(c[..8].try_into().unwrap()),
                    u32::from_be_bytes(c[8..].try_into().unwrap()),
                )
            })
            .collect();
        // Walk from the last indexed batch to learn where the segment ends.
        let mut pos = self.index.last().map_or(0, |e| e.1 as u64);
        let mut max_ts = self.time_index.last().map_or(-1, |e| e.0);
        let mut next = self.base_offset;
        while pos < file_len {
            let Some(header) = self.read_header(pos, file_len)? else {
                return Ok(false);
            };
            let Ok(b) = Batch::parse_header(&header) else {
                return Ok(false);
            };
            max_ts = max_ts.max(b.max_timestamp());
            next = b.next_offset();
            pos += b.len() as u64;
        }
        if pos != file_len || (file_len > 0 && self.index.is_empty()) {
            return Ok(false);
        }
        self.size = file_len;
        self.next_offset = next;
        self.max_timestamp = max_ts;
        Ok(true)
    }

    /// Reads the header of the batch at `pos`, if a whole batch ends before `limit`.
    fn read_header(&self, pos: u64, limit: u64) -> io::Result<Option<[u8; HEADER_LEN]>> {
        if pos + HEADER_LEN as u64 > limit {
            return Ok(None);
        }
        let mut header = [0u8; HEADER_LEN];
        self.log.read_exact_at(&mut header, pos)?;
        match batch::framed_len(&header) {
            Some(len) if len >= HEADER_LEN && pos + len as u64 <= limit => Ok(Some(header)),
            _ => Ok(None),
        }
    }

    /// Rescans the segment batch by batch (memory stays at one batch, whatever
    /// the segment's size), verifying CRCs, cutting a torn or corrupt tail and
    /// rewriting the indexes.
    fn rebuild(
        &mut self,
        file_len: u64,
        mut producers: Option<&mut HashMap<i64, ProducerState>>,
    ) -> io::Result<()> {
        self.index.clear();
        self.time_index.clear();
        self.index_file.set_len(0)?;
        self.time_index_file.set_len(0)?;
        let mut pos = 0u64;
        let mut entries = IndexBuffers::default();
        let mut buf = Vec::new();
        while pos + batch::LOG_OVERHEAD as u64 <= file_len {
            let mut length_field = [0u8; batch::LOG_OVERHEAD];
            self.log.read_exact_at(&mut length_field, pos)?;
            let Some(len) = batch::framed_len(&length_field) else {
                break;
            };
            if len < HEADER_LEN || pos + len as u64 > file_len {
                break;
            }
            buf.resize(len, 0);
            self.log.read_exact_at(&mut buf, pos)?;
            let Ok(b) = Batch::parse_checked(&buf) else {
                break;
            };
            if b.base_offset() < self.next_offset {
                break;
            }
            if let Some(producers) = producers.as_deref_mut() {
                track_producer(producers, &b);
            }
            self.note_batch(&b, pos, 0, &mut entries);
            pos += len as u64;
        }
        if pos < file_len {
            tracing::warn!(
                segment = self.base_offset,
                kept = pos,
                dropped = file_len - pos,
                "truncating torn or corrupt log tail"
            );
            self.log.set_len(pos)?;
            self.log.sync_all()?;
        }
        self.size = pos;
        entries.write(self)?;
        Ok(())
    }

    /// Records a batch that now sits at `pos` in the index buffers.
    fn note_batch(&mut self, b: &Batch, pos: u64, interval: u64, entries: &mut IndexBuffers) {
        let relative = (b.base_offset() - self.base_offset) as u32;
        if self.index.is_empty() || self.bytes_since_index >= interval {
            self.index.push((relative, pos as u32));
            entries.index.extend_from_slice(&relative.to_be_bytes());
            entries.index.extend_from_slice(&(pos as u32).to_be_bytes());
            self.time_index.push((self.max_timestamp, relative));
            entries
                .time
                .extend_from_slice(&self.max_timestamp.to_be_bytes());
            entries.time.extend_from_slice(&relative.to_be_bytes());
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += b.len() as u64;
        self.max_timestamp = self.max_timestamp.max(b.max_timestamp());
        self.next_offset = b.next_offset();
    }

    /// Byte position of the batch holding `offset`, or the segment's end.
    fn position_of(&self, offset: i64) -> io::Result<u64> {
        let relative = (offset - self.base_offset).max(0) as u32;
        let slot = self.index.partition_point(|e| e.0 <= relative);
        let mut pos = if slot == 0 {
            0
        } else {
            self.index[slot - 1].1 as u64
        };
        while let Some(header) = self.read_header(pos, self.size)? {
            let b = Batch::parse_header(&header).map_err(invalid_data)?;
            if b.next_offset() > offset {
                return Ok(pos);
            }
            pos += b.len() as u64;
        }
        Ok(self.size)
    }

    /// Whole batches from `pos`: at least one, then as many as fit in `max_bytes`.
    fn read_from(&self, pos: u64, max_bytes: u64) -> io::Result<Bytes> {
        if pos >= self.size {
            return Ok(Bytes::new());
        }
        let mut length_field = [0u8; batch::LOG_OVERHEAD];
        self.log.read_exact_at(&mut length_field, pos)?;
        let first = batch::framed_len(&length_field).unwrap_or(0) as u64;
        let want = first.max(max_bytes.min(self.size - pos));
        let mut buf = vec![0u8; want as usize];
        self.log.read_exact_at(&mut buf, pos)?;
        let mut end = 0usize;
        while let Some(len) = batch::framed_len(&buf[end..]) {
            if end + len > buf.len() {
                break;
            }
            end += len;
        }
        buf.truncate(end);
        Ok(Bytes::from(buf))
    }

    fn remove_files(dir: &Path, base: i64) {
        for ext in ["log", "index", "timeindex"] {
            let _ = fs::remove_file(segment_path(dir, base, ext));
        }
    }
}

fn invalid_data(e: batch::BatchError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[derive(Default)]
struct IndexBuffers {
    index: Vec<u8>,
    time: Vec<u8>,
}

impl IndexBuffers {
    fn write(self, segment: &mut Segment) -> io::Result<()> {
        if !self.index.is_empty() {
            segment.index_file.write_all(&self.index)?;
            segment.time_index_file.write_all(&self.time)?;
        }
        Ok(())
    }
}

fn track_producer(producers: &mut HashMap<i64, ProducerState>, b: &Batch) {
    if b.producer_id() < 0 {
        return;
    }
    let state = producers
        .entry(b.producer_id())
        .or_insert_with(|| ProducerState {
            epoch: b.producer_epoch(),
            recent: VecDeque::new(),
        });
    if b.producer_epoch() != state.epoch {
        *state = ProducerState {
            epoch: b.producer_epoch(),
            recent: VecDeque::new(),
        };
    }
    // Recovery may rescan batches the snapshot already holds.
    if state.recent.back().is_some_and(|r| r.2 >= b.base_offset()) {
        return;
    }
    state.remember(b.base_sequence(), b.last_sequence(), b.base_offset());
}

/// One partition's log. Callers serialise access (the broker holds it in a mutex).
pub struct PartitionLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    log_start_offset: i64,
    producers: HashMap<i64, ProducerState>,
}

impl PartitionLog {
    /// Opens the log in `dir`, creating it when empty and recovering it after a crash.
    pub fn open(dir: &Path) -> io::Result<PartitionLog> {
        fs::create_dir_all(dir)?;
        let mut bases: Vec<i64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        let mut producers: HashMap<i64, ProducerState> = fs::read(dir.join(PRODUCER_SNAPSHOT_FILE))
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default();
        let mut segments = Vec::with_capacity(bases.len().max(1));
        for (i, base) in bases.iter().enumerate() {
            segments.push(Segment::open(
                dir,
                *base,
                i + 1 == bases.len(),
                &mut producers,
            )?);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
        }
        let stored_start = fs::read_to_string(dir.join(LOG_START_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            segments,
            log_start_offset: 0,
            producers,
        };
        log.log_start_offset = stored_start
            .max(log.segments[0].base_offset)
            .min(log.next_offset());
        Ok(log)
    }

    pub fn next_offset(&self) -> i64 {
        self.active().next_offset
    }
    /// The high watermark: a single-node broker exposes everything it appended.
    pub fn high_watermark(&self) -> i64 {
        self.next_offset()
    }
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("a log always has an active segment")
    }

    /// The active segment's file, for an fsync outside the partition lock.
    pub fn active_file(&self) -> Arc<File> {
        self.active().log.clone()
    }

    /// Appends validated batches, assigning offsets; idempotent retries are
    /// recognised and answered with the offset they got the first time.
    pub fn append(
        &mut self,
        batches: &[Batch],
        config: &LogConfig,
    ) -> Result<Appended, AppendError> {
        let mut verdicts = Vec::with_capacity(batches.len());
        let mut pending: HashMap<i64, ProducerState> = HashMap::new();
        for b in batches {
            if b.is_transactional() || b.is_control() {
                return Err(AppendError::Transactional);
            }
            let verdict = self.check_sequence(b, &mut pending)?;
            verdicts.push(verdict);
        }
        if let [Verdict::Duplicate(base_offset), ..] = verdicts[..] {
            if verdicts.iter().all(|v| matches!(v, Verdict::Duplicate(_))) {
                return Ok(Appended {
                    base_offset,
                    log_append_time: -1,
                    log_start_offset: self.log_start_offset,
                    duplicate: true,
                });
            }
        }
        let append_time = config.log_append_time.then(now_ms);
        let total: usize = batches.iter().map(|b| b.len()).sum();
        self.maybe_roll(total as u64, config)?;
        let first_offset = self.next_offset();
        let mut owned = Vec::with_capacity(total);
        let mut offset = first_offset;
        for (b, verdict) in batches.iter().zip(&verdicts) {
            if matches!(verdict, Verdict::Duplicate(_)) {
                continue;
            }
            let start = owned.len();
            owned.extend_from_slice(b.bytes());
            batch::assign(&mut owned[start..], offset, append_time);
            offset += b.last_offset_delta() as i64 + 1;
        }
        let segment = self.segments.last_mut().expect("active segment");
        let start_pos = segment.size;
        if let Err(e) = segment.log.as_ref().write_all(&owned) {
            // Leave no partial batch behind for readers or for the next append.
            let _ = segment.log.set_len(start_pos);
            return Err(e.into());
        }
        segment.size += owned.len() as u64;
        let mut entries = IndexBuffers::default();
        let mut pos = 0usize;
        while pos < owned.len() {
            let b = Batch::parse(&owned[pos..]).expect("batch validated before append");
            segment.note_batch(
                &b,
                start_pos + pos as u64,
                config.index_interval_bytes,
                &mut entries,
            );
            track_producer(&mut self.producers, &b);
            pos += b.len();
        }
        entries.write(segment)?;
        Ok(Appended {
            base_offset: first_offset,
            log_append_time: append_time.unwrap_or(-1),
            log_start_offset: self.log_start_offset,
            duplicate: false,
        })
    }

    fn check_sequence(
        &self,
        b: &Batch,
        pending: &mut HashMap<i64, ProducerState>,
    ) -> Result<Verdict, AppendError> {
        let pid = b.producer_id();
        if pid < 0 {
            return Ok(Verdict::Append);
        }
        let Some(state) = pending
            .get(&pid)
            .or_else(|| self.producers.get(&pid))
            .cloned()
        else {
            let mut state = ProducerState {
                epoch: b.producer_epoch(),
                recent: VecDeque::new(),
            };
            state.remember(b.base_sequence(), b.last_sequence(), -1);
            pending.insert(pid, state);
            return Ok(Verdict::Append);
        };
        let epoch = b.producer_epoch();
        if epoch < state.epoch {
            return Err(AppendError::InvalidProducerEpoch {
                got: epoch,
                current: state.epoch,
            });
        }
        let mut state = if epoch > state.epoch {
            if b.base_sequence() != 0 {
                return Err(AppendError::OutOfOrderSequence {
                    producer_id: pid,
                    got: b.base_sequence(),
                    last: -1,
                });
            }
            ProducerState {
                epoch,
                recent: VecDeque::new(),
            }
        } else {
            if let Some(&(_, _, offset)) = state
                .recent
                .iter()
                .find(|r| r.0 == b.base_sequence() && r.1 == b.last_sequence())
            {
                return Ok(Verdict::Duplicate(offset));
            }
            let last = state.last_sequence();
            let expected = if last == i32::MAX { 0 } else { last + 1 };
            if last >= 0 && b.base_sequence() != expected {
                return Err(AppendError::OutOfOrderSequence {
                    producer_id: pid,
                    got: b.base_sequence(),
                    last,
                });
            }
            state
        };
        state.remember(b.base_sequence(), b.last_sequence(), -1);
        pending.insert(pid, state);
        Ok(Verdict::Append)
    }

    fn maybe_roll(&mut self, incoming: u64, config: &LogConfig) -> io::Result<()> {
        let active = self.active();
        let full = active.size > 0 && active.size + incoming > config.segment_bytes;
        let old = active.size > 0 && now_ms() - active.created_ms > config.segment_ms;
        if full || old {
            self.roll()?;
        }
        Ok(())
    }

    /// Seals the active segment (fsynced, so recovery never rescans it) and starts a new one.
    fn roll(&mut self) -> io::Result<()> {
        let active = self.active();
        active.log.sync_all()?;
        active.index_file.sync_all()?;
        active.time_index_file.sync_all()?;
        let snapshot = serde_json::to_vec(&self.producers).map_err(io::Error::other)?;
        write_atomic(&self.dir.join(PRODUCER_SNAPSHOT_FILE), &snapshot)?;
        let next = Segment::create(&self.dir, active.next_offset)?;
        self.segments.push(next);
        Ok(())
    }

    /// Whole batches starting at the one holding `offset`, from one segment.
    /// `None` when `offset` is outside [log start, high watermark].
    pub fn read(&self, offset: i64, max_bytes: u64) -> io::Result<Option<Slice>> {
        if offset < self.log_start_offset || offset > self.next_offset() {
            return Ok(None);
        }
        let slot = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .max(1)
            - 1;
        for segment in &self.segments[slot..] {
            if segment.next_offset <= offset {
                continue;
            }
            let pos = segment.position_of(offset)?;
            return Ok(Some(Slice {
                records: segment.read_from(pos, max_bytes)?,
            }));
        }
        Ok(Some(Slice {
            records: Bytes::new(),
        }))
    }

    /// The earliest offset whose record timestamp is at least `timestamp`,
    /// with that timestamp; `None` when every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> io::Result<Option<(i64, i64)>> {
        for segment in &self.segments {
            if segment.max_timestamp < timestamp || segment.next_offset <= self.log_start_offset {
                continue;
            }
            let slot = segment.time_index.partition_point(|e| e.0 < timestamp);
            let start = if slot == 0 {
                segment.base_offset
            } else {
                segment.base_offset + segment.time_index[slot - 1].1 as i64
            };
            let mut pos = segment.position_of(start.max(self.log_start_offset))?;
            while pos < segment.size {
                let data = segment.read_from(pos, 1)?;
                let b = Batch::parse(&data).map_err(invalid_data)?;
                if b.max_timestamp() >= timestamp {
                    if let Some(found) =
                        first_record_at_or_after(&data, timestamp, self.log_start_offset)
                    {
                        return Ok(Some(found));
                    }
                }
                pos += b.len() as u64;
            }
        }
        Ok(None)
    }

    /// The largest timestamp in the log and the offset of the record that has it.
    pub fn max_timestamp_offset(&self) -> io::Result<Option<(i64, i64)>> {
        // `rev` so that, of equal maxima, the earliest segment wins.
        let Some(segment) = self
            .segments
            .iter()
            .rev()
            .filter(|s| s.size > 0)
            .max_by_key(|s| s.max_timestamp)
        else {
            return Ok(None);
        };
        self.offset_for_timestamp(segment.max_timestamp)
            .map(|found| found.map(|(o, t)| (t, o)))
    }

    /// Moves the log start forward (DeleteRecords) and drops segments wholly before it.
    pub fn delete_records_before(&mut self, offset: i64) -> io::Result<i64> {
        if offset > self.log_start_offset {
            self.log_start_offset = offset.min(self.next_offset());
            write_atomic(
                &self.dir.join(LOG_START_FILE),
                self.log_start_offset.to_string().as_bytes(),
            )?;
            self.drop_segments_before_start()?;
        }
        Ok(self.log_start_offset)
    }

    fn drop_segments_before_start(&mut self) -> io::Result<()> {
        if self.active().next_offset <= self.log_start_offset && self.active().size > 0 {
            self.roll()?;
        }
        while self.segments.len() > 1 && self.segments[0].next_offset <= self.log_start_offset {
            let gone = self.segments.remove(0);
            Segment::remove_files(&self.dir, gone.base_offset);
        }
        Ok(())
    }

    /// Deletes whole segments past `retention.ms` or beyond `retention.bytes`.
    /// Returns how many segments went.
    pub fn enforce_retention(&mut self, config: &LogConfig) -> io::Result<usize> {
        if !config.delete_enabled {
            return Ok(0);
        }
        let before = self.segments.len();
        let now = now_ms();
        let expired = |s: &Segment| {
            config.retention_ms >= 0 && s.size > 0 && s.max_timestamp < now - config.retention_ms
        };
        if expired(self.active()) && self.segments[..self.segments.len() - 1].iter().all(expired) {
            self.roll()?;
        }
        let mut start = self.log_start_offset;
        let mut size = self.size_bytes() as i64;
        let mut drop = 0;
        for segment in &self.segments[..self.segments.len() - 1] {
            let over_size =
                config.retention_bytes >= 0 && size - segment.size as i64 >= config.retention_bytes;
            if !(expired(segment) || over_size) {
                break;
            }
            size -= segment.size as i64;
            start = start.max(segment.next_offset);
            drop += 1;
        }
        for gone in self.segments.drain(..drop) {
            Segment::remove_files(&self.dir, gone.base_offset);
        }
        if start > self.log_start_offset {
            self.log_start_offset = start;
            write_atomic(&self.dir.join(LOG_START_FILE), start.to_string().as_bytes())?;
        }
        Ok(before.saturating_sub(self.segments.len()))
    }

    /// Flushes the active segment to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.active().log.sync_data()
    }
}

/// Decodes one batch to find its first record at or after `timestamp` (and not
/// before the log start), returning (offset, timestamp).
fn first_record_at_or_after(data: &[u8], timestamp: i64, log_start: i64) -> Option<(i64, i64)> {
    let mut buf = Bytes::copy_from_slice(data);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).ok()?;
    set.records
        .iter()
        .find(|r| r.timestamp >= timestamp && r.offset >= log_start)
        .map(|r| (r.offset, r.timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::Compression;
    use kpipe_records::testing::encode;

    fn append(log: &mut PartitionLog, n: usize, ts: i64, config: &LogConfig) -> Appended {
        let bytes = encode(n, Compression::None, ts);
        let batches = batch::split_checked(&bytes).unwrap();
        log.append(&batches, config).unwrap()
    }

    #[test]
    fn appends_reads_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 1,
            ..Default::default()
        };
        let mut log = PartitionLog::open(dir.path()).unwrap();
        for i in 0..10 {
            assert_eq!(
                append(&mut log, 3, 1000 + i * 10, &config).base_offset,
                i * 3
            );
        }
        assert!(log.segment_count() > 1);
        let slice = log.read(7, 1).unwrap().unwrap();
        assert_eq!(Batch::parse(&slice.records).unwrap().base_offset(), 6);
        assert_eq!(log.offset_for_timestamp(1041).unwrap(), Some((13, 1041)));
        assert_eq!(log.offset_for_timestamp(5000).unwrap(), None);
        assert!(log.read(31, 100).unwrap().is_none());
        drop(log);

        // A torn tail (half a batch) is cut off on reopen; earlier data survives.
        let reopened = PartitionLog::open(dir.path()).unwrap();
        let last = reopened.segments.last().unwrap().base_offset;
        drop(reopened);
        let path = segment_path(dir.path(), last, "log");
        let tail = encode(2, Compression::None, 0);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&tail[..tail.len() / 2])
            .unwrap();
        let log = PartitionLog::open(dir.path()).unwrap();
        assert_eq!(log.next_offset(), 30);
        assert_eq!(log.offset_for_timestamp(1041).unwrap(), Some((13, 1041)));
    }

    #[test]
    fn idempotent_retry_is_not_appended_twice() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        let mut log = PartitionLog::open(dir.path()).unwrap();
        let with_sequence = |seq: i32| {
            let mut bytes = encode(2, Compression::None, 0);
            bytes[43..51].copy_from_slice(&7i64.to_be_bytes());
            bytes[51..53].copy_from_slice(&0i16.to_be_bytes());
            bytes[53..57].copy_from_slice(&seq.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            bytes
        };
        let first = with_sequence(0);
        let batches = batch::split_checked(&first).unwrap();
        assert_eq!(log.append(&batches, &config).unwrap().base_offset, 0);
        let retry = log.append(&batches, &config).unwrap();
        assert!(retry.duplicate);
        assert_eq!(log.next_offset(), 2);
        let gap = with_sequence(5);
        let err = log
            .append(&batch::split_checked(&gap).unwrap(), &config)
            .unwrap_err();
        assert!(matches!(err, AppendError::OutOfOrderSequence { .. }));
        let next = with_sequence(2);
        assert_eq!(
            log.append(&batch::split_checked(&next).unwrap(), &config)
                .unwrap()
                .base_offset,
            2
        );
        drop(log);
        // Producer state is rebuilt from the log, so a retry after restart is still caught.
        let mut log = PartitionLog::open(dir.path()).unwrap();
        assert!(
            log.append(&batch::split_checked(&next).unwrap(), &config)
                .unwrap()
                .duplicate
        );
    }

    #[test]
    fn retention_and_delete_records() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 200,
            ..Default::default()
        };
        let mut log = PartitionLog::open(dir.path()).unwrap();
        for _ in 0..6 {
            append(&mut log, 3, now_ms(), &config);
        }
        let segments = log.segment_count();
        assert!(segments >= 3);
        let by_size = LogConfig {
            retention_bytes: 1,
            ..config.clone()
        };
        assert_eq!(log.enforce_retention(&by_size).unwrap(), segments - 1);
        assert!(log.log_start_offset() > 0);
        assert_eq!(log.delete_records_before(18).unwrap(), 18);
        assert!(log.read(17, 100).unwrap().is_none());
        drop(log);
        assert_eq!(
            PartitionLog::open(dir.path()).unwrap().log_start_offset(),
            18
        );
        let mut log = PartitionLog::open(dir.path()).unwrap();
        append(&mut log, 1, 0, &config);
        let by_time = LogConfig {
            retention_ms: 1000,
            ..config
        };
        log.enforce_retention(&by_time).unwrap();
        assert_eq!(log.log_start_offset(), 19);
    }
}

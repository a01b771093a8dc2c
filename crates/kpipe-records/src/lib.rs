//! Kafka's record batch v2 format as it sits on the wire and on disk: batch
//! headers, the records inside a batch, and their compression.
//!
//! The broker stores batches byte for byte as producers sent them; it only ever
//! rewrites the fields the Kafka format leaves to the broker (base offset and
//! partition leader epoch, neither covered by the CRC) and, for topics with
//! `message.timestamp.type=LogAppendTime`, the max timestamp plus the CRC.
//! kpipe's own fetch path reads records straight out of fetched batches, as
//! byte ranges, so a consumer copies nothing it does not keep.

use std::ops::Range;

use bytes::Bytes;

/// Bytes in a v2 batch header, up to and including the record count.
pub const HEADER_LEN: usize = 61;
/// Bytes before the batch length field ends: base offset (8) + length (4).
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;

const TIMESTAMP_TYPE_BIT: i16 = 0x08;
const TRANSACTIONAL_BIT: i16 = 0x10;
const CONTROL_BIT: i16 = 0x20;
const COMPRESSION_BITS: i16 = 0x07;

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a produced record set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record set is truncated")]
    Truncated,
    #[error("record batch magic {0} is not supported; only v2 batches are")]
    UnsupportedMagic(i8),
    #[error("record batch CRC does not match its contents")]
    CrcMismatch,
    #[error("record batch header is inconsistent")]
    Malformed,
    #[error("record batch uses unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("record batch cannot be decompressed: {0}")]
    Decompress(String),
}

/// Total length of the batch starting at `buf`, if its length field is readable.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < LOG_OVERHEAD {
        return None;
    }
    let len = i32_at(buf, BATCH_LENGTH);
    (len >= 0).then(|| LOG_OVERHEAD + len as usize)
}

/// A borrowed view of one complete, validated-length batch.
#[derive(Clone, Copy)]
pub struct Batch<'a>(&'a [u8]);

// A batch always holds its 61-byte header, so an is_empty would only ever say false.
#[allow(clippy::len_without_is_empty)]
impl<'a> Batch<'a> {
    /// Reads only the header at the start of `buf`; the view's [`Batch::bytes`]
    /// is the header alone, while [`Batch::len`] is the whole batch's length.
    pub fn parse_header(buf: &'a [u8]) -> Result<Self, BatchError> {
        let len = framed_len(buf).ok_or(BatchError::Truncated)?;
        if len < HEADER_LEN {
            return Err(BatchError::Malformed);
        }
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated);
        }
        let magic = buf[MAGIC] as i8;
        if magic != 2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let batch = Batch(&buf[..HEADER_LEN]);
        if batch.record_count() < 0 || batch.last_offset_delta() < 0 {
            return Err(BatchError::Malformed);
        }
        Ok(batch)
    }

    /// Reads the whole batch at the start of `buf` without checking its CRC.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        let len = Self::parse_header(buf)?.len();
        if buf.len() < len {
            return Err(BatchError::Truncated);
        }
        Ok(Batch(&buf[..len]))
    }

    /// Like [`Batch::parse`], and verifies the CRC-32C over attributes..end.
    pub fn parse_checked(buf: &'a [u8]) -> Result<Self, BatchError> {
        let batch = Self::parse(buf)?;
        if crc32c::crc32c(&batch.0[ATTRIBUTES..]) != i32_at(batch.0, CRC) as u32 {
            return Err(BatchError::CrcMismatch);
        }
        Ok(batch)
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
    /// Length of the whole batch, from its length field.
    pub fn len(&self) -> usize {
        framed_len(self.0).expect("checked when parsed")
    }
    pub fn base_offset(&self) -> i64 {
        i64_at(self.0, BASE_OFFSET)
    }
    pub fn last_offset_delta(&self) -> i32 {
        i32_at(self.0, LAST_OFFSET_DELTA)
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + self.last_offset_delta() as i64
    }
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn attributes(&self) -> i16 {
        i16_at(self.0, ATTRIBUTES)
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & CONTROL_BIT != 0
    }
    pub fn base_timestamp(&self) -> i64 {
        i64_at(self.0, BASE_TIMESTAMP)
    }
    pub fn max_timestamp(&self) -> i64 {
        i64_at(self.0, MAX_TIMESTAMP)
    }
    pub fn producer_id(&self) -> i64 {
        i64_at(self.0, PRODUCER_ID)
    }
    pub fn producer_epoch(&self) -> i16 {
        i16_at(self.0, PRODUCER_EPOCH)
    }
    pub fn base_sequence(&self) -> i32 {
        i32_at(self.0, BASE_SEQUENCE)
    }
    /// Sequence of the batch's last record, wrapping as Kafka's sequences do.
    pub fn last_sequence(&self) -> i32 {
        let seq = self.base_sequence() as i64 + self.last_offset_delta() as i64;
        (seq % (i32::MAX as i64 + 1)) as i32
    }
    pub fn record_count(&self) -> i32 {
        i32_at(self.0, RECORD_COUNT)
    }
    /// The codec of the record section: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> i16 {
        self.attributes() & COMPRESSION_BITS
    }
    /// The record section as stored (compressed or not); needs the whole batch.
    pub fn records(&self) -> &'a [u8] {
        &self.0[HEADER_LEN..]
    }
}

/// Where one record of a batch sits in the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
    /// The record's headers, still encoded: most readers never look at them
    /// ([`headers`] decodes them).
    pub headers: Range<usize>,
}

/// The record section of a compressed batch, decompressed.
pub fn decompress(batch: &Batch<'_>) -> Result<Bytes, BatchError> {
    use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};
    let keep = |b: &mut Bytes| Ok(std::mem::take(b));
    let mut section = batch.records();
    let decompressed = match batch.compression() {
        1 => Gzip::decompress(&mut section, keep),
        2 => Snappy::decompress(&mut section, keep),
        3 => Lz4::decompress(&mut section, keep),
        4 => Zstd::decompress(&mut section, keep),
        codec => return Err(BatchError::UnknownCompression(codec)),
    };
    decompressed.map_err(|e| BatchError::Decompress(format!("{e:#}")))
}

/// Calls `each` for every record of `batch`, in offset order. `section` is the
/// batch's uncompressed record section (from [`Batch::records`], or
/// [`decompress`]) and `at` where it starts in the caller's buffer, so spans
/// index that buffer.
pub fn read_records(
    batch: &Batch<'_>,
    section: &[u8],
    at: usize,
    mut each: impl FnMut(RecordSpan),
) -> Result<(), BatchError> {
    let log_append_time = batch.attributes() & TIMESTAMP_TYPE_BIT != 0;
    let mut reader = Reader {
        buf: section,
        pos: 0,
    };
    let shift = |r: Range<usize>| r.start + at..r.end + at;
    for _ in 0..batch.record_count() {
        let len = usize::try_from(reader.varint()?).map_err(|_| BatchError::Malformed)?;
        let end = reader.pos.checked_add(len).ok_or(BatchError::Malformed)?;
        if end > section.len() {
            return Err(BatchError::Truncated);
        }
        reader.pos += 1; // record attributes: unused by the v2 format
        let timestamp_delta = reader.varint()?;
        let offset_delta = reader.varint()?;
        let key = reader.bytes()?;
        let value = reader.bytes()?;
        if reader.pos > end {
            return Err(BatchError::Malformed);
        }
        each(RecordSpan {
            offset: batch.base_offset() + offset_delta,
            timestamp: if log_append_time {
                batch.max_timestamp()
            } else {
                batch.base_timestamp() + timestamp_delta
            },
            key: key.map(shift),
            value: value.map(shift),
            headers: shift(reader.pos..end),
        });
        reader.pos = end;
    }
    Ok(())
}

/// A record header: its key and its value (which may be null).
pub type Header<'a> = (&'a [u8], Option<&'a [u8]>);

/// Decodes a record's encoded headers ([`RecordSpan::headers`]).
pub fn headers(encoded: &[u8]) -> Result<Vec<Header<'_>>, BatchError> {
    let mut reader = Reader {
        buf: encoded,
        pos: 0,
    };
    let count = reader.varint()?.max(0);
    let mut headers = Vec::new();
    for _ in 0..count {
        let key = reader.bytes()?.ok_or(BatchError::Malformed)?;
        let value = reader.bytes()?;
        headers.push((&encoded[key], value.map(|v| &encoded[v])));
    }
    Ok(headers)
}

/// Appends headers in the record format's encoding, as [`headers`] reads them.
pub fn encode_headers<'h>(out: &mut Vec<u8>, headers: impl ExactSizeIterator<Item = Header<'h>>) {
    put_varint(out, headers.len() as i64);
    for (key, value) in headers {
        put_varint(out, key.len() as i64);
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                put_varint(out, v.len() as i64);
                out.extend_from_slice(v);
            }
            None => put_varint(out, -1),
        }
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.push((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.push(raw as u8);
}

/// Reads the zigzag varints records are made of.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<i64, BatchError> {
        let mut raw = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or(BatchError::Truncated)?;
            self.pos += 1;
            raw |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(BatchError::Malformed)
    }

    /// A length-prefixed field; a negative length is null.
    fn bytes(&mut self) -> Result<Option<Range<usize>>, BatchError> {
        let Ok(len) = usize::try_from(self.varint()?) else {
            return Ok(None);
        };
        let start = self.pos;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.buf.len())
            .ok_or(BatchError::Truncated)?;
        self.pos = end;
        Ok(Some(start..end))
    }
}

/// Splits a produced record set into batches, verifying each one's CRC.
pub fn split_checked(mut buf: &[u8]) -> Result<Vec<Batch<'_>>, BatchError> {
    let mut batches = Vec::new();
    while !buf.is_empty() {
        let batch = Batch::parse_checked(buf)?;
        buf = &buf[batch.len()..];
        batches.push(batch);
    }
    Ok(batches)
}

/// Stamps the broker-owned fields of an owned batch before it is appended.
pub fn assign(batch: &mut [u8], base_offset: i64, log_append_time: Option<i64>) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&0i32.to_be_bytes());
    if let Some(now) = log_append_time {
        let attributes = i16_at(batch, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
        batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
        batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Batches for other crates' tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// One batch of test records: offsets `base..base + count`, each keyed
    /// `k<offset>`, valued `v<offset>`, stamped `timestamp + offset` and
    /// carrying the header `h=x`.
    pub struct Spec {
        pub base: i64,
        pub count: i64,
        pub timestamp: i64,
        pub compression: Compression,
        /// -1 for a producer without an id.
        pub producer_id: i64,
        pub transactional: bool,
        pub control: bool,
    }

    impl Default for Spec {
        fn default() -> Spec {
            Spec {
                base: 0,
                count: 1,
                timestamp: 0,
                compression: Compression::None,
                producer_id: -1,
                transactional: false,
                control: false,
            }
        }
    }

    pub fn encode_spec(spec: &Spec) -> Vec<u8> {
        let records: Vec<Record> = (spec.base..spec.base + spec.count)
            .map(|offset| Record {
                transactional: spec.transactional,
                control: spec.control,
                partition_leader_epoch: 0,
                producer_id: spec.producer_id,
                producer_epoch: if spec.producer_id < 0 { -1 } else { 0 },
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: offset as i32,
                timestamp: spec.timestamp + offset,
                key: Some(format!("k{offset}").into()),
                value: Some(format!("v{offset}").into()),
                headers: [(StrBytes::from_static_str("h"), Some("x".into()))]
                    .into_iter()
                    .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: spec.compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.to_vec()
    }

    /// Encodes `n` records with values `v0..v{n-1}` as one v2 batch.
    pub fn encode(n: usize, compression: Compression, timestamp: i64) -> Vec<u8> {
        encode_spec(&Spec {
            count: n as i64,
            timestamp,
            compression,
            ..Spec::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::encode;
    use super::*;
    use kafka_protocol::records::Compression;

    #[test]
    fn parses_and_checks_crc() {
        let buf = encode(3, Compression::None, 1000);
        let batch = Batch::parse_checked(&buf).unwrap();
        assert_eq!(batch.record_count(), 3);
        assert_eq!(batch.last_offset_delta(), 2);
        assert_eq!(batch.max_timestamp(), 1002);
        let mut corrupt = buf.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(
            Batch::parse_checked(&corrupt).err(),
            Some(BatchError::CrcMismatch)
        );
        assert_eq!(Batch::parse(&buf[..30]).err(), Some(BatchError::Truncated));
    }

    /// Every record's fields, read back through spans into the batch buffer.
    fn read_back(buf: &[u8]) -> Vec<(i64, i64, String, String, String)> {
        let batch = Batch::parse_checked(buf).unwrap();
        let decompressed;
        let (section, at, base): (&[u8], usize, &[u8]) = if batch.compression() == 0 {
            (batch.records(), HEADER_LEN, buf)
        } else {
            decompressed = decompress(&batch).unwrap();
            (&decompressed, 0, &decompressed)
        };
        let mut out = Vec::new();
        read_records(&batch, section, at, |r| {
            let text = |range: Option<Range<usize>>| {
                String::from_utf8(base[range.unwrap()].to_vec()).unwrap()
            };
            let headers = headers(&base[r.headers.clone()]).unwrap();
            let header = format!(
                "{}={}",
                String::from_utf8_lossy(headers[0].0),
                String::from_utf8_lossy(headers[0].1.unwrap())
            );
            out.push((r.offset, r.timestamp, text(r.key), text(r.value), header));
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_records_plain_and_compressed() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut buf = encode(3, compression, 1000);
            assign(&mut buf, 40, None);
            assert_eq!(
                read_back(&buf),
                (0..3)
                    .map(|i| (
                        40 + i,
                        1000 + i,
                        format!("k{i}"),
                        format!("v{i}"),
                        "h=x".to_string()
                    ))
                    .collect::<Vec<_>>(),
                "{compression:?}"
            );
        }
    }

    #[test]
    fn encoded_headers_read_back() {
        let mut out = vec![9]; // headers need not start a buffer
        let long = vec![b'x'; 300];
        let pairs: Vec<(&[u8], Option<&[u8]>)> =
            vec![(b"a", Some(b"1")), (b"nil", None), (b"long", Some(&long))];
        encode_headers(&mut out, pairs.clone().into_iter());
        assert_eq!(headers(&out[1..]).unwrap(), pairs);
        let mut none = Vec::new();
        encode_headers(&mut none, std::iter::empty());
        assert!(headers(&none).unwrap().is_empty());
    }

    #[test]
    fn log_append_time_replaces_record_timestamps() {
        let mut buf = encode(2, Compression::None, 5);
        assign(&mut buf, 0, Some(777));
        let stamps: Vec<i64> = read_back(&buf).iter().map(|r| r.1).collect();
        assert_eq!(stamps, vec![777, 777]);
    }

    #[test]
    fn truncated_records_are_an_error_not_a_panic() {
        let buf = encode(3, Compression::None, 0);
        let batch = Batch::parse(&buf).unwrap();
        let cut = &batch.records()[..batch.records().len() - 4];
        assert_eq!(
            read_records(&batch, cut, 0, |_| {}),
            Err(BatchError::Truncated)
        );
    }

    #[test]
    fn assign_keeps_crc_valid() {
        let mut buf = encode(2, Compression::Gzip, 5);
        assign(&mut buf, 42, None);
        assert_eq!(Batch::parse_checked(&buf).unwrap().base_offset(), 42);
        assign(&mut buf, 7, Some(99));
        let batch = Batch::parse_checked(&buf).unwrap();
        assert_eq!((batch.base_offset(), batch.max_timestamp()), (7, 99));
    }

    #[test]
    fn splits_concatenated_batches() {
        let mut buf = encode(2, Compression::None, 0);
        buf.extend(encode(5, Compression::Lz4, 0));
        let batches = split_checked(&buf).unwrap();
        assert_eq!(
            batches.iter().map(|b| b.record_count()).collect::<Vec<_>>(),
            vec![2, 5]
        );
    }
}

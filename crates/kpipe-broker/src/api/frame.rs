//! Responses as they go to the socket, and fetch responses encoded by hand.
//!
//! A fetch answer is mostly record sets read from the log. Encoded by
//! `kafka-protocol`, each set was copied into the response, which the
//! length-delimited codec then copied again before the socket copied it a
//! third time: that was a third of the broker's CPU while a consumer drained a
//! topic. A [`Frame`] keeps the sets as the `Bytes` read from the log, between
//! small encoded parts, and the connection sends it with vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::FetchResponse;

/// A response: its 4-byte size, then its parts in order.
#[derive(Debug)]
pub struct Frame {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Frame {
    /// The frame of a response whose bytes (after the size) are `parts`.
    fn new(parts: Vec<Bytes>) -> Frame {
        let size: usize = parts.iter().map(Bytes::len).sum();
        let mut framed = VecDeque::with_capacity(parts.len() + 1);
        framed.push_back(Bytes::copy_from_slice(&(size as u32).to_be_bytes()));
        framed.extend(parts.into_iter().filter(|p| !p.is_empty()));
        Frame {
            parts: framed,
            remaining: size + 4,
        }
    }

    /// The frame of a response encoded in one piece.
    pub fn whole(response: Bytes) -> Frame {
        Frame::new(vec![response])
    }
}

impl Buf for Frame {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |p| p.as_ref())
    }

    fn advance(&mut self, mut count: usize) {
        assert!(count <= self.remaining, "advanced past the end of a frame");
        self.remaining -= count;
        while count > 0 {
            let front = self
                .parts
                .front_mut()
                .expect("remaining bytes are in parts");
            if count < front.len() {
                front.advance(count);
                return;
            }
            count -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        for (slot, part) in slices.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            filled += 1;
        }
        filled
    }
}

/// Builds a frame: small fields accumulate in `head`, record sets become parts of their own.
#[derive(Default)]
struct FrameWriter {
    parts: Vec<Bytes>,
    head: BytesMut,
    /// Flexible versions: compact lengths and tagged-field counts.
    flexible: bool,
}

impl FrameWriter {
    fn unsigned_varint(&mut self, mut n: u32) {
        while n >= 0x80 {
            self.head.put_u8((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        self.head.put_u8(n as u8);
    }

    /// An array's or a byte string's length, `None` for null: compact
    /// (length + 1, 0 for null) in flexible versions, else an i32 (-1 for null).
    fn array_len(&mut self, len: Option<usize>) {
        if self.flexible {
            self.unsigned_varint(len.map_or(0, |n| n as u32 + 1));
        } else {
            self.head.put_i32(len.map_or(-1, |n| n as i32));
        }
    }

    fn string(&mut self, s: &str) {
        if self.flexible {
            self.unsigned_varint(s.len() as u32 + 1);
        } else {
            self.head.put_i16(s.len() as i16);
        }
        self.head.put_slice(s.as_bytes());
    }

    fn records(&mut self, records: Option<&Bytes>) {
        self.array_len(records.map(Bytes::len));
        if let Some(records) = records.filter(|r| !r.is_empty()) {
            self.parts.push(self.head.split().freeze());
            self.parts.push(records.clone());
        }
    }

    fn no_tagged_fields(&mut self) {
        if self.flexible {
            self.unsigned_varint(0);
        }
    }

    fn finish(mut self) -> Frame {
        self.parts.push(self.head.freeze());
        Frame::new(self.parts)
    }
}

/// Highest Fetch version [`fetch_frame`] writes (the broker serves 4 to 12).
const MAX_FETCH_VERSION: i16 = 12;

/// The frame of a fetch answer (response header included), byte for byte what
/// `kafka-protocol` encodes; None when it sets a field this encoder does not
/// write (transactions, leader changes, tagged fields), left to `kafka-protocol`.
pub fn fetch_frame(correlation_id: i32, version: i16, response: &FetchResponse) -> Option<Frame> {
    let plain = (4..=MAX_FETCH_VERSION).contains(&version)
        && response.unknown_tagged_fields.is_empty()
        && response.node_endpoints.is_empty()
        && (version >= 7 || (response.session_id == 0 && response.error_code == 0))
        && response.responses.iter().all(|topic| {
            topic.unknown_tagged_fields.is_empty()
                && topic.partitions.iter().all(|p| {
                    p.aborted_transactions.as_ref().is_none_or(Vec::is_empty)
                        && p.diverging_epoch == Default::default()
                        && p.current_leader == Default::default()
                        && p.snapshot_id == Default::default()
                        && p.unknown_tagged_fields.is_empty()
                        && (version >= 11 || p.preferred_read_replica == -1)
                })
        });
    if !plain {
        return None;
    }
    let mut out = FrameWriter {
        flexible: version >= 12,
        ..FrameWriter::default()
    };
    out.head.put_i32(correlation_id);
    out.no_tagged_fields();
    out.head.put_i32(response.throttle_time_ms);
    if version >= 7 {
        out.head.put_i16(response.error_code);
        out.head.put_i32(response.session_id);
    }
    out.array_len(Some(response.responses.len()));
    for topic in &response.responses {
        out.string(topic.topic.as_str());
        out.array_len(Some(topic.partitions.len()));
        for p in &topic.partitions {
            out.head.put_i32(p.partition_index);
            out.head.put_i16(p.error_code);
            out.head.put_i64(p.high_watermark);
            out.head.put_i64(p.last_stable_offset);
            if version >= 5 {
                out.head.put_i64(p.log_start_offset);
            }
            out.array_len(p.aborted_transactions.as_ref().map(Vec::len));
            if version >= 11 {
                out.head.put_i32(p.preferred_read_replica.0);
            }
            out.records(p.records.as_ref());
            out.no_tagged_fields();
        }
        out.no_tagged_fields();
    }
    out.no_tagged_fields();
    Some(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{
        EpochEndOffset, FetchableTopicResponse, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn sent(mut frame: Frame) -> Vec<u8> {
        let mut bytes = Vec::new();
        while frame.has_remaining() {
            // Through chunks_vectored and partial advances, as a socket takes it.
            let mut slices = [IoSlice::new(&[]); 3];
            let filled = frame.chunks_vectored(&mut slices);
            let offered: Vec<u8> = slices[..filled].iter().flat_map(|s| s.to_vec()).collect();
            let take = offered.len().min(7);
            bytes.extend_from_slice(&offered[..take]);
            frame.advance(take);
        }
        bytes
    }

    fn by_kafka_protocol(correlation_id: i32, version: i16, response: &FetchResponse) -> Vec<u8> {
        let mut body = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut body, ApiKey::Fetch.response_header_version(version))
            .unwrap();
        response.encode(&mut body, version).unwrap();
        let mut framed = (body.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        framed
    }

    fn partition(index: i32, records: Option<&[u8]>) -> PartitionData {
        PartitionData::default()
            .with_partition_index(index)
            .with_high_watermark(1_000_000 + i64::from(index))
            .with_last_stable_offset(999)
            .with_log_start_offset(7)
            .with_records(records.map(Bytes::copy_from_slice))
    }

    #[test]
    fn fetch_frames_are_what_kafka_protocol_encodes() {
        let big = vec![0xabu8; 300];
        let topics = vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("music_events")))
                .with_partitions(vec![
                    partition(0, Some(b"one record set")),
                    partition(1, Some(b"")),
                    partition(2, None).with_error_code(1),
                    partition(3, Some(&big)).with_aborted_transactions(None),
                ]),
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("")))
                .with_partitions(vec![]),
        ];
        for version in 4..=MAX_FETCH_VERSION {
            let mut response = FetchResponse::default()
                .with_throttle_time_ms(5)
                .with_responses(topics.clone());
            if version >= 7 {
                response = response.with_error_code(0).with_session_id(42);
            }
            let frame = fetch_frame(77, version, &response).expect("a plain fetch answer");
            assert!(frame.parts.len() > 4, "record sets are parts of their own");
            assert_eq!(
                sent(frame),
                by_kafka_protocol(77, version, &response),
                "version {version}"
            );
        }
    }

    #[test]
    fn fetch_answers_with_other_fields_are_left_to_kafka_protocol() {
        let leader_moved =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_partitions(vec![partition(0, None)
                    .with_diverging_epoch(EpochEndOffset::default().with_epoch(3))])]);
        assert!(fetch_frame(1, 12, &leader_moved).is_none());
        let replica =
            FetchResponse::default()
                .with_responses(vec![FetchableTopicResponse::default().with_partitions(
                    vec![partition(0, None).with_preferred_read_replica(BrokerId(2))],
                )]);
        assert!(fetch_frame(1, 10, &replica).is_none());
        assert!(fetch_frame(1, 11, &replica).is_some());
        assert!(fetch_frame(1, 13, &FetchResponse::default()).is_none());
    }

    #[test]
    fn whole_frames_carry_their_size() {
        let frame = Frame::whole(Bytes::from_static(b"abc"));
        assert_eq!(frame.remaining(), 7);
        assert_eq!(sent(frame), b"\0\0\0\x03abc");
    }
}

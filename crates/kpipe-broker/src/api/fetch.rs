//! Reading: Fetch with long polling, ListOffsets, OffsetForLeaderEpoch.
//!
//! The leader epoch is always 0: one broker, never a leader change.

use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::Context;
use crate::topics::Partition;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

pub async fn fetch(ctx: &Context<'_>, req: FetchRequest) -> FetchResponse {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let mut appended = ctx.shared.appended.subscribe();
    loop {
        appended.borrow_and_update();
        let (response, bytes, failed) = read(ctx, &req);
        if bytes >= req.min_bytes.max(0) as usize || failed || req.max_wait_ms <= 0 {
            return response;
        }
        if tokio::time::timeout_at(deadline, appended.changed())
            .await
            .is_err()
        {
            return read(ctx, &req).0;
        }
    }
}

/// One pass over the requested partitions: the response, bytes found, and whether any partition failed.
fn read(ctx: &Context, req: &FetchRequest) -> (FetchResponse, usize, bool) {
    let mut budget = if req.max_bytes > 0 {
        req.max_bytes as u64
    } else {
        u64::MAX
    };
    let mut total = 0usize;
    let mut failed = false;
    let topics = req
        .topics
        .iter()
        .map(|fetch_topic| {
            let topic = ctx.shared.topics.get(fetch_topic.topic.as_str());
            let partitions = fetch_topic
                .partitions
                .iter()
                .map(|p| {
                    let data = PartitionData::default().with_partition_index(p.partition);
                    let Some(partition) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                        failed = true;
                        return data.with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    let log = partition.log();
                    let data = data
                        .with_high_watermark(log.high_watermark())
                        .with_last_stable_offset(log.high_watermark())
                        .with_log_start_offset(log.log_start_offset());
                    if budget == 0 {
                        return data;
                    }
                    let max = (p.partition_max_bytes.max(0) as u64).min(budget);
                    match log.read(p.fetch_offset, max) {
                        Ok(Some(slice)) => {
                            let len = slice.records.len();
                            budget = budget.saturating_sub(len as u64);
                            total += len;
                            data.with_records(Some(slice.records))
                        }
                        Ok(None) => {
                            failed = true;
                            data.with_error_code(ResponseError::OffsetOutOfRange.code())
                        }
                        Err(e) => {
                            tracing::error!(topic = %fetch_topic.topic.as_str(), partition = p.partition, "read failed: {e}");
                            failed = true;
                            data.with_error_code(ResponseError::KafkaStorageError.code())
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default().with_topic(fetch_topic.topic.clone()).with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(topics),
        total,
        failed,
    )
}

fn list_offset(partition: &Partition, timestamp: i64) -> std::io::Result<(i64, i64)> {
    let log = partition.log();
    Ok(match timestamp {
        LATEST => (log.high_watermark(), -1),
        EARLIEST | EARLIEST_LOCAL => (log.log_start_offset(), -1),
        MAX_TIMESTAMP => log
            .max_timestamp_offset()?
            .map_or((-1, -1), |(ts, offset)| (offset, ts)),
        ts => log
            .offset_for_timestamp(ts)?
            .map_or((-1, -1), |(offset, ts)| (offset, ts)),
    })
}

pub fn list_offsets(ctx: &Context, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.shared.topics.get(t.name.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let response = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return response
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    match list_offset(&partition, p.timestamp) {
                        Ok((offset, timestamp)) => {
                            let response = response.with_offset(offset).with_timestamp(timestamp);
                            if ctx.version >= 4 {
                                response.with_leader_epoch(0)
                            } else {
                                response
                            }
                        }
                        Err(e) => {
                            tracing::error!(topic = %t.name.as_str(), "list offsets failed: {e}");
                            response.with_error_code(ResponseError::KafkaStorageError.code())
                        }
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

pub fn offset_for_leader_epoch(
    ctx: &Context,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.shared.topics.get(t.topic.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let response = EpochEndOffset::default().with_partition(p.partition);
                    let Some(partition) = topic.as_ref().and_then(|t| t.partition(p.partition))
                    else {
                        return response
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    if p.current_leader_epoch > 0 {
                        return response.with_error_code(ResponseError::UnknownLeaderEpoch.code());
                    }
                    if p.leader_epoch == 0 {
                        response
                            .with_leader_epoch(0)
                            .with_end_offset(partition.log().next_offset())
                    } else {
                        response.with_leader_epoch(-1).with_end_offset(-1)
                    }
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

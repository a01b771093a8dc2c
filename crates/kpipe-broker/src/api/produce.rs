//! Produce: validate record batches, append them, and acknowledge per `acks`
//! and the fsync policy.

use std::fs::File;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::Context;
use crate::error::ApiError;
use crate::storage::batch::{self, BatchError};
use crate::storage::log::AppendError;
use crate::topics::{unknown_topic, Topic};

pub async fn produce(ctx: &Context<'_>, req: ProduceRequest) -> Option<ProduceResponse> {
    let shared = ctx.shared;
    let mut to_sync = Vec::new();
    let mut responses = Vec::with_capacity(req.topic_data.len());
    for topic_data in req.topic_data {
        let topic = shared.topics.get(topic_data.name.as_str());
        let partitions = topic_data
            .partition_data
            .into_iter()
            .map(|data| {
                let index = data.index;
                let result = match &topic {
                    Some(topic) => append(topic, data, req.acks),
                    None => Err(unknown_topic(topic_data.name.as_str())),
                };
                match result {
                    Ok((response, file)) => {
                        to_sync.extend(file);
                        response.with_index(index)
                    }
                    Err(e) => {
                        let response = PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(e.code);
                        if ctx.version >= 8 {
                            response.with_error_message(e.message())
                        } else {
                            response
                        }
                    }
                }
            })
            .collect();
        responses.push(
            TopicProduceResponse::default()
                .with_name(topic_data.name)
                .with_partition_responses(partitions),
        );
    }
    if !to_sync.is_empty() {
        shared.notify_appended();
    }
    if req.acks == -1 {
        if let Err(e) = shared.sync_if_required(to_sync).await {
            tracing::error!("fsync failed; reporting the produce as failed: {e}");
            for partition in responses
                .iter_mut()
                .flat_map(|t| t.partition_responses.iter_mut())
            {
                if partition.error_code == 0 {
                    partition.error_code = ResponseError::KafkaStorageError.code();
                }
            }
        }
    }
    (req.acks != 0).then(|| ProduceResponse::default().with_responses(responses))
}

fn append(
    topic: &Topic,
    data: PartitionProduceData,
    acks: i16,
) -> Result<(PartitionProduceResponse, Option<Arc<File>>), ApiError> {
    if !matches!(acks, -1..=1) {
        return Err(ApiError::new(
            ResponseError::InvalidRequiredAcks,
            format!("acks must be -1, 0 or 1, not {acks}"),
        ));
    }
    let partition = topic
        .partition(data.index)
        .ok_or_else(|| unknown_topic(&topic.name))?;
    let min_insync: i32 = topic.config("min.insync.replicas").parse().unwrap_or(1);
    if acks == -1 && min_insync > 1 {
        return Err(ApiError::new(
            ResponseError::NotEnoughReplicas,
            format!("min.insync.replicas is {min_insync} but this single broker is the only in-sync replica"),
        ));
    }
    let records = data.records.unwrap_or_default();
    if records.is_empty() {
        return Err(ApiError::new(
            ResponseError::InvalidRecord,
            "produce request has no records",
        ));
    }
    let batches = batch::split_checked(&records).map_err(|e| match e {
        BatchError::UnsupportedMagic(_) => {
            ApiError::new(ResponseError::UnsupportedForMessageFormat, e.to_string())
        }
        other => ApiError::new(ResponseError::CorruptMessage, other.to_string()),
    })?;
    let max_bytes: usize = topic
        .config("max.message.bytes")
        .parse()
        .unwrap_or(usize::MAX);
    if let Some(big) = batches.iter().find(|b| b.len() > max_bytes) {
        return Err(ApiError::new(
            ResponseError::MessageTooLarge,
            format!(
                "record batch of {} bytes exceeds max.message.bytes={max_bytes}",
                big.len()
            ),
        ));
    }
    let config = topic.log_config();
    let mut log = partition.log();
    let appended = log.append(&batches, &config).map_err(|e| {
        let code = match e {
            AppendError::Corrupt(_) => ResponseError::CorruptMessage,
            AppendError::InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
            AppendError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
            AppendError::Transactional => ResponseError::TransactionalIdAuthorizationFailed,
            AppendError::Io(_) => ResponseError::KafkaStorageError,
        };
        if code == ResponseError::KafkaStorageError {
            tracing::error!(topic = %topic.name, partition = data.index, "append failed: {e}");
        }
        ApiError::new(code, e.to_string())
    })?;
    let file = (!appended.duplicate).then(|| log.active_file());
    let response = PartitionProduceResponse::default()
        .with_base_offset(appended.base_offset)
        .with_log_append_time_ms(appended.log_append_time)
        .with_log_start_offset(appended.log_start_offset);
    Ok((response, file))
}

//! Administration: topics, partitions, configs, DeleteRecords, producer ids.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteRecordsRequest, DeleteRecordsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, InitProducerIdRequest,
    InitProducerIdResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{str_bytes, Context};
use crate::config::{topic_config_def, ConfigType, TOPIC_CONFIGS};
use crate::error::ApiError;
use crate::topics::{unknown_topic, Topic};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn optional(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|v| v.to_string())
}

/// Every topic config with its value and where it comes from.
fn topic_configs(topic: &Topic) -> Vec<(&'static str, String, i8, ConfigType)> {
    let overrides = topic.configs();
    TOPIC_CONFIGS
        .iter()
        .map(|def| match overrides.get(def.name) {
            Some(value) => (def.name, value.clone(), SOURCE_DYNAMIC_TOPIC, def.kind),
            None => (def.name, def.default.to_string(), SOURCE_DEFAULT, def.kind),
        })
        .collect()
}

pub fn create_topics(ctx: &Context, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let shared = ctx.shared;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let name = t.name.to_string();
            let partitions = if !t.assignments.is_empty() {
                t.assignments.len() as i32
            } else if t.num_partitions == -1 {
                shared.config.default_partitions
            } else {
                t.num_partitions
            };
            let configs: BTreeMap<String, String> = t
                .configs
                .iter()
                .filter_map(|c| Some((c.name.to_string(), optional(&c.value)?)))
                .collect();
            let check = || -> Result<Option<std::sync::Arc<Topic>>, ApiError> {
                let replicas = if t.assignments.is_empty() {
                    t.replication_factor as i32
                } else {
                    t.assignments
                        .iter()
                        .map(|a| a.broker_ids.len() as i32)
                        .max()
                        .unwrap_or(1)
                };
                if replicas > 1
                    || t.assignments
                        .iter()
                        .flat_map(|a| &a.broker_ids)
                        .any(|b| b.0 != 0)
                {
                    return Err(ApiError::new(
                        ResponseError::InvalidReplicationFactor,
                        format!("Replication factor: {replicas} larger than available brokers: 1."),
                    ));
                }
                if replicas == 0 || replicas < -1 {
                    return Err(ApiError::new(
                        ResponseError::InvalidReplicationFactor,
                        "Replication factor must be larger than 0, or -1 to use the default value.",
                    ));
                }
                if req.validate_only {
                    shared.topics.check_new(&name, partitions, &configs)?;
                    return Ok(None);
                }
                shared
                    .topics
                    .create(&name, partitions, configs.clone())
                    .map(Some)
            };
            let result = CreatableTopicResult::default().with_name(t.name.clone());
            match check() {
                Ok(created) => {
                    let result = result
                        .with_num_partitions(partitions)
                        .with_replication_factor(1);
                    let result = match &created {
                        Some(topic) if ctx.version >= 7 => result.with_topic_id(topic.id),
                        _ => result,
                    };
                    if ctx.version < 5 {
                        return result;
                    }
                    let described = match &created {
                        Some(topic) => topic_configs(topic),
                        None => TOPIC_CONFIGS
                            .iter()
                            .map(|d| match configs.get(d.name) {
                                Some(v) => (d.name, v.clone(), SOURCE_DYNAMIC_TOPIC, d.kind),
                                None => (d.name, d.default.to_string(), SOURCE_DEFAULT, d.kind),
                            })
                            .collect(),
                    };
                    result.with_configs(Some(
                        described
                            .into_iter()
                            .map(|(name, value, source, _)| {
                                CreatableTopicConfigs::default()
                                    .with_name(str_bytes(name))
                                    .with_value(Some(str_bytes(value)))
                                    .with_config_source(source)
                            })
                            .collect(),
                    ))
                }
                Err(e) => {
                    let result = result
                        .with_error_code(e.code)
                        .with_error_message(e.message());
                    if ctx.version >= 5 {
                        result.with_num_partitions(-1).with_replication_factor(-1)
                    } else {
                        result
                    }
                }
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

pub fn delete_topics(ctx: &Context, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let shared = ctx.shared;
    let targets: Vec<(Option<String>, uuid::Uuid)> = if ctx.version >= 6 {
        req.topics
            .iter()
            .map(|t| (t.name.as_ref().map(|n| n.to_string()), t.topic_id))
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.to_string()), uuid::Uuid::nil()))
            .collect()
    };
    let responses = targets
        .into_iter()
        .map(|(name, id)| {
            let name = name.or_else(|| shared.topics.by_id(id).map(|t| t.name.clone()));
            let result = DeletableTopicResult::default()
                .with_name(name.clone().map(|n| TopicName(str_bytes(n))));
            let outcome = match &name {
                Some(name) => shared.topics.delete(name),
                None => Err(ApiError::new(
                    ResponseError::UnknownTopicId,
                    format!("This server does not host topic id {id}."),
                )),
            };
            match outcome {
                Ok(topic) => {
                    shared.groups.topic_deleted(&topic.name);
                    tracing::info!(topic = %topic.name, "topic deleted");
                    if ctx.version >= 6 {
                        result.with_topic_id(topic.id)
                    } else {
                        result
                    }
                }
                Err(e) if ctx.version >= 5 => result
                    .with_error_code(e.code)
                    .with_error_message(e.message()),
                Err(e) => result.with_error_code(e.code),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub fn create_partitions(ctx: &Context, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let results = req
        .topics
        .into_iter()
        .map(|t| {
            let outcome = if t
                .assignments
                .iter()
                .flatten()
                .flat_map(|a| &a.broker_ids)
                .any(|b| b.0 != 0)
            {
                Err(ApiError::new(
                    ResponseError::InvalidReplicaAssignment,
                    "Only broker 0 exists.",
                ))
            } else {
                ctx.shared
                    .topics
                    .create_partitions(t.name.as_str(), t.count, req.validate_only)
            };
            let result = CreatePartitionsTopicResult::default().with_name(t.name);
            match outcome {
                Ok(()) => result,
                Err(e) => result
                    .with_error_code(e.code)
                    .with_error_message(e.message()),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}

pub fn describe_configs(ctx: &Context, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let shared = ctx.shared;
    let results = req
        .resources
        .into_iter()
        .map(|resource| {
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            let name = resource.resource_name.to_string();
            let entries: Vec<(String, String, i8, ConfigType, bool)> = match resource.resource_type
            {
                RESOURCE_TOPIC => match shared.topics.get(&name) {
                    Some(topic) => topic_configs(&topic)
                        .into_iter()
                        .map(|(n, v, s, k)| (n.to_string(), v, s, k, false))
                        .collect(),
                    None => {
                        let e = unknown_topic(&name);
                        return result
                            .with_error_code(e.code)
                            .with_error_message(e.message());
                    }
                },
                RESOURCE_BROKER if name.is_empty() || name == "0" => shared
                    .config
                    .describe()
                    .into_iter()
                    .map(|(n, v, set)| {
                        let kind = if v.parse::<i64>().is_ok() {
                            ConfigType::Long
                        } else {
                            ConfigType::String
                        };
                        (
                            n,
                            v,
                            if set {
                                SOURCE_STATIC_BROKER
                            } else {
                                SOURCE_DEFAULT
                            },
                            kind,
                            true,
                        )
                    })
                    .collect(),
                other => {
                    return result
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(format!(
                            "resource {name:?} of type {other} is not described by this broker"
                        ))))
                }
            };
            let wanted: Option<Vec<String>> = resource
                .configuration_keys
                .map(|keys| keys.iter().map(|k| k.to_string()).collect());
            let configs = entries
                .into_iter()
                .filter(|e| wanted.as_ref().is_none_or(|w| w.contains(&e.0)))
                .map(|(name, value, source, kind, read_only)| {
                    let entry = DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(&name))
                        .with_value(Some(str_bytes(&value)))
                        .with_read_only(read_only)
                        .with_config_source(source);
                    let entry = if req.include_synonyms {
                        entry.with_synonyms(vec![DescribeConfigsSynonym::default()
                            .with_name(str_bytes(&name))
                            .with_value(Some(str_bytes(&value)))
                            .with_source(source)])
                    } else {
                        entry
                    };
                    if ctx.version >= 3 {
                        entry.with_config_type(kind as i8)
                    } else {
                        entry
                    }
                })
                .collect();
            result.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// Applies a config change to one resource; only topics can be altered.
fn alter_resource(
    ctx: &Context,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    edit: impl FnOnce(&mut BTreeMap<String, String>) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    match resource_type {
        RESOURCE_TOPIC => ctx.shared.topics.alter_configs(name, edit, validate_only),
        RESOURCE_BROKER => Err(ApiError::new(
            ResponseError::InvalidRequest,
            "broker configs of kpipe broker are set by its command-line flags and cannot be altered at run time",
        )),
        other => Err(ApiError::new(ResponseError::InvalidRequest, format!("unsupported resource type {other}"))),
    }
}

pub fn alter_configs(ctx: &Context, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let responses = req
        .resources
        .into_iter()
        .map(|r| {
            let replacement: Result<BTreeMap<String, String>, ApiError> = r
                .configs
                .iter()
                .map(|c| {
                    optional(&c.value)
                        .map(|v| (c.name.to_string(), v))
                        .ok_or_else(|| {
                            ApiError::new(
                                ResponseError::InvalidRequest,
                                format!("null value for config {}", c.name.as_str()),
                            )
                        })
                })
                .collect();
            let outcome = replacement.and_then(|replacement| {
                alter_resource(
                    ctx,
                    r.resource_type,
                    r.resource_name.as_str(),
                    req.validate_only,
                    |configs| {
                        *configs = replacement;
                        Ok(())
                    },
                )
            });
            let response = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name);
            match outcome {
                Ok(()) => response,
                Err(e) => response
                    .with_error_code(e.code)
                    .with_error_message(e.message()),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub fn incremental_alter_configs(
    ctx: &Context,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    const SET: i8 = 0;
    const DELETE: i8 = 1;
    const APPEND: i8 = 2;
    const SUBTRACT: i8 = 3;
    let responses = req
        .resources
        .into_iter()
        .map(|r| {
            let outcome = alter_resource(
                ctx,
                r.resource_type,
                r.resource_name.as_str(),
                req.validate_only,
                |configs| {
                    for change in &r.configs {
                        let name = change.name.to_string();
                        let value = optional(&change.value).unwrap_or_default();
                        let is_list =
                            topic_config_def(&name).is_some_and(|d| d.kind == ConfigType::List);
                        match change.config_operation {
                            SET => {
                                configs.insert(name, value);
                            }
                            DELETE => {
                                configs.remove(&name);
                            }
                            APPEND | SUBTRACT if is_list => {
                                let current = crate::config::effective(configs, &name).to_string();
                                let mut items: Vec<String> = current
                                    .split(',')
                                    .map(|s| s.trim().to_string())
                                    .filter(|s| !s.is_empty())
                                    .collect();
                                for item in
                                    value.split(',').map(str::trim).filter(|s| !s.is_empty())
                                {
                                    if change.config_operation == APPEND
                                        && !items.iter().any(|i| i == item)
                                    {
                                        items.push(item.to_string());
                                    } else if change.config_operation == SUBTRACT {
                                        items.retain(|i| i != item);
                                    }
                                }
                                configs.insert(name, items.join(","));
                            }
                            op => {
                                return Err(ApiError::new(
                                    ResponseError::InvalidConfig,
                                    format!("operation {op} is not valid for config {name}"),
                                ))
                            }
                        }
                    }
                    Ok(())
                },
            );
            let response =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name);
            match outcome {
                Ok(()) => response,
                Err(e) => response
                    .with_error_code(e.code)
                    .with_error_message(e.message()),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub fn delete_records(ctx: &Context, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.shared.topics.get(t.name.as_str());
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let result = DeleteRecordsPartitionResult::default()
                        .with_partition_index(p.partition_index);
                    let Some(partition) =
                        topic.as_ref().and_then(|t| t.partition(p.partition_index))
                    else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code())
                            .with_low_watermark(-1);
                    };
                    let mut log = partition.log();
                    let target = if p.offset == -1 {
                        log.high_watermark()
                    } else {
                        p.offset
                    };
                    if target < 0 || target > log.high_watermark() {
                        return result
                            .with_error_code(ResponseError::OffsetOutOfRange.code())
                            .with_low_watermark(-1);
                    }
                    match log.delete_records_before(target) {
                        Ok(low) => result.with_low_watermark(low),
                        Err(e) => {
                            tracing::error!(topic = %t.name.as_str(), "delete records failed: {e}");
                            result
                                .with_error_code(ResponseError::KafkaStorageError.code())
                                .with_low_watermark(-1)
                        }
                    }
                })
                .collect();
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}

pub fn init_producer_id(ctx: &Context, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if req.transactional_id.is_some() {
        return response
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    // KIP-360: a known idempotent producer may bump its epoch to reset its sequences.
    if req.producer_id.0 >= 0 {
        if req.producer_epoch == i16::MAX {
            return response.with_error_code(ResponseError::InvalidProducerEpoch.code());
        }
        return response
            .with_producer_id(req.producer_id)
            .with_producer_epoch(req.producer_epoch + 1);
    }
    match ctx.shared.producer_ids.allocate() {
        Ok(id) => response
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!("cannot allocate a producer id: {e}");
            response.with_error_code(ResponseError::KafkaStorageError.code())
        }
    }
}

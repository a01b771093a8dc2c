//! Consumer-group APIs: the wire side of [`crate::groups::GroupCoordinator`].

use std::time::{SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};

use super::{str_bytes, Context};
use crate::groups::{CommitRequest, Committed};

/// Offset metadata larger than this is refused, as Kafka's `offset.metadata.max.bytes`.
const MAX_METADATA_BYTES: usize = 4096;

pub async fn join_group(ctx: &Context<'_>, req: JoinGroupRequest) -> JoinGroupResponse {
    let mut response = ctx
        .shared
        .groups
        .join(req, &ctx.client_id, ctx.client_host)
        .await;
    if ctx.version < 7 {
        response.protocol_type = None;
    }
    if ctx.version < 5 {
        for member in &mut response.members {
            member.group_instance_id = None;
        }
    }
    response
}

pub async fn sync_group(ctx: &Context<'_>, req: SyncGroupRequest) -> SyncGroupResponse {
    let mut response = ctx.shared.groups.sync(req).await;
    if ctx.version < 5 {
        response.protocol_type = None;
        response.protocol_name = None;
    }
    response
}

pub fn heartbeat(ctx: &Context, req: HeartbeatRequest) -> HeartbeatResponse {
    let error = ctx.shared.groups.heartbeat(&req);
    HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
}

pub fn leave_group(ctx: &Context, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let mut response = ctx.shared.groups.leave(&req);
    if ctx.version < 3 {
        response.members.clear();
    }
    response
}

pub fn list_groups(ctx: &Context, req: ListGroupsRequest) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_string()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_string()).collect();
    let mut groups = ctx.shared.groups.list(&states, &types);
    for group in &mut groups {
        if ctx.version < 4 {
            group.group_state = Default::default();
        }
        if ctx.version < 5 {
            group.group_type = Default::default();
        }
    }
    ListGroupsResponse::default().with_groups(groups)
}

pub fn describe_groups(ctx: &Context, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .iter()
        .map(|id| {
            let mut group = ctx.shared.groups.describe(id);
            if ctx.version < 3 {
                group.authorized_operations = i32::MIN;
            }
            if ctx.version < 4 {
                for member in &mut group.members {
                    member.group_instance_id = None;
                }
            }
            group
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub async fn offset_commit(ctx: &Context<'_>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Partition-level problems are answered per partition; the rest go to the coordinator.
    let mut codes: Vec<Vec<i16>> = Vec::with_capacity(req.topics.len());
    let mut commits = Vec::new();
    for t in &req.topics {
        let topic = ctx.shared.topics.get(t.name.as_str());
        codes.push(
            t.partitions
                .iter()
                .map(|p| {
                    let metadata = p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    if topic
                        .as_ref()
                        .and_then(|t| t.partition(p.partition_index))
                        .is_none()
                    {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else if metadata.len() > MAX_METADATA_BYTES {
                        ResponseError::OffsetMetadataTooLarge.code()
                    } else {
                        commits.push(CommitRequest {
                            topic: t.name.to_string(),
                            partition: p.partition_index,
                            committed: Committed {
                                offset: p.committed_offset,
                                leader_epoch: p.committed_leader_epoch,
                                metadata,
                                commit_time_ms: now,
                            },
                        });
                        0
                    }
                })
                .collect(),
        );
    }
    let outcome = ctx.shared.groups.commit(
        req.group_id.as_str(),
        req.generation_id_or_member_epoch,
        &req.member_id,
        commits,
    );
    let group_error = match outcome {
        Ok(file) => match ctx
            .shared
            .sync_if_required(file.into_iter().collect())
            .await
        {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("fsync of committed offsets failed: {e}");
                ResponseError::KafkaStorageError.code()
            }
        },
        Err(e) => e.code(),
    };
    let topics = req
        .topics
        .into_iter()
        .zip(codes)
        .map(|(t, codes)| {
            let partitions = t
                .partitions
                .iter()
                .zip(codes)
                .map(|(p, code)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(if code == 0 { group_error } else { code })
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// (topic, [(partition, committed offset, leader epoch, metadata)]) grouped by topic.
type FetchedOffsets = Vec<(String, Vec<(i32, i64, i32, String)>)>;

fn fetched(ctx: &Context, group: &str, wanted: Option<Vec<(String, i32)>>) -> FetchedOffsets {
    let mut by_topic: FetchedOffsets = Vec::new();
    for (topic, partition, committed) in ctx.shared.groups.committed(group, wanted) {
        let entry = committed.map_or((partition, -1, -1, String::new()), |c| {
            (partition, c.offset, c.leader_epoch, c.metadata)
        });
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, partitions)) => partitions.push(entry),
            None => by_topic.push((topic, vec![entry])),
        }
    }
    by_topic
}

pub fn offset_fetch(ctx: &Context, req: OffsetFetchRequest) -> OffsetFetchResponse {
    if ctx.version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let wanted = g.topics.as_ref().map(|topics| {
                    topics
                        .iter()
                        .flat_map(|t| t.partition_indexes.iter().map(|&p| (t.name.to_string(), p)))
                        .collect()
                });
                let topics = fetched(ctx, g.group_id.as_str(), wanted)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(TopicName(str_bytes(topic)))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(p, offset, epoch, metadata)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(offset)
                                            .with_committed_leader_epoch(epoch)
                                            .with_metadata(Some(str_bytes(metadata)))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(topics)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let wanted = req.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| t.partition_indexes.iter().map(|&p| (t.name.to_string(), p)))
            .collect()
    });
    let topics = fetched(ctx, req.group_id.as_str(), wanted)
        .into_iter()
        .map(|(topic, partitions)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(
                    partitions
                        .into_iter()
                        .map(|(p, offset, epoch, metadata)| {
                            let partition = OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(offset)
                                .with_metadata(Some(str_bytes(metadata)));
                            if ctx.version >= 5 {
                                partition.with_committed_leader_epoch(epoch)
                            } else {
                                partition
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

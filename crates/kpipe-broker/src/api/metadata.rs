//! Metadata, DescribeCluster and FindCoordinator: one broker (node 0) leads everything.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeClusterResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    MetadataRequest, MetadataResponse, TopicName,
};

use super::{str_bytes, Context};
use crate::topics::Topic;

const NODE: BrokerId = BrokerId(0);

fn topic_metadata(topic: &Topic) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&topic.name))))
        .with_topic_id(topic.id)
        .with_is_internal(false)
        .with_partitions(
            (0..topic.partition_count())
                .map(|index| {
                    MetadataResponsePartition::default()
                        .with_partition_index(index)
                        .with_leader_id(NODE)
                        .with_leader_epoch(0)
                        .with_replica_nodes(vec![NODE])
                        .with_isr_nodes(vec![NODE])
                })
                .collect(),
        )
}

pub fn metadata(ctx: &Context, req: MetadataRequest) -> MetadataResponse {
    let shared = ctx.shared;
    // v0 asks for all topics with an empty list; later versions with null.
    let wanted: Option<Vec<String>> = match req.topics {
        Some(topics) if !(ctx.version == 0 && topics.is_empty()) => Some(
            topics
                .iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
                .collect(),
        ),
        _ => None,
    };
    let auto_create =
        shared.config.auto_create_topics && (ctx.version < 4 || req.allow_auto_topic_creation);
    let topics = match wanted {
        None => shared
            .topics
            .list()
            .iter()
            .map(|t| topic_metadata(t))
            .collect(),
        Some(names) => names
            .into_iter()
            .map(|name| {
                let found = shared.topics.get(&name).map(Ok).or_else(|| {
                    auto_create.then(|| {
                        shared.topics.create(
                            &name,
                            shared.config.default_partitions,
                            Default::default(),
                        )
                    })
                });
                match found {
                    Some(Ok(topic)) => topic_metadata(&topic),
                    Some(Err(e)) if e.code == ResponseError::TopicAlreadyExists.code() => shared
                        .topics
                        .get(&name)
                        .map_or_else(|| unknown(&name), |t| topic_metadata(&t)),
                    Some(Err(e)) => MetadataResponseTopic::default()
                        .with_name(Some(TopicName(str_bytes(&name))))
                        .with_error_code(e.code),
                    None => unknown(&name),
                }
            })
            .collect(),
    };
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(NODE)
            .with_host(str_bytes(&shared.host))
            .with_port(shared.port)])
        .with_cluster_id(Some(str_bytes(&shared.cluster_id)))
        .with_controller_id(NODE)
        .with_topics(topics)
}

fn unknown(name: &str) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_error_code(ResponseError::UnknownTopicOrPartition.code())
}

pub fn describe_cluster(ctx: &Context) -> DescribeClusterResponse {
    let shared = ctx.shared;
    DescribeClusterResponse::default()
        .with_cluster_id(str_bytes(&shared.cluster_id))
        .with_controller_id(NODE)
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(NODE)
            .with_host(str_bytes(&shared.host))
            .with_port(shared.port)])
}

pub fn find_coordinator(ctx: &Context, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let shared = ctx.shared;
    if ctx.version < 4 {
        return FindCoordinatorResponse::default()
            .with_node_id(NODE)
            .with_host(str_bytes(&shared.host))
            .with_port(shared.port);
    }
    let coordinators = req
        .coordinator_keys
        .into_iter()
        .map(|key| {
            Coordinator::default()
                .with_key(key)
                .with_node_id(NODE)
                .with_host(str_bytes(&shared.host))
                .with_port(shared.port)
        })
        .collect();
    FindCoordinatorResponse::default().with_coordinators(coordinators)
}

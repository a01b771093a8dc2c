//! Request dispatch: decode a frame, run the API's handler, encode the answer.
//!
//! The broker advertises exactly the APIs and versions in [`SUPPORTED`]. A request
//! outside them (an unknown key, an API the broker does not implement, a version
//! too new) is answered with `UNSUPPORTED_VERSION` instead of a dropped connection;
//! ApiVersions itself falls back to a v0 answer listing what is supported, as
//! KIP-511 prescribes.

mod admin;
mod fetch;
mod frame;
mod groups;
mod metadata;
mod produce;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::server::Shared;
pub use frame::Frame;

/// APIs and version ranges this broker implements.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
];

fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

fn api_versions(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// What to do after a request.
pub enum Reply {
    Send(Frame),
    /// acks=0 produce: Kafka sends nothing back.
    Silent,
    /// A frame that is not a Kafka request at all.
    Close,
}

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Per-request context handlers may need.
pub(crate) struct Context<'a> {
    pub shared: &'a Shared,
    pub version: i16,
    pub client_id: String,
    pub client_host: &'a str,
}

pub async fn handle(shared: &Shared, mut frame: Bytes, client_host: &str) -> Reply {
    if frame.len() < 8 {
        return Reply::Close;
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(raw_key).ok();
    let Some(key) = key.filter(|&k| supported(k, version)) else {
        if key == Some(ApiKey::ApiVersions) {
            let response =
                ResponseKind::ApiVersions(api_versions(ResponseError::UnsupportedVersion.code()));
            return encode(correlation_id, ApiKey::ApiVersions, 0, &response);
        }
        // As Apache Kafka does: a client that skipped ApiVersions (librdkafka with
        // api.version.request=false) misreads any short reply, but handles a
        // closed connection.
        tracing::warn!(
            api_key = raw_key,
            version,
            client = client_host,
            "closing the connection: kpipe broker does not support this request version"
        );
        return Reply::Close;
    };
    let decoded = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .and_then(|header| Ok((header, RequestKind::decode(key, &mut frame, version)?)));
    let (header, request) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => {
            tracing::debug!(?key, version, "malformed request: {e}");
            return Reply::Close;
        }
    };
    let ctx = Context {
        shared,
        version,
        client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
        client_host,
    };
    match dispatch(&ctx, request).await {
        Some(response) => encode(correlation_id, key, version, &response),
        None => Reply::Silent,
    }
}

async fn dispatch(ctx: &Context<'_>, request: RequestKind) -> Option<ResponseKind> {
    use RequestKind as Rq;
    use ResponseKind as Rs;
    Some(match request {
        Rq::ApiVersions(_) => Rs::ApiVersions(api_versions(0)),
        Rq::Metadata(r) => Rs::Metadata(metadata::metadata(ctx, r)),
        Rq::DescribeCluster(_) => Rs::DescribeCluster(metadata::describe_cluster(ctx)),
        Rq::FindCoordinator(r) => Rs::FindCoordinator(metadata::find_coordinator(ctx, r)),
        Rq::Produce(r) => return produce::produce(ctx, r).await.map(Rs::Produce),
        Rq::Fetch(r) => Rs::Fetch(fetch::fetch(ctx, r).await),
        Rq::ListOffsets(r) => Rs::ListOffsets(fetch::list_offsets(ctx, r)),
        Rq::OffsetForLeaderEpoch(r) => {
            Rs::OffsetForLeaderEpoch(fetch::offset_for_leader_epoch(ctx, r))
        }
        Rq::CreateTopics(r) => Rs::CreateTopics(admin::create_topics(ctx, r)),
        Rq::DeleteTopics(r) => Rs::DeleteTopics(admin::delete_topics(ctx, r)),
        Rq::CreatePartitions(r) => Rs::CreatePartitions(admin::create_partitions(ctx, r)),
        Rq::DescribeConfigs(r) => Rs::DescribeConfigs(admin::describe_configs(ctx, r)),
        Rq::AlterConfigs(r) => Rs::AlterConfigs(admin::alter_configs(ctx, r)),
        Rq::IncrementalAlterConfigs(r) => {
            Rs::IncrementalAlterConfigs(admin::incremental_alter_configs(ctx, r))
        }
        Rq::DeleteRecords(r) => Rs::DeleteRecords(admin::delete_records(ctx, r)),
        Rq::InitProducerId(r) => Rs::InitProducerId(admin::init_producer_id(ctx, r)),
        Rq::SaslHandshake(_) => Rs::SaslHandshake(
            kafka_protocol::messages::SaslHandshakeResponse::default()
                .with_error_code(ResponseError::UnsupportedSaslMechanism.code()),
        ),
        Rq::JoinGroup(r) => Rs::JoinGroup(groups::join_group(ctx, r).await),
        Rq::SyncGroup(r) => Rs::SyncGroup(groups::sync_group(ctx, r).await),
        Rq::Heartbeat(r) => Rs::Heartbeat(groups::heartbeat(ctx, r)),
        Rq::LeaveGroup(r) => Rs::LeaveGroup(groups::leave_group(ctx, r)),
        Rq::ListGroups(r) => Rs::ListGroups(groups::list_groups(ctx, r)),
        Rq::DescribeGroups(r) => Rs::DescribeGroups(groups::describe_groups(ctx, r)),
        Rq::OffsetCommit(r) => Rs::OffsetCommit(groups::offset_commit(ctx, r).await),
        Rq::OffsetFetch(r) => Rs::OffsetFetch(groups::offset_fetch(ctx, r)),
        other => {
            // Unreachable while SUPPORTED and this match agree; answer rather than panic.
            tracing::error!("no handler for {:?}", std::mem::discriminant(&other));
            return None;
        }
    })
}

fn encode(correlation_id: i32, key: ApiKey, version: i16, response: &ResponseKind) -> Reply {
    if let ResponseKind::Fetch(fetched) = response {
        if let Some(frame) = frame::fetch_frame(correlation_id, version, fetched) {
            return Reply::Send(frame);
        }
    }
    let mut out = BytesMut::new();
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    match header
        .encode(&mut out, key.response_header_version(version))
        .and_then(|_| response.encode(&mut out, version))
    {
        Ok(()) => Reply::Send(Frame::whole(out.freeze())),
        Err(e) => {
            tracing::error!(?key, version, "cannot encode response: {e}");
            Reply::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_within_the_codec() {
        for &(key, min, max) in SUPPORTED {
            let valid = key.valid_versions();
            assert!(
                min >= valid.min && max <= valid.max,
                "{key:?} {min}..{max} outside {valid:?}"
            );
        }
    }
}

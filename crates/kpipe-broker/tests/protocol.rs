//! The broker in-process, spoken to in raw Kafka protocol: version negotiation,
//! refusals that keep the connection open, and Fetch long polling.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kpipe_broker::{Broker, BrokerConfig};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

struct Client {
    framed: Framed<TcpStream, LengthDelimitedCodec>,
    correlation: i32,
}

impl Client {
    async fn connect(broker: &Broker) -> Client {
        let stream = TcpStream::connect(broker.local_addr()).await.unwrap();
        Client {
            framed: Framed::new(stream, LengthDelimitedCodec::new()),
            correlation: 0,
        }
    }

    async fn raw(&mut self, key: i16, version: i16, header_version: i16, body: &[u8]) -> Bytes {
        let response = self
            .try_raw(key, version, header_version, body)
            .await
            .expect("connection still open");
        assert_eq!(
            i32::from_be_bytes(response[..4].try_into().unwrap()),
            self.correlation
        );
        response
    }

    /// Sends a request; None when the broker closed the connection instead of answering.
    async fn try_raw(
        &mut self,
        key: i16,
        version: i16,
        header_version: i16,
        body: &[u8],
    ) -> Option<Bytes> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("protocol-test")));
        let mut frame = BytesMut::new();
        header.encode(&mut frame, header_version).unwrap();
        frame.extend_from_slice(body);
        self.framed.send(frame.freeze()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.framed.next())
            .await
            .expect("a response or a close, not a hang")
            .map(|r| r.unwrap().freeze())
    }

    async fn call<R: Request>(&mut self, request: R, version: i16) -> R::Response {
        let mut body = BytesMut::new();
        request.encode(&mut body, version).unwrap();
        let mut response = self
            .raw(R::KEY, version, R::header_version(version), &body)
            .await;
        let header_version = <R::Response as HeaderVersion>::header_version(version);
        ResponseHeader::decode(&mut response, header_version).unwrap();
        R::Response::decode(&mut response, version).unwrap()
    }
}

async fn broker() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
    ))
    .await
    .unwrap();
    assert_ne!(broker.local_addr().port(), 0);
    (broker, dir)
}

#[tokio::test]
async fn negotiates_versions_and_closes_on_unsupported_requests() {
    let (broker, _dir) = broker().await;
    let mut client = Client::connect(&broker).await;
    let versions = client.call(ApiVersionsRequest::default(), 3).await;
    assert_eq!(versions.error_code, 0);
    let produce = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .unwrap();
    assert!(produce.min_version <= 3 && produce.max_version >= 9);

    // A client newer than the broker gets a v0 answer with the supported list (KIP-511).
    let mut response = client
        .raw(ApiKey::ApiVersions as i16, 99, 2, &[0, 0, 0])
        .await;
    ResponseHeader::decode(&mut response, 0).unwrap();
    let fallback = ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(fallback.error_code, 35);
    assert_eq!(fallback.api_keys.len(), versions.api_keys.len());

    // An API this broker does not implement, a version below its range (what
    // librdkafka sends with api.version.request=false), and an API key nobody
    // knows: the connection is closed, as Apache Kafka does, since such a client
    // cannot parse a reply in a format it never negotiated.
    for (key, version) in [
        (ApiKey::DescribeAcls as i16, 1),
        (ApiKey::ListOffsets as i16, 0),
        (9999, 0),
    ] {
        let mut client = Client::connect(&broker).await;
        assert!(
            client.try_raw(key, version, 1, &[0; 16]).await.is_none(),
            "api {key} v{version}"
        );
    }
    let mut again = Client::connect(&broker).await;
    assert_eq!(
        again
            .call(ApiVersionsRequest::default(), 0)
            .await
            .error_code,
        0
    );
    broker.shutdown().await.unwrap();
}

fn batch(values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Zstd,
        },
    )
    .unwrap();
    buf.freeze()
}

#[tokio::test]
async fn fetch_long_polls_until_data_arrives() {
    let (broker, _dir) = broker().await;
    let mut admin = Client::connect(&broker).await;
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_static_str("poll")))
        .with_num_partitions(1)
        .with_replication_factor(1);
    let created = admin
        .call(
            CreateTopicsRequest::default()
                .with_topics(vec![topic])
                .with_timeout_ms(5000),
            7,
        )
        .await;
    assert_eq!(created.topics[0].error_code, 0);

    let fetch = FetchRequest::default()
        .with_max_wait_ms(10_000)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("poll")))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let mut consumer = Client::connect(&broker).await;
    let started = Instant::now();
    let mut waiting = tokio::spawn(async move { consumer.call(fetch, 12).await });
    let early = tokio::time::timeout(Duration::from_millis(200), &mut waiting).await;
    assert!(
        early.is_err(),
        "an empty fetch must wait for data (max_wait 10 s)"
    );

    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("poll")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch(&["a", "b"])))])]);
    let produced = admin.call(produce, 9).await;
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);

    let fetched = waiting.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the fetch was not woken by the append"
    );
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!(partition.high_watermark, 2);
    let mut records = partition.records.clone().unwrap();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut records).unwrap();
    assert_eq!(
        set.compression,
        Compression::Zstd,
        "batches are stored as produced"
    );
    let values: Vec<&[u8]> = set
        .records
        .iter()
        .map(|r| r.value.as_deref().unwrap())
        .collect();
    assert_eq!(values, vec![b"a".as_slice(), b"b".as_slice()]);
    broker.shutdown().await.unwrap();
}

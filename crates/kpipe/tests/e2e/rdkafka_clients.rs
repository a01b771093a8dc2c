//! The rdkafka crate against the broker: produce/consume with every codec,
//! groups and rebalances, commits across restarts, idempotence, kill -9.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, FutureProducer, FutureRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::harness::{block_on, bounded, eventually, BrokerProcess};

const WAIT: Duration = Duration::from_secs(30);

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("message.timeout.ms", "20000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("producer")
}

fn consumer(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("consumer")
}

/// Polls until `count` messages arrived or the time is up; returns (partition, offset, key, value).
fn drain(
    consumer: &BaseConsumer,
    count: usize,
    limit: Duration,
) -> Vec<(i32, i64, String, String)> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    while got.len() < count && Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let m = message.expect("consume");
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).to_string();
            got.push((m.partition(), m.offset(), text(m.key()), text(m.payload())));
        }
    }
    got
}

fn close(consumer: BaseConsumer) {
    bounded(Duration::from_secs(20), "closing a consumer", move || {
        drop(consumer)
    });
}

#[test]
fn every_codec_round_trips_with_keys_and_headers() {
    let broker = BrokerProcess::start();
    broker.create_topic("codecs", 3, &[]);
    let mut expected = BTreeSet::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let producer = producer(
            &broker.bootstrap,
            &[("compression.type", codec), ("linger.ms", "5")],
        );
        let sends: Vec<_> = (0..200)
            .map(|i| {
                let key = format!("{codec}-{}", i % 7);
                let value = format!("{codec} message {i}");
                expected.insert((key.clone(), value.clone()));
                let headers = OwnedHeaders::new().insert(Header {
                    key: "codec",
                    value: Some(codec),
                });
                producer
                    .send_result(
                        FutureRecord::to("codecs")
                            .key(&key)
                            .payload(&value)
                            .headers(headers),
                    )
                    .expect("queue")
            })
            .collect();
        for send in sends {
            block_on(send).expect("delivery future").expect("delivered");
        }
    }
    let consumer = consumer(&broker.bootstrap, "codec-readers", &[]);
    consumer.subscribe(&["codecs"]).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut seen = BTreeSet::new();
    while seen.len() < expected.len() && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = message.expect("consume");
        let codec = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "codec"))
            .and_then(|h| h.value)
            .unwrap_or_default();
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
        let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
        assert!(
            value.starts_with(std::str::from_utf8(codec).unwrap()),
            "header {codec:?} does not match {value}"
        );
        assert!(seen.insert((key, value)), "a message arrived twice");
    }
    assert_eq!(seen, expected);
    close(consumer);
}

fn group_of_two(strategy: &str) {
    let broker = BrokerProcess::start();
    broker.create_topic("shared", 4, &[]);
    let extra = [("partition.assignment.strategy", strategy)];
    let first = consumer(&broker.bootstrap, "pair", &extra);
    first.subscribe(&["shared"]).unwrap();
    let assigned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
    assert!(
        eventually(WAIT, || {
            first.poll(Duration::from_millis(50));
            assigned(&first) == 4
        }),
        "first consumer never got all four partitions"
    );

    let second = consumer(&broker.bootstrap, "pair", &extra);
    second.subscribe(&["shared"]).unwrap();
    let split = eventually(WAIT, || {
        first.poll(Duration::from_millis(20));
        second.poll(Duration::from_millis(20));
        assigned(&first) == 2 && assigned(&second) == 2
    });
    assert!(
        split,
        "rebalance did not split 4 partitions 2/2 ({} and {})",
        assigned(&first),
        assigned(&second)
    );
    let partitions = |c: &BaseConsumer| -> BTreeSet<i32> {
        c.assignment()
            .unwrap()
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect()
    };
    assert!(partitions(&first).is_disjoint(&partitions(&second)));

    let producer = producer(&broker.bootstrap, &[]);
    for i in 0..400 {
        let key = format!("k{i}");
        block_on(producer.send(
            FutureRecord::to("shared").key(&key).payload("x"),
            Duration::from_secs(10),
        ))
        .expect("sent");
    }
    let mut offsets = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while offsets.len() < 400 && Instant::now() < deadline {
        for c in [&first, &second] {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                assert!(
                    offsets.insert((m.partition(), m.offset())),
                    "delivered to both members"
                );
            }
        }
    }
    assert_eq!(offsets.len(), 400);
    close(second);
    // The survivor takes over every partition once the other member leaves.
    assert!(
        eventually(WAIT, || {
            first.poll(Duration::from_millis(50));
            assigned(&first) == 4
        }),
        "the remaining member did not get all partitions back"
    );
    close(first);
}

#[test]
fn group_of_two_rebalances_eagerly() {
    group_of_two("range");
}

#[test]
fn group_of_two_rebalances_cooperatively() {
    group_of_two("cooperative-sticky");
}

#[test]
fn committed_offsets_survive_a_restart() {
    let mut broker = BrokerProcess::start();
    broker.create_topic("resume", 2, &[("retention.ms", "86400000")]);
    let producer = producer(&broker.bootstrap, &[]);
    for i in 0..100 {
        block_on(
            producer.send(
                FutureRecord::to("resume")
                    .key(&format!("{i}"))
                    .payload(&format!("m{i}")),
                Duration::from_secs(10),
            ),
        )
        .expect("sent");
    }
    drop(producer);
    let first = consumer(&broker.bootstrap, "resumers", &[]);
    first.subscribe(&["resume"]).unwrap();
    let got = drain(&first, 60, WAIT);
    assert_eq!(got.len(), 60);
    first
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    let mut positions = TopicPartitionList::new();
    let mut last: HashMap<i32, i64> = HashMap::new();
    for (p, o, _, _) in &got {
        last.insert(*p, (*o + 1).max(last.get(p).copied().unwrap_or(0)));
    }
    for (p, o) in &last {
        positions
            .add_partition_offset("resume", *p, Offset::Offset(*o))
            .unwrap();
    }
    first
        .commit(&positions, CommitMode::Sync)
        .expect("commit positions");
    close(first);

    broker.stop();
    broker.restart();

    let second = consumer(&broker.bootstrap, "resumers", &[]);
    let committed = second
        .committed_offsets(positions.clone(), Duration::from_secs(10))
        .expect("committed");
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(last[&e.partition()]),
            "partition {}",
            e.partition()
        );
    }
    second.subscribe(&["resume"]).unwrap();
    let rest = drain(&second, 100, Duration::from_secs(3));
    assert_eq!(
        rest.len(),
        40,
        "resumed consumer should see exactly the 40 uncommitted messages"
    );
    let before: BTreeSet<String> = got.into_iter().map(|m| m.3).collect();
    assert!(
        rest.iter().all(|m| !before.contains(&m.3)),
        "a committed message was delivered again"
    );
    close(second);
}

#[test]
fn idempotent_producer_writes_each_message_once_in_order() {
    let broker = BrokerProcess::start();
    broker.create_topic("exactly", 1, &[]);
    let producer = producer(
        &broker.bootstrap,
        &[("enable.idempotence", "true"), ("linger.ms", "2")],
    );
    let sends: Vec<_> = (0..5000)
        .map(|i| {
            producer
                .send_result(
                    FutureRecord::to("exactly")
                        .key("k")
                        .payload(&format!("{i}")),
                )
                .expect("queue")
        })
        .collect();
    for (i, send) in sends.into_iter().enumerate() {
        let delivery = block_on(send).expect("future").expect("delivered");
        assert_eq!(
            delivery.offset, i as i64,
            "idempotent sends land in order at consecutive offsets"
        );
    }
    let consumer = consumer(&broker.bootstrap, "check", &[]);
    consumer.subscribe(&["exactly"]).unwrap();
    let got = drain(&consumer, 5001, Duration::from_secs(3));
    let values: Vec<String> = got.into_iter().map(|m| m.3).collect();
    assert_eq!(values, (0..5000).map(|i| i.to_string()).collect::<Vec<_>>());
    close(consumer);
}

/// Whatever the fsync policy, a kill -9 of the broker process loses nothing that
/// an acks=all producer saw acknowledged (the policy only matters for power loss).
fn kill_9_during_acks_all_production(fsync: &str) {
    let mut broker = BrokerProcess::start_with(&["--fsync", fsync]);
    broker.create_topic("durable", 3, &[]);
    let acked: Arc<Mutex<BTreeMap<(i32, i64), String>>> = Arc::default();
    let producer: ThreadedProducer<_> = {
        let context = AckRecorder {
            acked: acked.clone(),
        };
        ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "3000")
            .create_with_context(context)
            .expect("producer")
    };
    let mut sent = 0u64;
    let deadline = Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 20_000 && Instant::now() < deadline {
        let value = format!("payload-{sent}");
        let key = format!("{}", sent % 97);
        if producer
            .send(BaseRecord::to("durable").key(&key).payload(&value))
            .is_ok()
        {
            sent += 1;
        } else {
            producer.poll(Duration::from_millis(5));
        }
    }
    broker.kill9();
    bounded(
        Duration::from_secs(20),
        "flushing the producer",
        move || {
            let _ = producer.flush(Duration::from_secs(5));
        },
    );
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() >= 20_000,
        "only {} messages were acknowledged before the kill",
        acked.len()
    );

    broker.restart();
    let consumer = consumer(&broker.bootstrap, "auditor", &[]);
    // Unacknowledged messages may have been stored too: read every partition to its end.
    let stored_count: i64 = (0..3)
        .map(|p| {
            consumer
                .fetch_watermarks("durable", p, Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum();
    consumer.subscribe(&["durable"]).unwrap();
    let stored: HashMap<(i32, i64), String> = drain(&consumer, stored_count as usize, WAIT)
        .into_iter()
        .map(|(p, o, _, v)| ((p, o), v))
        .collect();
    assert_eq!(stored.len() as i64, stored_count);
    let missing: Vec<_> = acked
        .iter()
        .filter(|(at, v)| stored.get(at) != Some(v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged messages lost or changed after kill -9: {missing:?}"
    );
    close(consumer);
}

#[test]
fn kill_9_loses_nothing_acknowledged_with_fsync_always() {
    kill_9_during_acks_all_production("always");
}

#[test]
fn kill_9_loses_nothing_acknowledged_with_interval_fsync() {
    kill_9_during_acks_all_production("200ms");
}

struct AckRecorder {
    acked: Arc<Mutex<BTreeMap<(i32, i64), String>>>,
}

impl rdkafka::ClientContext for AckRecorder {}

impl rdkafka::producer::ProducerContext for AckRecorder {
    type DeliveryOpaque = ();
    /// Only acknowledged messages count; failures after the kill are expected.
    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Ok(m) = result {
            let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
            self.acked
                .lock()
                .unwrap()
                .insert((m.partition(), m.offset()), value);
        }
    }
}

#[test]
fn retention_by_size_moves_the_log_start() {
    let broker = BrokerProcess::start_with(&["--retention-check-interval-ms", "100"]);
    broker.create_topic(
        "short",
        1,
        &[("segment.bytes", "4096"), ("retention.bytes", "8192")],
    );
    let producer = producer(&broker.bootstrap, &[("linger.ms", "0")]);
    for i in 0..400 {
        block_on(
            producer.send(
                FutureRecord::to("short")
                    .key("k")
                    .payload(&format!("{i:0>100}")),
                Duration::from_secs(10),
            ),
        )
        .expect("sent");
    }
    let consumer = consumer(&broker.bootstrap, "watch", &[]);
    let trimmed = eventually(WAIT, || {
        let (low, high) = consumer
            .fetch_watermarks("short", 0, Duration::from_secs(5))
            .expect("watermarks");
        assert_eq!(high, 400);
        low > 0
    });
    assert!(trimmed, "retention.bytes never deleted a segment");
    close(consumer);
}

#[test]
fn unknown_topics_are_not_created_by_default() {
    let broker = BrokerProcess::start();
    let asker = consumer(&broker.bootstrap, "meta", &[]);
    let metadata = asker
        .fetch_metadata(Some("nobody-made-this"), Duration::from_secs(10))
        .expect("metadata");
    let error = metadata.topics()[0].error().map(RDKafkaErrorCode::from);
    assert_eq!(error, Some(RDKafkaErrorCode::UnknownTopicOrPartition));
    let refused = producer(&broker.bootstrap, &[("message.timeout.ms", "2000")]);
    let result = block_on(refused.send(
        FutureRecord::to("nobody-made-this").key("k").payload("v"),
        Duration::from_secs(5),
    ));
    assert!(result.is_err(), "produce to a missing topic must fail");
    close(asker);

    let auto = BrokerProcess::start_with(&["--auto-create-topics", "--default-partitions", "2"]);
    let creator = producer(&auto.bootstrap, &[]);
    block_on(creator.send(
        FutureRecord::to("made-on-demand").key("k").payload("v"),
        Duration::from_secs(10),
    ))
    .expect("auto-created");
    let asker = consumer(&auto.bootstrap, "meta", &[]);
    let metadata = asker
        .fetch_metadata(Some("made-on-demand"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 2);
    close(asker);
}

#[test]
fn delete_records_moves_the_log_start_and_survives_restart() {
    let mut broker = BrokerProcess::start();
    broker.create_topic("trim", 1, &[]);
    let producer = producer(&broker.bootstrap, &[]);
    for i in 0..50 {
        block_on(producer.send(
            FutureRecord::to("trim").key("k").payload(&format!("{i}")),
            Duration::from_secs(10),
        ))
        .expect("sent");
    }
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset("trim", 0, Offset::Offset(30))
        .unwrap();
    let options =
        rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let result = block_on(broker.admin().delete_records(&upto, &options)).expect("delete records");
    assert_eq!(result.elements()[0].offset(), Offset::Offset(30));
    broker.stop();
    broker.restart();
    let consumer = consumer(&broker.bootstrap, "after-trim", &[]);
    assert_eq!(
        consumer
            .fetch_watermarks("trim", 0, Duration::from_secs(10))
            .expect("watermarks"),
        (30, 50)
    );
    consumer.subscribe(&["trim"]).unwrap();
    let got = drain(&consumer, 20, WAIT);
    assert_eq!(got.first().map(|m| m.1), Some(30));
    assert_eq!(got.len(), 20);
    close(consumer);
}

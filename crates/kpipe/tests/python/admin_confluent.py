#!/usr/bin/env python3
"""Admin + produce/consume conformance check of a Kafka broker with confluent-kafka
(librdkafka), the reference client. kpipe's tests run it against the embedded
broker: `admin_confluent.py --bootstrap HOST:PORT`. Prints `ok` and exits 0, or
prints `FAIL: <step>: <reason>` and exits non-zero. Never hangs: every call has a
timeout and a watchdog ends the process after WATCHDOG_S seconds.
Needs confluent-kafka >= 2.3 (AdminClient.list_offsets)."""
import argparse
import os
import sys
import threading
import time
import uuid
import warnings

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewPartitions, NewTopic, OffsetSpec, ResourceType)

T = 15  # seconds for each blocking call
WATCHDOG_S = 180
step = "start"


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def done(futmap):
    return {k: f.result(timeout=T) for k, f in futmap.items()}


def topic_configs(admin, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    return {name: e.value for name, e in entries.items()}


def partitions(admin, topic):
    md = admin.list_topics(topic=topic, timeout=T).topics.get(topic)
    check(md is not None and md.error is None, f"metadata for {topic}: {md and md.error}")
    return len(md.partitions)


def run(bootstrap):
    global step
    sfx = uuid.uuid4().hex[:8]
    topic, keep, group = f"adm-{sfx}", f"keep-{sfx}", f"g-{sfx}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": T * 1000})

    step = "create topics"
    done(admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                                       config={"retention.ms": "3600000"}),
                              NewTopic(keep, num_partitions=1, replication_factor=1)], operation_timeout=T, request_timeout=T))

    step = "create existing topic"
    try:
        done(admin.create_topics([NewTopic(topic, 2, 1)], request_timeout=T))
        check(False, "second create of the same topic succeeded")
    except KafkaException as e:
        code = e.args[0].code()
        check(code == KafkaError.TOPIC_ALREADY_EXISTS, f"expected TOPIC_ALREADY_EXISTS, got {e}")

    step = "list_topics"
    check(partitions(admin, topic) == 2, "topic should have 2 partitions")

    step = "describe_configs"
    cfg = topic_configs(admin, topic)
    check(cfg.get("retention.ms") == "3600000", f"retention.ms={cfg.get('retention.ms')!r}")
    check(cfg.get("cleanup.policy") == "delete", f"default cleanup.policy={cfg.get('cleanup.policy')!r}")

    step = "incremental_alter_configs"
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", "7200000", incremental_operation=AlterConfigOpType.SET)])
    done(admin.incremental_alter_configs([res], request_timeout=T))
    cfg = topic_configs(admin, topic)
    check(cfg.get("retention.ms") == "7200000", f"after incremental alter retention.ms={cfg.get('retention.ms')!r}")

    step = "alter_configs (legacy)"
    res = ConfigResource(ResourceType.TOPIC, topic,
                         set_config={"cleanup.policy": "compact", "retention.ms": "7200000"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        done(admin.alter_configs([res], request_timeout=T))
    cfg = topic_configs(admin, topic)
    check(cfg.get("cleanup.policy") == "compact", f"after alter cleanup.policy={cfg.get('cleanup.policy')!r}")
    check(cfg.get("retention.ms") == "7200000", f"after alter retention.ms={cfg.get('retention.ms')!r}")

    step = "create_partitions"
    done(admin.create_partitions([NewPartitions(topic, 4)], operation_timeout=T, request_timeout=T))
    check(partitions(admin, topic) == 4, "topic should have 4 partitions after create_partitions")

    step = "describe_configs broker"
    broker_id = str(next(iter(admin.list_topics(timeout=T).brokers)))
    res = ConfigResource(ResourceType.BROKER, broker_id)
    broker_cfg = admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)
    check(len(broker_cfg) > 0, f"broker {broker_id} returned no configs")

    step = "produce"
    before_ms = int(time.time() * 1000) - 60_000
    acked, errors = [], []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.timeout.ms": T * 1000})
    for i in range(10):
        producer.produce(topic, key=f"k{i}", value=f"v{i}",
                         on_delivery=lambda err, msg: (errors if err else acked).append(err or msg))
    left = producer.flush(T)
    check(left == 0 and not errors, f"flush left {left} messages, errors {errors}")
    check(len(acked) == 10, f"{len(acked)} of 10 deliveries acknowledged")

    step = "consume"
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 10000})
    try:
        consumer.subscribe([topic])
        values, deadline = set(), time.monotonic() + 30
        while len(values) < 10 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            check(msg.error() is None, f"consumer error {msg.error()}")
            values.add(msg.value().decode())
        check(values == {f"v{i}" for i in range(10)}, f"consumed {sorted(values)}")
        failed = [tp for tp in consumer.commit(asynchronous=False) if tp.error is not None]
        check(not failed, f"commit failed for {failed}")
    finally:
        consumer.close()

    step = "list_consumer_groups"
    listed = admin.list_consumer_groups(request_timeout=T).result(timeout=T)
    check(group in {g.group_id for g in listed.valid}, f"{group} not in {[g.group_id for g in listed.valid]}")

    step = "describe_consumer_groups"
    desc = admin.describe_consumer_groups([group], request_timeout=T)[group].result(timeout=T)
    check(desc.group_id == group, f"described group_id {desc.group_id!r}")

    step = "list_offsets"
    tps = [TopicPartition(topic, p) for p in range(4)]

    def offsets(spec):
        got = done(admin.list_offsets({tp: spec for tp in tps}, request_timeout=T))
        return {tp.partition: info.offset for tp, info in got.items()}
    earliest, latest = offsets(OffsetSpec.earliest()), offsets(OffsetSpec.latest())
    check(set(earliest.values()) == {0}, f"earliest offsets {earliest}")
    check(sum(latest.values()) == 10, f"latest offsets {latest} do not sum to 10")
    by_time = offsets(OffsetSpec.for_timestamp(before_ms))
    for p, end in latest.items():
        if end > 0:
            check(by_time[p] == 0, f"for_timestamp on partition {p} gave {by_time[p]}, want 0")

    step = "describe_cluster"
    cluster = admin.describe_cluster(request_timeout=T).result(timeout=T)
    check(cluster.cluster_id, "describe_cluster returned no cluster id")
    check([n.id for n in cluster.nodes] == [0], f"describe_cluster nodes: {cluster.nodes}")
    check(cluster.controller is not None and cluster.controller.id == 0, f"controller: {cluster.controller}")

    step = "delete_records"
    low = admin.delete_records([TopicPartition(topic, 0, 1)], request_timeout=T)
    got = {tp.partition: f.result(timeout=T) for tp, f in low.items()}
    check(got[0].low_watermark == 1, f"delete_records low watermark {got[0].low_watermark}, want 1")

    step = "delete_topics"
    done(admin.delete_topics([topic], operation_timeout=T, request_timeout=T))
    deadline = time.monotonic() + T
    while topic in admin.list_topics(timeout=T).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    names = admin.list_topics(timeout=T).topics
    check(topic not in names, f"{topic} still listed after delete")
    check(keep in names, f"{keep} vanished when {topic} was deleted")
    done(admin.delete_topics([keep], request_timeout=T))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    args = ap.parse_args()

    def watchdog():
        print(f"FAIL: {step}: watchdog fired after {WATCHDOG_S}s", flush=True)
        os._exit(3)
    timer = threading.Timer(WATCHDOG_S, watchdog)
    timer.daemon = True
    timer.start()
    try:
        run(args.bootstrap)
    except Exception as e:  # noqa: BLE001 - report any failure with its step
        print(f"FAIL: {step}: {e!r}", flush=True)
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Admin + produce/consume conformance check of a Kafka broker with kafka-python,
a pure-Python client that shares no code with librdkafka, so it catches protocol
mistakes that librdkafka tolerates. kpipe's tests run it against the embedded
broker: `kafka_python_client.py --bootstrap HOST:PORT`. Prints `ok` and exits 0,
or prints `FAIL: <step>: <reason>` and exits non-zero. Never hangs: every call
has a timeout and a watchdog ends the process after WATCHDOG_S seconds.
Written for the kafka-python 3.x API (list_groups, describe_groups,
list_group_offsets; 2.x called them list_consumer_groups etc.)."""
import argparse
import os
import sys
import threading
import time
import uuid

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError

MS = 15_000  # milliseconds for each blocking call
WATCHDOG_S = 180
step = "start"
COMMON = {"request_timeout_ms": MS, "bootstrap_timeout_ms": MS, "reconnect_backoff_max_ms": 1000}


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def topic_configs(admin, topic):
    got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")
    return {k: v["value"] for k, v in got["topic"][topic].items()}


def describe(admin, topic):
    (md,) = admin.describe_topics([topic])
    check(md["error_code"] == 0, f"metadata error {md['error_code']} for {topic}")
    return md


def alter(admin, topic, configs, incremental):
    got = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)],
                              incremental=incremental)
    check(got == {"topic": {topic: "OK"}}, f"alter_configs(incremental={incremental}) returned {got}")


def run(bootstrap):
    global step
    check(int(kafka.__version__.split(".")[0]) >= 3, f"needs kafka-python >= 3, found {kafka.__version__}")
    sfx = uuid.uuid4().hex[:8]
    topic, keep, group = f"kp-{sfx}", f"keep-{sfx}", f"g-{sfx}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="kpipe-test", **COMMON)

    step = "create_topics"
    admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"retention.ms": "3600000"}),
                         NewTopic(keep, 1, 1)], timeout_ms=MS)

    step = "create existing topic"
    try:
        admin.create_topics([NewTopic(topic, 2, 1)], timeout_ms=MS)
        check(False, "second create of the same topic succeeded")
    except TopicAlreadyExistsError:
        pass

    step = "describe_topics"
    check(len(describe(admin, topic)["partitions"]) == 2, "topic should have 2 partitions")

    step = "describe_configs"
    cfg = topic_configs(admin, topic)
    check(cfg.get("retention.ms") == "3600000", f"retention.ms={cfg.get('retention.ms')!r}")
    check(cfg.get("cleanup.policy") == "delete", f"default cleanup.policy={cfg.get('cleanup.policy')!r}")

    step = "alter_configs incremental"
    alter(admin, topic, {"retention.ms": "7200000"}, incremental=True)
    cfg = topic_configs(admin, topic)
    check(cfg.get("retention.ms") == "7200000", f"after alter retention.ms={cfg.get('retention.ms')!r}")

    step = "alter_configs legacy"
    alter(admin, topic, {"cleanup.policy": "compact", "retention.ms": "7200000"}, incremental=False)
    cfg = topic_configs(admin, topic)
    check(cfg.get("cleanup.policy") == "compact", f"after alter cleanup.policy={cfg.get('cleanup.policy')!r}")
    check(cfg.get("retention.ms") == "7200000", f"after alter retention.ms={cfg.get('retention.ms')!r}")

    step = "create_partitions"
    admin.create_partitions({topic: NewPartitions(3)}, timeout_ms=MS)
    parts = describe(admin, topic)["partitions"]
    check(len(parts) == 3, f"topic should have 3 partitions, has {len(parts)}")

    step = "describe_configs broker"
    broker = str(parts[0]["leader_id"])
    got = admin.describe_configs([ConfigResource(ConfigResourceType.BROKER, broker)], config_filter="all")
    check(len(got.get("broker", {}).get(broker, {})) > 0, f"broker {broker} returned no configs")

    step = "produce"
    before_ms = int(time.time() * 1000) - 60_000
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_block_ms=MS, **COMMON)
    futures = [producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(10)]
    producer.flush(timeout=MS / 1000)
    acked = [f.get(timeout=MS / 1000) for f in futures]
    check(all(m.offset >= 0 for m in acked), f"bad acks {acked}")
    producer.close(timeout=MS / 1000)

    step = "consume"
    tps = [TopicPartition(topic, p) for p in range(3)]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, **COMMON)
    try:
        consumer.subscribe([topic])
        values, deadline = set(), time.monotonic() + 30
        while len(values) < 10 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                values.update(r.value.decode() for r in records)
        check(values == {f"v{i}" for i in range(10)}, f"consumed {sorted(values)}")
        consumer.commit(timeout_ms=MS)

        step = "consumer offsets"
        begin = consumer.beginning_offsets(tps, timeout_ms=MS)
        end = consumer.end_offsets(tps, timeout_ms=MS)
        check(set(begin.values()) == {0}, f"beginning_offsets {begin}")
        check(sum(end.values()) == 10, f"end_offsets {end} do not sum to 10")
        by_time = consumer.offsets_for_times({tp: before_ms for tp in tps}, timeout_ms=MS)
        for tp in tps:
            if end[tp] > 0:
                check(by_time[tp] is not None and by_time[tp].offset == 0,
                      f"offsets_for_times on partition {tp.partition} gave {by_time[tp]}")
    finally:
        consumer.close(timeout_ms=MS)

    step = "list_groups"
    groups = [g["group_id"] for g in admin.list_groups()]
    check(group in groups, f"{group} not in {groups}")

    step = "describe_groups"
    desc = admin.describe_groups([group]).get(group)
    check(desc is not None and desc["error"] is None, f"describe_groups gave {desc}")
    check(desc["group_id"] == group, f"described group_id {desc['group_id']!r}")

    step = "list_group_offsets"
    committed = admin.list_group_offsets({group: None})[group]
    total = sum(om.offset for tp, om in committed.items() if tp.topic == topic)
    check(total == 10, f"committed offsets {committed} do not sum to 10")

    step = "delete_topics"
    admin.delete_topics([topic], timeout_ms=MS)
    deadline = time.monotonic() + MS / 1000
    while topic in admin.list_topics() and time.monotonic() < deadline:
        time.sleep(0.2)
    names = admin.list_topics()
    check(topic not in names, f"{topic} still listed after delete")
    check(keep in names, f"{keep} vanished when {topic} was deleted")
    admin.delete_topics([keep], timeout_ms=MS)
    admin.close()


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

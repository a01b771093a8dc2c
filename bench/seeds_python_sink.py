#!/usr/bin/env python3
"""The seeds' lake loader (seeds 01/02), for comparison in bench/lake.sh: a
confluent-kafka consumer that collects batches of 10k JSON messages, flattens
them with pandas.json_normalize, and writes each batch as YYYY-MM-DD/UUID.parquet
with pyarrow. Runs until it has read N messages, then prints how many it wrote.
Usage: seeds_python_sink.py BOOTSTRAP TOPIC OUT_DIR N"""
import datetime
import json
import os
import sys
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import Consumer

BATCH_SIZE = 10_000
bootstrap, topic, out_dir, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"seeds-python-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
})
consumer.subscribe([topic])
written, batch = 0, []


def flush(batch):
    frame = pd.json_normalize(batch)
    day = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    os.makedirs(os.path.join(out_dir, day), exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame), os.path.join(out_dir, day, f"{uuid.uuid4()}.parquet"))
    consumer.commit(asynchronous=False)


while written + len(batch) < total:
    message = consumer.poll(1.0)
    if message is None or message.error():
        continue
    batch.append(json.loads(message.value()))
    if len(batch) >= BATCH_SIZE:
        flush(batch)
        written += len(batch)
        batch = []
if batch:
    flush(batch)
    written += len(batch)
consumer.close()
print(written)

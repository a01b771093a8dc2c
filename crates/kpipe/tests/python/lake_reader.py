#!/usr/bin/env python3
"""An independent reader of a kpipe lake (DuckDB, not kpipe's code): prints
`rows distinct_offsets` for one topic, counting (partition, offset) pairs.
Usage: lake_reader.py LAKE_DIR TOPIC"""
import sys

import duckdb

lake, topic = sys.argv[1], sys.argv[2]
rows, distinct = duckdb.sql(
    f"""SELECT count(*), count(DISTINCT (_partition, _offset))
        FROM read_parquet('{lake}/{topic}/*/*.parquet', hive_partitioning = true, union_by_name = true)"""
).fetchall()[0]
print(rows, distinct)

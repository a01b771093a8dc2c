#!/usr/bin/env bash
# Streaming SQL benchmark (not a test): a tumbling 10-second COUNT and SUM per
# name over N payments events (seed 03's stream) read from `kpipe broker` by
# `kpipe sql` (CREATE TABLE ... EMIT FINAL, --until-end), and in the same run
# DuckDB and DataFusion computing the same final windows in batch over the same
# events, read from a JSON-lines file (the ceiling), and DuckDB from a table
# already in memory.
# Both answers must agree: same closed windows, same counts and sums.
# Targets: >= 500k events/s per core, within 3x of the batch engine.
# Usage: bench/sql.sh [EVENTS=5000000]   (needs the .venv of scripts/test.sh)
set -euo pipefail

N="${1:-5000000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv_python duckdb datafusion

start_kpipe_broker
B="127.0.0.1:$PORT"
STREAM="CREATE STREAM payments (name VARCHAR, amount INTEGER) WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='json', PARTITIONS=3);"
"$KPIPE" sql -b "$B" -e "$STREAM" >/dev/null
# Event time starts two days ago on a window boundary, 1 ms apart (as kpipe gen spaces them).
START=$(( ($(date +%s) - 172800) / 10 * 10000 ))
"$KPIPE" gen payments --count "$N" --start-ms "$START" -b "$B" 2>/dev/null

QUERY="CREATE TABLE payment_windows AS SELECT name, COUNT(*) AS cnt, SUM(amount) AS total
  FROM payments WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY name EMIT FINAL;"
/usr/bin/time -f "%e %U %S %M" -o "$WORK/sql.time" "$KPIPE" sql -b "$B" --until-end \
    -e "$STREAM SET 'auto.offset.reset'='earliest'; $QUERY" >/dev/null 2>"$WORK/sql.log" \
    || die "kpipe sql failed: $(cat "$WORK/sql.log")"
read -r ELAPSED USER SYS RSS_KB <"$WORK/sql.time"
grep -q "read $N records" "$WORK/sql.log" || die "kpipe sql did not read $N records: $(cat "$WORK/sql.log")"
WINDOWS="$(awk '/wrote/ { sub(",", "", $(NF-2)); print $(NF-2) }' "$WORK/sql.log")"

# The streamed answer and the events, read back for DuckDB (not timed).
timeout 600 "$KPIPE" consume PAYMENT_WINDOWS -b "$B" --from-beginning --max "$WINDOWS" >"$WORK/windows.jsonl" 2>/dev/null
timeout 600 "$KPIPE" consume payments -b "$B" --from-beginning --with-meta --max "$N" >"$WORK/meta.jsonl" 2>/dev/null

"$PY" - "$WORK" "$N" "$ELAPSED" "$USER" "$SYS" "$RSS_KB" <<'PY'
import sys, time, duckdb, datafusion, pyarrow
work, n, elapsed, user, sys_s, rss_kb = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), int(sys.argv[6])
con = duckdb.connect()
con.execute(f"""CREATE TABLE events AS SELECT timestamp AS ts,
    json_extract_string(value, '$.name') AS name, CAST(json_extract(value, '$.amount') AS BIGINT) AS amount
    FROM read_json('{work}/meta.jsonl', format='newline_delimited')""")
con.execute(f"COPY events TO '{work}/events.jsonl' (FORMAT json)")
# EMIT FINAL's answer: windows closed by the highest timestamp (no grace period).
windows = """SELECT count(*), sum(cnt), sum(total) FROM (
    SELECT name, ts // 10000 * 10000 AS ws, count(*) AS cnt, sum(amount) AS total FROM {src}
    GROUP BY name, ws) WHERE ws + 10000 <= (SELECT max(ts) FROM {src})"""
def best_of_three(run):  # so file caching does not decide the ceiling
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        answer = run()
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    return answer, best
def timed(src):
    return best_of_three(lambda: con.execute(windows.format(src=src)).fetchone())
from_file, file_s = timed(f"read_json('{work}/events.jsonl', format='newline_delimited', columns={{ts: 'BIGINT', name: 'VARCHAR', amount: 'BIGINT'}})")
in_memory, memory_s = timed("events")
fusion = datafusion.SessionContext()
fusion.register_json("events", f"{work}/events.jsonl", file_extension=".jsonl", schema=pyarrow.schema(
    [("ts", pyarrow.int64()), ("name", pyarrow.string()), ("amount", pyarrow.int64())]))
fused, fusion_s = best_of_three(lambda: tuple(  # DataFusion's / on integers is //
    column[0].as_py() for column in fusion.sql(windows.format(src="events").replace("//", "/")).collect()[0].columns))
streamed = con.execute(f"""SELECT count(*), sum(CNT), sum(TOTAL)
    FROM read_json('{work}/windows.jsonl', format='newline_delimited')""").fetchone()
assert from_file == in_memory, (from_file, in_memory)
assert tuple(map(int, fused)) == tuple(map(int, from_file)), f"DataFusion {fused} != DuckDB {from_file}"
assert tuple(map(int, streamed)) == tuple(map(int, from_file)), f"kpipe {streamed} != DuckDB {from_file}"
cpu = user + sys_s
print(f"{n} payments events, 3 partitions; {int(from_file[0])} closed 10-second windows agree (count {int(from_file[1])}, sum {int(from_file[2])})")
print(f"{'engine':44} {'events/s':>10} {'per core':>10}")
print(f"{'kpipe sql (from kpipe broker, EMIT FINAL)':44} {n / elapsed:10.0f} {n / cpu:10.0f}   cpu {cpu:.1f} s, RSS {rss_kb / 1024:.0f} MB")
print(f"{'DuckDB batch, JSON lines file (2 threads)':44} {n / file_s:10.0f}")
print(f"{'DataFusion batch, JSON lines file':44} {n / fusion_s:10.0f}")
print(f"{'DuckDB batch, table in memory':44} {n / memory_s:10.0f}")
print(f"kpipe / DuckDB over JSON: {100 * file_s / elapsed:.0f}% ({elapsed / file_s:.1f}x slower)")
print(f"kpipe / DataFusion over JSON: {100 * fusion_s / elapsed:.0f}% ({elapsed / fusion_s:.1f}x slower)")
PY

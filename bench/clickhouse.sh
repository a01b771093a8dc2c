#!/usr/bin/env bash
# ClickHouse sink benchmark (not a test): loads N music events from `kpipe broker`
# into a MergeTree table with `kpipe sink clickhouse --until-end`, then, in the
# same run, has clickhouse-client insert the very same rows (exported from that
# table as JSONEachRow) into an identical table: the server's own ceiling.
# Prints rows/s for both and the ratio. Target: the sink >= 70% of the ceiling.
# Usage: bench/clickhouse.sh [EVENTS=1000000]  (needs clickhouse-server and
# clickhouse-client: scripts/test.sh installs them)
set -euo pipefail

N="${1:-1000000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
command -v clickhouse-client >/dev/null || die "clickhouse-client not found (apt-get install clickhouse-client)"

start_kpipe_broker
B="127.0.0.1:$PORT"
"$KPIPE" topic create music_events --partitions 3 -b "$B" >/dev/null
"$KPIPE" gen music --count "$N" --seed 1 -b "$B" 2>/dev/null

HTTP="$(free_port)"; TCP="$(free_port)"
CH_PID="$("$REPO/scripts/clickhouse.sh" "$WORK/ch" "$HTTP" "$TCP")"
stop_clickhouse() { kill -9 "$CH_PID" 2>/dev/null || true; }
trap 'stop_clickhouse; cleanup' EXIT
q() { clickhouse-client --port "$TCP" --query "$1"; }
TABLE_COLUMNS='(
    `event_param.event_type_id` UInt8,
    `event_param.event_type` String,
    `event_param.user_id` String,
    `event_param.platform_token` String,
    `event_param.ipv4` String,
    `event_param.country` String,
    `event_param.uuid_track` String,
    `event_timestamp.ts` DateTime,
    `event_timestamp.ts_ms` UInt64,
    kafka_partition Int32,
    kafka_offset Int64,
    batch_id String,
    consumer_group_id String,
    processing_time DateTime
) ENGINE = MergeTree() ORDER BY (kafka_partition, kafka_offset)'
q "CREATE TABLE default.music_sink $TABLE_COLUMNS"
q "CREATE TABLE default.music_client $TABLE_COLUMNS"

t0="$(now)"
"$KPIPE" sink clickhouse --topic music_events --table default.music_sink --url "http://127.0.0.1:$HTTP" \
    -b "$B" --until-end --batch-rows 100000 2>"$WORK/sink.log" || die "sink failed: $(cat "$WORK/sink.log")"
t1="$(now)"
SINK_ROWS="$(q 'SELECT count() FROM default.music_sink')"
[ "$SINK_ROWS" -eq "$N" ] || die "the sink loaded $SINK_ROWS of $N rows"

q "SELECT * FROM default.music_sink ORDER BY kafka_partition, kafka_offset FORMAT JSONEachRow" >"$WORK/rows.json"
t2="$(now)"
clickhouse-client --port "$TCP" --query "INSERT INTO default.music_client FORMAT JSONEachRow" <"$WORK/rows.json"
t3="$(now)"
CLIENT_ROWS="$(q 'SELECT count() FROM default.music_client')"
[ "$CLIENT_ROWS" -eq "$N" ] || die "clickhouse-client loaded $CLIENT_ROWS of $N rows"

echo "$N music events, 3 partitions, one ClickHouse $(q 'SELECT version()') server, MergeTree"
awk -v n="$N" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v mb="$(du -m "$WORK/rows.json" | cut -f1)" 'BEGIN {
    s = n / (b - a); c_ = n / (d - c)
    printf "%-44s %10.0f rows/s\n", "kpipe sink clickhouse (Kafka -> ClickHouse)", s
    printf "%-44s %10.0f rows/s  (%d MB of JSONEachRow)\n", "clickhouse-client INSERT FORMAT JSONEachRow", c_, mb
    printf "sink / clickhouse-client ceiling: %.0f%%\n", 100 * s / c_ }'

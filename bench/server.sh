#!/usr/bin/env bash
# `kpipe server` benchmark (not a test), both figures of issue 7 item 6:
# 1. Pull-query latency: PAYMENTS payments events (seed 03) aggregated by a CTAS
#    (COUNT and SUM per name); once the table holds every event, 100 clients,
#    each on its own HTTP/1.1 keep-alive connection, send key lookups to
#    POST /query for SECONDS (crates/kpipe-server/examples/pull_load.rs), then 1
#    client does; GET /healthcheck under the same load is the baseline: the HTTP
#    server's own cost without a query.
# 2. State restore: a CTAS GROUP BY over KEYS distinct keys; after a SIGTERM and
#    after a kill -9, the time from starting the server again until /healthcheck
#    answers 200 and a pull sees 30 keys updated by records produced while it
#    was down (so the query has restored its state and caught up again).
# Prints requests/s, p50/p99/max latency and errors per load (a client finishes
# the request it has in flight when SECONDS are up, so a slow load runs longer),
# and the restore times.
# Usage: bench/server.sh [--seconds 10] [--payments 10000] [--keys 1000000]
set -euo pipefail

SECONDS_PER_LOAD=10
PAYMENTS=10000
KEYS=1000000
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_LOAD="$2"; shift 2 ;;
        --payments) PAYMENTS="$2"; shift 2 ;;
        --keys) KEYS="$2"; shift 2 ;;
        *) echo "usage: bench/server.sh [--seconds S] [--payments N] [--keys N]" >&2; exit 2 ;;
    esac
done
BUILD_ALSO=(-p kpipe-server --example pull_load)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PULL_LOAD="${CARGO_TARGET_DIR:-$REPO/target}/release/examples/pull_load"

elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

start_server() {  # start_server: kpipe server on $SERVER_PORT with state in $WORK/state; sets SERVER
    "$KPIPE" server -b "$B" --listen "127.0.0.1:$SERVER_PORT" --state "$WORK/state" \
        >>"$WORK/server.log" 2>&1 &
    SERVER=$!
    PIDS+=("$SERVER")
}

healthy() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/healthcheck")" = 200 ]; }

wait_listening() {  # wait_listening: up to 60 s for the server to answer HTTP at all
    for _ in $(seq 600); do
        kill -0 "$SERVER" 2>/dev/null || die "kpipe server exited; log: $(tail -n 5 "$WORK/server.log")"
        curl -s -o /dev/null "$URL/info" && return 0
        sleep 0.1
    done
    die "kpipe server did not answer within 60 s"
}

ksql() {  # ksql STATEMENTS: one POST /ksql; queries start from the earliest offsets
    curl -sf "$URL/ksql" -H 'Content-Type: application/json' \
        -d "{\"ksql\": \"${1//$'\n'/ }\", \"streamsProperties\": {\"auto.offset.reset\": \"earliest\"}}" \
        >/dev/null || die "POST /ksql failed: $1"
}

pulled() {  # pulled SQL: the pull's row count and the sum of its second column ("0 0" on failure)
    curl -s "$URL/query" -H 'Content-Type: application/json' \
        -d "{\"ksql\": \"$1\", \"streamsProperties\": {\"ksql.query.pull.table.scan.enabled\": true}}" |
        python3 -c '
import json, sys
try:
    rows = [e["row"]["columns"] for e in json.load(sys.stdin) if "row" in e]
except (ValueError, TypeError, KeyError):
    rows = []
print(len(rows), sum(r[1] for r in rows))'
}

wait_pulled() {  # wait_pulled SQL "ROWS SUM" TIMEOUT: polls the pull until it answers this
    local deadline=$(( $(date +%s) + $3 ))
    until [ "$(pulled "$1")" = "$2" ]; do
        kill -0 "$SERVER" 2>/dev/null || die "kpipe server exited; log: $(tail -n 5 "$WORK/server.log")"
        [ "$(date +%s)" -lt "$deadline" ] || die "no answer \"$2\" to $1 within $3 s (last: $(pulled "$1"))"
        sleep 0.1
    done
}

start_kpipe_broker
B="127.0.0.1:$PORT"
SERVER_PORT="$(free_port)"
URL="http://127.0.0.1:$SERVER_PORT"
start_server
wait_listening

# 1. Pull-query latency.
ksql "CREATE STREAM payments (name VARCHAR, amount INTEGER) WITH (KAFKA_TOPIC='payments', VALUE_FORMAT='JSON', PARTITIONS=3);
CREATE TABLE totals AS SELECT name, COUNT(*) AS cnt, SUM(amount) AS total FROM payments GROUP BY name;"
"$KPIPE" gen payments --count "$PAYMENTS" -b "$B" 2>/dev/null
wait_pulled "SELECT name, cnt FROM totals;" "19 $PAYMENTS" 300
LOADS=()
for load in "pull 100" "pull 1" "healthcheck 100" "healthcheck 1"; do
    read -r kind clients <<<"$load"
    flag=(); [ "$kind" = healthcheck ] && flag=(--healthcheck)
    figures="$("$PULL_LOAD" "$URL" TOTALS NAME --clients "$clients" --seconds "$SECONDS_PER_LOAD" "${flag[@]}")"
    LOADS+=("$kind $clients $figures")
done

# 2. Restore after a restart, KEYS distinct keys (k0000001 ...), one record each.
awk -v n="$KEYS" 'BEGIN { for (i = 1; i <= n; i++) printf "{\"id\":\"k%07d\",\"v\":%d}\n", i, i }' >"$WORK/keys.jsonl"
ksql "CREATE STREAM events (id VARCHAR, v INTEGER) WITH (KAFKA_TOPIC='events', VALUE_FORMAT='JSON', PARTITIONS=3);
CREATE TABLE per_key AS SELECT id, COUNT(*) AS cnt, SUM(v) AS total FROM events GROUP BY id;"
T0=$(now)
"$KPIPE" produce events -b "$B" --key-field id <"$WORK/keys.jsonl" 2>/dev/null
T1=$(now)
# The last 30 keys produced are the last records of every partition (all 3 are
# among them but for a chance of 3 * (2/3)^30), so once all 30 are in the table
# the query has read all its input.
in_list() { awk -v a="$1" -v b="$2" 'BEGIN { for (i = a; i <= b; i++) printf "%s'\''k%07d'\''", (i > a ? "," : ""), i }'; }
wait_pulled "SELECT id, cnt FROM per_key WHERE id IN ($(in_list $((KEYS - 29)) "$KEYS"));" "30 30" 900
T2=$(now)
PRODUCE_S="$(elapsed "$T0" "$T1")"
FIRST_RUN_S="$(elapsed "$T0" "$T2")"

# Each restart: the server stops, keys 1-30 get one more record each while it is
# down, and the time runs from its start until it is healthy and has counted them.
MARKED="SELECT id, cnt FROM per_key WHERE id IN ($(in_list 1 30));"
RESTARTS=()
round=1
for signal in TERM KILL; do
    t_stop=$(now)
    kill -s "$signal" "$SERVER"
    wait "$SERVER" 2>/dev/null || true
    stop_s="$(elapsed "$t_stop" "$(now)")"
    in_list 1 30 | tr ',' '\n' | tr -d "'" |
        awk -v r="$round" '{ printf "{\"id\":\"%s\",\"v\":%d}\n", $0, r }' |
        "$KPIPE" produce events -b "$B" --key-field id 2>/dev/null
    round=$((round + 1))
    t_start=$(now)
    start_server
    until healthy; do
        kill -0 "$SERVER" 2>/dev/null || die "kpipe server exited; log: $(tail -n 5 "$WORK/server.log")"
        sleep 0.05
    done
    healthy_s="$(elapsed "$t_start" "$(now)")"
    wait_pulled "$MARKED" "30 $((30 * round))" 900
    healthy || die "the server is caught up but /healthcheck no longer answers 200"
    RESTARTS+=("$signal $stop_s $healthy_s $(elapsed "$t_start" "$(now)")")
done

echo
echo "kpipe server on loopback; pull queries on a table of 19 names over $PAYMENTS payments, ${SECONDS_PER_LOAD} s per load"
printf '%-38s %9s %9s %9s %9s %9s %7s\n' load requests "req/s" "p50 ms" "p99 ms" "max ms" errors
for line in "${LOADS[@]}"; do
    read -r kind clients figures <<<"$line"
    eval "$figures"  # requests= rps= p50_ms= p99_ms= max_ms= errors=
    label="POST /query key lookup"; [ "$kind" = healthcheck ] && label="GET /healthcheck"
    printf '%-38s %9s %9s %9s %9s %9s %7s\n' "$label, $clients client(s)" \
        "$requests" "$rps" "$p50_ms" "$p99_ms" "$max_ms" "$errors"
done
echo
echo "restore: CTAS GROUP BY over $KEYS distinct keys (3 partitions); produced in ${PRODUCE_S} s, all in the table ${FIRST_RUN_S} s after the first record"
printf '%-22s %10s %14s %22s\n' restart "stop s" "healthy s" "caught up again s"
for line in "${RESTARTS[@]}"; do
    read -r signal stop_s healthy_s caught_s <<<"$line"
    label="SIGTERM + start"; [ "$signal" = KILL ] && label="kill -9 + start"
    printf '%-22s %10s %14s %22s\n' "$label" "$stop_s" "$healthy_s" "$caught_s"
done

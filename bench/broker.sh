#!/usr/bin/env bash
# Throughput benchmark of the embedded broker (not a test): produces MESSAGES
# messages of SIZE bytes with kcat (acks=all) into a 3-partition topic, reads
# them back, and prints msgs/s, MB/s and the broker's peak RSS. If a `tansu`
# binary is on PATH, measures it the same way in the same run (memory storage),
# so the numbers are comparable on this machine.
# Usage: bench/broker.sh [MESSAGES=1000000] [SIZE=200]
# Needs kcat.
set -euo pipefail

N="${1:-1000000}"
SIZE="${2:-200}"
KCAT_TIMEOUT=900
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

# The message file is made once per (N, SIZE) and kept in bench/out/ (git-ignored).
mkdir -p bench/out
MSGS="bench/out/msgs-$N-$SIZE.txt"
if [ ! -s "$MSGS" ]; then
    python3 - "$N" "$SIZE" "$MSGS.tmp" <<'EOF'
import os, string, sys
n, size, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
alphabet = (string.ascii_letters + string.digits + "-_").encode()
table = bytes(alphabet[i % len(alphabet)] for i in range(256))
with open(path, "wb") as f:
    for start in range(0, n, 10000):
        k = min(10000, n - start)
        data = os.urandom(k * size).translate(table)
        f.write(b"\n".join(data[i * size:(i + 1) * size] for i in range(k)) + b"\n")
EOF
    mv "$MSGS.tmp" "$MSGS"
fi

create_topic() {  # create_topic BOOTSTRAP
    "$KPIPE" topic create bench --partitions 3 -b "$1" >/dev/null
}

ROWS=()
measure() {  # measure NAME PORT PID
    local name="$1" b="127.0.0.1:$2" pid="$3" t0 t1 got
    create_topic "$b" || die "$name: could not create topic 'bench'"

    t0="$(now)"
    timeout "$KCAT_TIMEOUT" kcat -P -q -b "$b" -t bench -X acks=all -X linger.ms=5 \
        -X batch.num.messages=10000 -l "$MSGS" || die "$name: kcat produce failed or timed out"
    t1="$(now)"
    ROWS+=("$(row "$name" produce "$t0" "$t1")")

    t0="$(now)"
    got="$(timeout "$KCAT_TIMEOUT" kcat -C -q -b "$b" -t bench -o beginning -e -c "$N" | wc -l)" \
        || die "$name: kcat consume failed or timed out"
    t1="$(now)"
    [ "$got" -eq "$N" ] || echo "bench: $name: consumed $got of $N messages" >&2
    ROWS+=("$(row "$name" consume "$t0" "$t1")")

    local hwm
    hwm="$(peak_rss_mb "$pid")"
    ROWS+=("$(printf '%-8s %-8s %12s %10s %10s' "$name" "peak RSS" "" "" "$hwm")")
    kill "$pid" 2>/dev/null || true  # stop it so the next system has the machine to itself
    wait "$pid" 2>/dev/null || true
}

row() {  # row NAME DIRECTION T0 T1
    awk -v name="$1" -v dir="$2" -v t0="$3" -v t1="$4" -v n="$N" -v size="$SIZE" 'BEGIN {
        s = t1 - t0; if (s <= 0) s = 1e-9
        printf "%-8s %-8s %12.0f %10.1f %10s", name, dir, n / s, n * size / s / 1e6, ""
    }'
}

start_kpipe_broker
measure kpipe "$PORT" "$PID"

# tansu, for comparison, when installed
if command -v tansu >/dev/null; then
    PORT="$(free_port)"
    LISTENER_URL="tcp://127.0.0.1:$PORT" ADVERTISED_LISTENER_URL="tcp://127.0.0.1:$PORT" \
        STORAGE_ENGINE="memory://tansu/" tansu broker >"$WORK/tansu.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_port "$PORT" "$PID"
    measure tansu "$PORT" "$PID"
else
    echo "tansu not found on PATH" >&2
fi

echo "$N messages of $SIZE bytes, 3 partitions, kcat acks=all"
printf '%-8s %-8s %12s %10s %10s\n' system direction msgs/s MB/s "RSS MB"
printf '%s\n' "${ROWS[@]}"

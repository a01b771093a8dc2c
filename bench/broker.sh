#!/usr/bin/env bash
# Throughput benchmark of the embedded broker (not a test): produces MESSAGES
# messages of SIZE bytes (acks=all) into a 3-partition topic with kcat (Debian's,
# librdkafka 2.0.2) and with kpipe's own client (librdkafka 2.12), reads them
# back, and prints msgs/s, MB/s and the broker's peak RSS. If a `tansu` binary
# is on PATH, measures it the same way in the same run (memory storage), so the
# numbers are comparable on this machine.
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

ROWS=()
row() {  # row SYSTEM CLIENT DIRECTION T0 T1
    awk -v sys="$1" -v client="$2" -v dir="$3" -v t0="$4" -v t1="$5" -v n="$N" -v size="$SIZE" 'BEGIN {
        s = t1 - t0; if (s <= 0) s = 1e-9
        printf "%-7s %-7s %-8s %12.0f %10.1f", sys, client, dir, n / s, n * size / s / 1e6
    }'
}
failed_row() { printf '%-7s %-7s %-8s %12s %10s' "$1" "$2" "$3" failed "-"; }

produce() {  # produce CLIENT BOOTSTRAP TOPIC
    case "$1" in
        kcat) timeout "$KCAT_TIMEOUT" kcat -P -q -b "$2" -t "$3" -X acks=all -l "$MSGS" ;;
        kpipe) timeout "$KCAT_TIMEOUT" "$KPIPE" produce "$3" -b "$2" -X acks=all <"$MSGS" 2>/dev/null ;;
    esac
}

consume() {  # consume CLIENT BOOTSTRAP TOPIC: prints how many messages came back
    case "$1" in
        kcat) timeout "$KCAT_TIMEOUT" kcat -C -q -b "$2" -t "$3" -o beginning -e -c "$N" | wc -l ;;
        kpipe) timeout "$KCAT_TIMEOUT" "$KPIPE" consume "$3" -b "$2" --from-beginning --max "$N" --timeout-ms 10000 2>/dev/null | wc -l ;;
    esac
}

# measure SYSTEM PORT PID: both clients (kcat = librdkafka 2.0.2, kpipe = 2.12)
# produce N messages into their own 3-partition topic and read them back.
measure() {
    local sys="$1" b="127.0.0.1:$2" pid="$3" client t0 t1 got
    for client in kcat kpipe; do
        if ! "$KPIPE" topic create "bench-$client" --partitions 3 -b "$b" >/dev/null 2>"$WORK/create.err"; then
            ROWS+=("$(failed_row "$sys" "$client" produce)  (topic: $(head -c 120 "$WORK/create.err"))")
            continue
        fi
        t0="$(now)"
        if ! produce "$client" "$b" "bench-$client"; then
            ROWS+=("$(failed_row "$sys" "$client" produce)")
            continue
        fi
        t1="$(now)"
        ROWS+=("$(row "$sys" "$client" produce "$t0" "$t1")")
        t0="$(now)"
        got="$(consume "$client" "$b" "bench-$client" || true)"
        t1="$(now)"
        if [ "${got:-0}" -eq "$N" ]; then
            ROWS+=("$(row "$sys" "$client" consume "$t0" "$t1")")
        else
            ROWS+=("$(failed_row "$sys" "$client" consume)  (got ${got:-0} of $N)")
        fi
    done
    ROWS+=("$(printf '%-7s %-7s %-8s %12s %10s   peak RSS %s MB' "$sys" "" "" "" "" "$(peak_rss_mb "$pid")")")
    stop_broker "$pid"  # so the next system has the machine to itself
}

start_kpipe_broker
measure kpipe "$PORT" "$PID"

# tansu, for comparison, when installed (https://tansu.io; memory storage needs
# its `dynostore` feature: cargo install tansu --features dynostore)
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

echo "$N messages of $SIZE bytes, 3 partitions, acks=all; kpipe broker with --fsync always"
printf '%-7s %-7s %-8s %12s %10s\n' system client direction msgs/s MB/s
printf '%s\n' "${ROWS[@]}"

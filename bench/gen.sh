#!/usr/bin/env bash
# Generator benchmark (not a test): `kpipe gen music` producing N events into
# `kpipe broker`, beside kcat producing a file of the very same events (the
# librdkafka client ceiling), in one run on this machine. Prints events/s of
# both and kpipe's share of kcat's rate (target: >= 300k events/s, >= 80%).
# Usage: bench/gen.sh [EVENTS=2000000]
set -euo pipefail

N="${1:-2000000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

start_kpipe_broker
B="127.0.0.1:$PORT"
SEED=7
START_MS=1700000000000

# The same events as key<TAB>json lines, for kcat.
"$KPIPE" gen music --count "$N" --seed "$SEED" --start-ms "$START_MS" --print >"$WORK/events.tsv" 2>/dev/null

rate() {  # rate T0 T1
    awk -v n="$N" -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", n / (b - a) }'
}

check_count() {  # check_count TOPIC: the broker holds exactly N events
    local got
    got="$("$KPIPE" topic describe "$1" -b "$B" | awk -F'┆' '/^│ [0-9]/ { s += $6 } END { print s }')"
    [ "$got" -eq "$N" ] || die "$1 holds $got events, expected $N"
}

# Each producer gets a fresh broker, so neither pays for the other's data.
start_kpipe_broker
B="127.0.0.1:$PORT"
"$KPIPE" topic create music_events --partitions 3 -b "$B" >/dev/null
t0="$(now)"
timeout 900 kcat -P -q -b "$B" -t music_events -K $'\t' -X acks=all -l "$WORK/events.tsv" || die "kcat produce failed"
t1="$(now)"
KCAT_RATE="$(rate "$t0" "$t1")"
check_count music_events
stop_broker "$PID"

start_kpipe_broker
B="127.0.0.1:$PORT"
"$KPIPE" topic create music_events --partitions 3 -b "$B" >/dev/null
t0="$(now)"
timeout 900 "$KPIPE" gen music --count "$N" --seed "$SEED" --start-ms "$START_MS" -b "$B" -X acks=all 2>"$WORK/gen.log" \
    || die "kpipe gen failed: $(cat "$WORK/gen.log")"
t1="$(now)"
GEN_RATE="$(rate "$t0" "$t1")"
check_count music_events
stop_broker "$PID"

echo "$N music events (seed $SEED), 3 partitions, acks=all, a fresh kpipe broker for each"
printf '%-22s %12s\n' producer events/s
printf '%-22s %12s\n' "kcat -P (file)" "$KCAT_RATE"
printf '%-22s %12s\n' "kpipe gen music" "$GEN_RATE"
awk -v g="$GEN_RATE" -v k="$KCAT_RATE" 'BEGIN { printf "kpipe gen / kcat: %.0f%%\n", 100 * g / k }'

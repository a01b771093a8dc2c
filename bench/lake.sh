#!/usr/bin/env bash
# Lake sink benchmark (not a test): drains N music events from `kpipe broker` to
# Parquet on local disk with `kpipe sink lake --until-end`, and in the same run
# the raw consume ceilings (kcat -C and `kpipe consume` to /dev/null) and the
# seeds' approach (bench/seeds_python_sink.py: confluent-kafka + pandas
# json_normalize + pyarrow, batches of 10k). Prints events/s, MB/s, peak RSS.
# Targets: >= 70% of the raw ceiling, >= 20x the Python approach, RSS < 300 MB.
# Usage: bench/lake.sh [EVENTS=2000000]   (needs the .venv of scripts/test.sh;
# installs pandas and pyarrow into it for the Python approach)
set -euo pipefail

N="${1:-2000000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv_python pandas pyarrow confluent-kafka

start_kpipe_broker
B="127.0.0.1:$PORT"
"$KPIPE" gen music --count "$N" --seed 1 -b "$B" 2>/dev/null
MB="$(du -sm "$WORK/kpipe-data/topics/music_events" | cut -f1)"

ROWS=()
record() {  # record NAME T0 T1 [RSS_MB]
    ROWS+=("$(awk -v name="$1" -v a="$2" -v b="$3" -v n="$N" -v mb="$MB" -v rss="${4:--}" 'BEGIN {
        s = b - a; printf "%-26s %12.0f %8.1f %8s", name, n / s, mb / s, rss }')")
}
rate_of() { awk -v a="$1" -v b="$2" -v n="$N" 'BEGIN { printf "%.0f", n / (b - a) }'; }

t0="$(now)"; got="$(timeout 900 kcat -C -q -b "$B" -t music_events -o beginning -e -c "$N" | wc -l)"; t1="$(now)"
[ "$got" -eq "$N" ] || die "kcat read $got of $N"
record "kcat -C > /dev/null" "$t0" "$t1"; KCAT="$(rate_of "$t0" "$t1")"

t0="$(now)"; got="$(timeout 900 "$KPIPE" consume music_events -b "$B" --from-beginning --max "$N" 2>/dev/null | wc -l)"; t1="$(now)"
[ "$got" -eq "$N" ] || die "kpipe consume read $got of $N"
record "kpipe consume > /dev/null" "$t0" "$t1"; CONSUME="$(rate_of "$t0" "$t1")"

# The sink's peak RSS, read by GNU time.
t0="$(now)"
/usr/bin/time -f "%M" -o "$WORK/sink.rss" "$KPIPE" sink lake --topic music_events --to "$WORK/lake" -b "$B" \
    --time-field event_timestamp.ts_ms --until-end 2>"$WORK/sink.log" || die "sink failed: $(cat "$WORK/sink.log")"
t1="$(now)"
record "kpipe sink lake" "$t0" "$t1" "$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/sink.rss")"; SINK="$(rate_of "$t0" "$t1")"
"$KPIPE" lake check "$WORK/lake" -b "$B" >/dev/null || die "lake check failed"

t0="$(now)"
/usr/bin/time -f "%M" -o "$WORK/py.rss" timeout 3600 "$PY" "$REPO/bench/seeds_python_sink.py" "$B" music_events "$WORK/pylake" "$N" >/dev/null
t1="$(now)"
record "python json_normalize" "$t0" "$t1" "$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/py.rss")"; PYRATE="$(rate_of "$t0" "$t1")"

echo "$N music events ($MB MB in the broker), 3 partitions, Parquet zstd on local disk"
printf '%-26s %12s %8s %8s\n' reader events/s MB/s "RSS MB"
printf '%s\n' "${ROWS[@]}"
awk -v s="$SINK" -v k="$KCAT" -v c="$CONSUME" -v p="$PYRATE" 'BEGIN {
    printf "sink / kcat ceiling: %.0f%%   sink / kpipe consume ceiling: %.0f%%   sink / python: %.1fx\n", 100*s/k, 100*s/c, s/p }'

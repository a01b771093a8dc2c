#!/usr/bin/env bash
# Lake sink benchmark (not a test): drains N music events from `kpipe broker` to
# Parquet on local disk with `kpipe sink lake --until-end`, and in the same run
# the raw consume ceilings (kcat -C and `kpipe consume` to /dev/null) and the
# seeds' approach (bench/seeds_python_sink.py: confluent-kafka + pandas
# json_normalize + pyarrow, batches of 10k). Prints events/s, MB/s, CPU seconds
# per million events and peak RSS; the fast readers are timed RUNS (3) times, taking turns.
# Targets: >= 70% of the raw ceiling, >= 20x the Python approach, RSS < 300 MB.
# Usage: [RUNS=3] bench/lake.sh [EVENTS=2000000]   (needs the .venv of scripts/test.sh;
# installs pandas and pyarrow into it for the Python approach)
set -euo pipefail

N="${1:-2000000}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
venv_python pandas pyarrow confluent-kafka

start_kpipe_broker
B="127.0.0.1:$PORT"
"$KPIPE" gen music --count "$N" --seed 1 -b "$B" 2>/dev/null
MB="$(du -sm "$WORK/kpipe-data/topics/music_events" | cut -f1)"

# Each fast reader runs RUNS times, the readers taking turns within each round
# so that the machine's drift (it is a noisy 2-core VM) touches them alike: a
# row shows the best wall time, the CPU seconds per million events of that run
# (user + sys, from GNU time; the broker's own CPU is not counted) and the
# highest peak RSS of all runs.
RUNS="${RUNS:-3}"
declare -A BEST_S BEST_CPU PEAK
# run_once NAME CMD...: runs CMD once (it must read all N events) and keeps NAME's best.
run_once() {
    local name="$1"; shift
    local t0 t1 s user sys rss
    t0="$(now)"
    /usr/bin/time -f "%U %S %M" -o "$WORK/time.out" "$@" || die "$name failed"
    t1="$(now)"
    read -r user sys rss <"$WORK/time.out"
    s="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
    if [ -z "${BEST_S[$name]:-}" ] || awk -v s="$s" -v b="${BEST_S[$name]}" 'BEGIN { exit !(s < b) }'; then
        BEST_S[$name]="$s"; BEST_CPU[$name]="$(awk -v u="$user" -v y="$sys" 'BEGIN { print u + y }')"
    fi
    [ "$rss" -gt "${PEAK[$name]:-0}" ] && PEAK[$name]="$rss"
    return 0
}
row() {
    awk -v name="$1" -v s="${BEST_S[$1]}" -v c="${BEST_CPU[$1]}" -v n="$N" -v mb="$MB" -v rss="${PEAK[$1]}" 'BEGIN {
        printf "%-26s %12.0f %8.1f %12.2f %8.0f\n", name, n / s, mb / s, c / n * 1e6, rss / 1024 }'
}
rate() { awk -v s="${BEST_S[$1]}" -v n="$N" 'BEGIN { printf "%.0f", n / s }'; }
# Readers to /dev/null count what they read, so a short read fails the run.
count_lines() { local got; got="$("$@" | wc -l)"; [ "$got" -eq "$N" ] || { echo "read $got of $N" >&2; return 1; }; }
export -f count_lines
export N

# A fresh group and lake each run (the last is checked with `kpipe lake check`).
# The sink runs with its own fetcher (the default) and, for comparison, with
# librdkafka fetching as `kpipe consume` does.
export KPIPE B WORK
sink_lake() {
    rm -rf "$WORK/lake"
    "$KPIPE" sink lake --topic music_events --to "$WORK/lake" -b "$B" --group "bench-$RANDOM$RANDOM" \
        --time-field event_timestamp.ts_ms --until-end "$@" 2>"$WORK/sink.log" || { cat "$WORK/sink.log" >&2; exit 1; }
}
export -f sink_lake
# librdkafka stops fetching a partition once its queue holds queued.min.messages
# (100k) and, in Debian's 2.0.2, looks again only about half a second later: a
# reader that prints more slowly than the broker serves stalls on that, and
# stops being a ceiling. The raw readers get queues the size of the topic.
RAW_QUEUES=(-X queued.min.messages=10000000 -X queued.max.messages.kbytes=2000000)
KCAT_NAME="kcat -C > /dev/null"
CONSUME_NAME="kpipe consume > /dev/null"
SINK_NAME="kpipe sink lake"
RDK_NAME="  ... --librdkafka-fetch"
for round in $(seq "$RUNS"); do
    run_once "$KCAT_NAME" bash -c 'count_lines timeout 900 "$@"' _ kcat -C -q -b "$B" -t music_events -o beginning -e -c "$N" "${RAW_QUEUES[@]}"
    run_once "$CONSUME_NAME" bash -c 'count_lines timeout 900 "$@" 2>/dev/null' _ "$KPIPE" consume music_events -b "$B" --from-beginning --max "$N" "${RAW_QUEUES[@]}"
    run_once "$SINK_NAME" bash -c 'sink_lake'
    "$KPIPE" lake check "$WORK/lake" -b "$B" >/dev/null || die "lake check failed"
    run_once "$RDK_NAME" bash -c 'sink_lake --librdkafka-fetch'
    "$KPIPE" lake check "$WORK/lake" -b "$B" >/dev/null || die "lake check failed"
done
KCAT="$(rate "$KCAT_NAME")"
CONSUME="$(rate "$CONSUME_NAME")"
SINK="$(rate "$SINK_NAME")"

export PY REPO
PY_NAME="python json_normalize"
run_once "$PY_NAME" bash -c 'timeout 3600 "$PY" "$REPO/bench/seeds_python_sink.py" "$B" music_events "$WORK/pylake" "$N" >/dev/null'
PYRATE="$(rate "$PY_NAME")"

echo "$N music events ($MB MB in the broker), 3 partitions, Parquet zstd on local disk; best of $RUNS runs (python: 1)"
printf '%-26s %12s %8s %12s %8s\n' reader events/s MB/s "CPU s/M ev" "RSS MB"
for name in "$KCAT_NAME" "$CONSUME_NAME" "$SINK_NAME" "$RDK_NAME" "$PY_NAME"; do row "$name"; done
awk -v s="$SINK" -v k="$KCAT" -v c="$CONSUME" -v p="$PYRATE" 'BEGIN {
    printf "sink / kcat ceiling: %.0f%%   sink / kpipe consume ceiling: %.0f%%   sink / python: %.1fx\n", 100*s/k, 100*s/c, s/p }'

# Shared helpers for the benchmarks in bench/ (sourced, not run).
# Sets REPO, KPIPE (a release build) and WORK (a temp dir removed on exit).
# A script that needs more targets built sets BUILD_ALSO (cargo build arguments)
# first: one build, so shared dependencies are compiled with the same features.

die() { echo "bench: $*" >&2; exit 1; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v kcat >/dev/null || die "kcat not found (apt-get install kcat, or run scripts/test.sh)"
(cd "$REPO" && cargo build --release -q -p kpipe --bins ${BUILD_ALSO[@]+"${BUILD_ALSO[@]}"}) ||
    die "release build failed"
KPIPE="${CARGO_TARGET_DIR:-$REPO/target}/release/kpipe"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }

venv_python() {  # venv_python MODULE...: sets PY to the test .venv's Python with MODULEs installed
    PY="$REPO/.venv/bin/python"
    [ -x "$PY" ] || die "$PY missing: run scripts/test.sh once"
    [ -x /usr/bin/time ] || die "needs GNU time for CPU time and peak RSS (apt-get install time)"
    local imports; imports="$(IFS=,; echo "$*" | tr - _)"
    "$PY" -c "import $imports" 2>/dev/null || "$PY" -m pip install -q "$@"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_port() {  # wait_port PORT PID: up to 30 s for a broker to accept connections
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || die "broker exited early; log: $(tail -n 5 "$WORK"/*.log)"
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "broker did not listen on port $1 within 30 s"
}

start_kpipe_broker() {  # start_kpipe_broker: a fresh broker and data directory; sets PORT and PID
    PORT="$(free_port)"
    rm -rf "$WORK/kpipe-data"
    mkdir -p "$WORK/kpipe-data"
    "$KPIPE" broker --listen "127.0.0.1:$PORT" --data "$WORK/kpipe-data" >"$WORK/kpipe.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    wait_port "$PORT" "$PID"
}

stop_broker() {  # stop_broker PID
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

peak_rss_mb() { awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

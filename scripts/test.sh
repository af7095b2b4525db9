#!/usr/bin/env bash
# Run the whole test suite: lint, then pytest against a real S3 server, SQLite and PostgreSQL,
# and real DICOM peers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

export TELEHEALTH_TEST_POSTGRES_URL=${TELEHEALTH_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}
# PostgreSQL runs on developer machines and CI here; start it if it was stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi

# Redis carries events between hub processes (tests/deploy); start it on loopback if it is not up.
if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && command -v redis-server >/dev/null; then
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no || true
fi

.venv/bin/ruff check .
# Two workers by default: much of a test's time is waiting on S3, fsync and DICOM peers, so
# the suite runs in about half the time on two cores. A test file stays on one worker.
workers=${TELEHEALTH_TEST_WORKERS:-2}
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
.venv/bin/python -m pytest "$@"

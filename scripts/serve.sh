#!/usr/bin/env bash
# Start the hub with embedded defaults: SQLite and an embedded S3 server under ./data,
# HTTP on 127.0.0.1:8042, DICOM on 127.0.0.1:11112. Extra arguments go to `telehealth serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/telehealth serve "$@"

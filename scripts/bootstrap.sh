#!/usr/bin/env bash
# Make this checkout runnable: Debian packages the hub and its tests use, a virtualenv in .venv
# with the hub installed. Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

debs=(dcmtk)                       # storescu/findscu/movescu/getscu: real DICOM peers in tests
debs+=(chromium)                   # headless browser tests (Playwright drives /usr/bin/chromium)
debs+=(fonts-wqy-zenhei)           # Chinese glyphs in the browser tests' screenshots
debs+=(docker-compose)             # validates docker/compose.yaml in the tests
debs+=(redis-server)               # events between hub processes (tests/deploy)
debs+=(coturn)                     # turnserver: relay-only consult test with ephemeral credentials (tests/consults)
[ "${WITH_BENCH:-0}" = 1 ] && debs+=(orthanc orthanc-dicomweb)   # the peer the benchmarks compare with
missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The OHIF viewer's prebuilt dist/ (served at /ohif/): npm ci again only when the lock changed.
# Playwright drives Debian's chromium; its own browser download (`playwright install`) is
# never run.
if command -v npm >/dev/null; then
  ohif_stamp=viewer/ohif/node_modules/.installed-$(sha256sum viewer/ohif/package-lock.json | cut -c1-16)
  if [ ! -f "$ohif_stamp" ]; then
    (cd viewer/ohif && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    touch "$ohif_stamp"
  fi
  bash scripts/build_webapp.sh   # the hub's own web app, served at /app/
else
  echo "npm not found: the web app (/app/), the OHIF viewer (/ohif/) and their browser tests need it (apt-get install npm)" >&2
fi

#!/usr/bin/env bash
# Build the web app (viewer/app → viewer/app/dist, served at /app/) when its sources or its
# lock changed since the last build; install its npm packages when the lock changed.
# Called by bootstrap.sh and by the browser tests (which then test what they see in src/).
set -euo pipefail
cd "$(dirname "$0")/../viewer/app"
exec 9>.build.lock
flock 9   # two test workers may ask at once
installed=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
if [ ! -f "$installed" ]; then
  npm ci --no-audit --no-fund --loglevel=error
  touch "$installed"
fi
sources=$(find src index.html vite.config.ts tsconfig.json package-lock.json -type f -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ ! -f "dist/.built-$sources" ]; then
  npm run --silent build -- --logLevel warn
  touch "dist/.built-$sources"
fi

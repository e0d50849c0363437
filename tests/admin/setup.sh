#!/usr/bin/env bash
# Installs what the admin page's browser test needs (idempotent, no root needed):
# playwright-core from the npm registry into $MODELD_CLIENTS_DIR/browser (default
# target/clients/browser), and finds Debian's chromium. Prints the environment to use.
# Without chromium it exits 3 and says how to install it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
clients="${MODELD_CLIENTS_DIR:-$repo/target/clients}"
dest="$clients/browser"
chromium="${MODELD_CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$chromium" ] || [ ! -x "$chromium" ]; then
  echo "the admin page's browser test needs Debian's chromium: apt-get install chromium (or set MODELD_CHROMIUM to a Chromium binary)" >&2
  exit 3
fi
if ! command -v npm >/dev/null; then
  echo "the admin page's browser test needs Node.js and npm: apt-get install nodejs npm" >&2
  exit 3
fi
stamp="$dest/.installed-$(sha256sum "$here/package.json" | cut -c1-16)"
mkdir -p "$clients"
exec 9>"$dest.lock"
flock 9
if [ ! -f "$stamp" ]; then
  rm -rf "$dest"
  mkdir -p "$dest"
  cp "$here/package.json" "$dest/"
  (cd "$dest" && npm install --silent --no-audit --no-fund --omit=dev >/dev/null)
  touch "$stamp"
fi
echo "PLAYWRIGHT_CORE=$dest/node_modules/playwright-core"
echo "CHROMIUM=$chromium"

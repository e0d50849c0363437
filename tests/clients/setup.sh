#!/usr/bin/env bash
# Installs the real client tools the tests use into target/clients (idempotent, no root needed):
# a Python venv with tritonclient (+ perf_analyzer), grpcurl, and the libraries perf_analyzer
# links (libb64 from Debian's package, libcudart from PyPI). Prints the environment to use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dest="${MODELD_CLIENTS_DIR:-$repo/target/clients}"
stamp="$dest/.installed-$(sha256sum "$here/requirements.txt" | cut -c1-16)"
# One install at a time: test processes (nextest runs each test in its own) may start together.
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9
if [ ! -f "$stamp" ]; then
  rm -rf "$dest"
  mkdir -p "$dest"
  python3 -m venv "$dest/venv"
  "$dest/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  # libb64.so.0d: unpack Debian's package (no root, no system change).
  (cd "$dest" && { apt-get download libb64-0d >/dev/null 2>&1 || { apt-get update -qq && apt-get download libb64-0d; }; } && dpkg -x libb64-0d_*.deb libb64 && rm -f libb64-0d_*.deb)
  touch "$stamp"
fi
cudart="$("$dest/venv/bin/python" -c 'import nvidia.cuda_runtime as m, os; print(os.path.join(list(m.__path__)[0], "lib"))')"
b64="$(dirname "$(find "$dest/libb64" -name 'libb64.so.0d' | head -n1)")"
echo "PATH=$dest/venv/bin:$PATH"
echo "LD_LIBRARY_PATH=$b64:$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

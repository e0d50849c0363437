#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library for `modeld serve --engine onnxruntime` from the PyPI
# wheel (pinned: the version ort's api-31 feature was built against), unpacks only the library
# under target/onnxruntime, and prints its path. Idempotent; no root, no system change.
#
#   modeld serve --engine onnxruntime --onnxruntime-lib "$(scripts/onnxruntime.sh)"
set -euo pipefail
version=1.31.1
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="${MODELD_ONNXRUNTIME_DIR:-$repo/target/onnxruntime}"
lib="$dest/libonnxruntime.so.$version"
if [ ! -f "$lib" ]; then
  mkdir -p "$dest"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$tmp" "onnxruntime==$version" >&2
  wheel="$(ls "$tmp"/onnxruntime-"$version"-*.whl)"
  python3 - "$wheel" "$lib" <<'PY'
import shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/capi/" + target.rsplit("/", 1)[1]))
    with z.open(member) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$lib.part" "$lib"
fi
echo "$lib"

#!/usr/bin/env bash
# Fetches ONNX Runtime's shared library for `modeld serve --engine onnxruntime` from the PyPI
# wheel (pinned: the version ort's api-31 feature was built against), unpacks only the library
# under target/onnxruntime (or MODELD_ONNXRUNTIME_DIR), and prints its path. Idempotent; no root,
# no system change. Linux x86_64 and aarch64 wheels carry the library as unpacked here.
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
import os, shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = "/capi/" + os.path.basename(target)
    member = next((n for n in z.namelist() if n.endswith(name)), None)
    if member is None:
        sys.exit(f"{wheel} has no {name[1:]}: this script expects a Linux wheel")
    part = f"{target}.part.{os.getpid()}"
    with z.open(member) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(part, target)  # atomic: a concurrent run sees the whole file or none
PY
fi
echo "$lib"

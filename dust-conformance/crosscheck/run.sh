#!/usr/bin/env bash
# Cross-check dust-conformance against the official phoenix.js client.
# Builds the server binary, installs the npm dependencies (from the lock file), runs the
# scenarios; exits non-zero on any failure. Needs cargo, Node >= 20 and npm.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

cd "$root"
cargo build -p dust-conformance --features server-bin --bin dust-conformance-server
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in
  /*) ;;
  *) target_dir="$root/$target_dir" ;;
esac
bin="$target_dir/debug/dust-conformance-server"
[ -x "$bin" ] || { echo "no server binary at $bin" >&2; exit 1; }

cd "$here"
if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
DUST_CONFORMANCE_BIN="$bin" node --test --test-reporter=spec crosscheck.test.mjs dust.test.mjs dust_msgpack.test.mjs presence.test.mjs

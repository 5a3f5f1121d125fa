#!/usr/bin/env bash
# Builds ringkv and runs `ringkv dev`: a local cluster on loopback (3 nodes, 8 shards,
# replication factor 3, data under ./ringkv-data) plus a router on 127.0.0.1:6000, until
# Ctrl-C. Extra arguments go to `ringkv dev` (e.g. --nodes 5 --shards 16 --rf 3).
# Then, in another terminal: ringkv put k v; ringkv get k; ringkv cluster status
# (the binaries are in $CARGO_TARGET_DIR/debug, default /var/tmp/ringkv-target/debug).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ringkv-target}"

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libclang-dev clang >/dev/null
  else echo "run: sudo apt-get install -y libclang-dev clang" >&2; exit 1; fi
fi
(cd "$root" && cargo build --locked --workspace --bins)
echo "CLI: $CARGO_TARGET_DIR/debug/ringkv"
exec "$CARGO_TARGET_DIR/debug/ringkv" dev "$@"

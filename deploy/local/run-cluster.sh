#!/usr/bin/env bash
# Starts a local ringkv cluster on loopback: 3 nodes, 8 shards, replication factor 3, data
# under ./ringkv-data. Prints the endpoints and the shard leaders; Ctrl-C stops it cleanly
# (SIGTERM to every node). Override with NODES=5 SHARDS=16 RF=3 BASE_PORT=7001.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
NODES="${NODES:-3}" SHARDS="${SHARDS:-8}" RF="${RF:-3}" BASE_PORT="${BASE_PORT:-7001}"
DATA="${DATA:-$PWD/ringkv-data}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/ringkv-target}"

if ! dpkg -s libclang-dev >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libclang-dev clang >/dev/null
  else echo "run: sudo apt-get install -y libclang-dev clang" >&2; exit 1; fi
fi
(cd "$root" && cargo build --locked -p ringkv-node --bin ringkv-node)
bin="$CARGO_TARGET_DIR/debug/ringkv-node"

members=""
for i in $(seq 1 "$NODES"); do members+="${members:+,}$i=127.0.0.1:$((BASE_PORT + i - 1))"; done
pids=()
stop() {
  echo; echo "stopping..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped; data kept in $DATA"
}
trap stop INT TERM
mkdir -p "$DATA"
for i in $(seq 1 "$NODES"); do
  "$bin" --node-id "$i" --data-dir "$DATA/node-$i" --members "$members" --shards "$SHARDS" \
    --replication-factor "$RF" --metrics-listen "127.0.0.1:$((BASE_PORT + 2000 + i - 1))" \
    >>"$DATA/node-$i.log" 2>&1 &
  pids+=($!)
done
echo "ringkv: $NODES nodes, $SHARDS shards, RF $RF"
for i in $(seq 1 "$NODES"); do
  echo "  node $i  grpc 127.0.0.1:$((BASE_PORT + i - 1))  metrics http://127.0.0.1:$((BASE_PORT + 2000 + i - 1))/metrics  log $DATA/node-$i.log"
done
sleep 3
for i in $(seq 1 "$NODES"); do
  leads=$(curl -fs "http://127.0.0.1:$((BASE_PORT + 2000 + i - 1))/metrics" 2>/dev/null | grep -c '^ringkv_shard_role{.*} 1$' || true)
  echo "  node $i leads $leads shard(s)"
done
echo "Ctrl-C to stop."
wait "${pids[@]}"

#!/usr/bin/env bash
#! Builds the image from `deploy/Dockerfile` and checks it does what the manifests rely on:
#!
#! 1. its user is the manifests' `runAsUser` (10001), and it holds the three binaries and no
#!    build tools (no cargo, rustc, cc, ld);
#! 2. a cluster runs from it as the manifests run it: three node containers and a router, each
#!    with the StatefulSet's (or the router Deployment's) environment, a read-only root
#!    filesystem, every capability dropped, no privilege escalation, a writable `/tmp` and a
#!    named volume for the data; names `ringkv-N.ringkv` resolve to the nodes, as the headless
#!    Service makes them resolve;
#! 3. the nodes' and the router's `/readyz` turn ready, a write through the router reads back,
#!    a node stopped with SIGTERM (what the kubelet sends) exits 0 within the grace period
#!    after handing its leaderships off, and comes back ready on its volume with the data.
#!
#! Usage: `deploy/image/check.sh` (root, podman: `apt-get install -y podman mmdebstrap runc`).
#! Without a reachable container registry, the base images are made locally first
#! (`deploy/image/bases.sh`); with one, pass `--pull` to use the public ones. The first build
#! compiles RocksDB in release (~25 minutes on 2 cores); later ones reuse the dependency layer
#! until Cargo.toml or Cargo.lock change.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/image/containers.conf}
IMAGE=${IMAGE:-docker.io/ringkv/ringkv:0.1.0}
NET=${NET:-podman}
# Fixed addresses on podman's default bridge (10.88.0.0/16), far from the ones it hands out.
SUBNET_PREFIX=${SUBNET_PREFIX:-10.88.201}
# The StatefulSet's terminationGracePeriodSeconds.
GRACE_S=40

step() { printf '\n== %s\n' "$*" >&2; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

if [[ "${1:-}" != --pull ]]; then
    deploy/image/bases.sh
fi

step "build $IMAGE"
started=$(date +%s)
podman build --network host -f deploy/Dockerfile -t "$IMAGE" .
echo "built in $(( $(date +%s) - started )) s" >&2

step "image: user, binaries, no build tools"
user=$(podman image inspect "$IMAGE" --format '{{.Config.User}}')
[[ "$user" == "10001:10001" ]] || fail "image user is '$user', the manifests run as 10001:10001"
size_mb=$(( $(podman image inspect "$IMAGE" --format '{{.Size}}') / 1000000 ))
echo "user $user, size $size_mb MB" >&2
podman run --rm --entrypoint /bin/sh "$IMAGE" -c '
    for bin in ringkv-node ringkv-router ringkv; do
        command -v "$bin" >/dev/null || { echo "missing $bin"; exit 1; }
    done
    for tool in cargo rustc rustup cc gcc c++ clang ld; do
        if command -v "$tool"; then echo "build tool $tool in the image"; exit 1; fi
    done
    [ "$(id -u)" = 10001 ] || { echo "runs as uid $(id -u)"; exit 1; }
    [ -w /var/lib/ringkv ] || { echo "/var/lib/ringkv not writable by uid 10001"; exit 1; }' ||
    fail "image contents"

names=(ringkv-0 ringkv-1 ringkv-2 ringkv-router)
cleanup() {
    podman rm -f -t 0 "${names[@]}" >/dev/null 2>&1 || true
    podman volume rm -f data-ringkv-0 data-ringkv-1 data-ringkv-2 >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup

hosts=()
for i in 0 1 2; do hosts+=(--add-host "ringkv-$i.ringkv:$SUBNET_PREFIX.$((10 + i))"); done
# What the manifests' securityContext asks of the runtime.
locked=(--read-only --cap-drop ALL --security-opt no-new-privileges --user 10001:10001
        --tmpfs /tmp:size=64m,mode=1777)

start_node() {
    local i=$1
    podman run -d --name "ringkv-$i" --hostname "ringkv-$i" --network "$NET" \
        --ip "$SUBNET_PREFIX.$((10 + i))" "${hosts[@]}" "${locked[@]}" \
        -v "data-ringkv-$i:/var/lib/ringkv" \
        -e POD_NAME="ringkv-$i" -e RINGKV_NODE_ID="ringkv-$i" \
        -e RINGKV_LISTEN=0.0.0.0:7001 -e RINGKV_ADVERTISE_ADDR="ringkv-$i.ringkv:7001" \
        -e RINGKV_RAFT_PORT_OFFSET=1000 -e RINGKV_METRICS_LISTEN=0.0.0.0:9101 \
        -e RINGKV_DATA_DIR=/var/lib/ringkv -e RINGKV_SHARDS=8 -e RINGKV_REPLICATION_FACTOR=3 \
        -e RINGKV_MEMBERS="1=ringkv-0.ringkv:7001,2=ringkv-1.ringkv:7001,3=ringkv-2.ringkv:7001" \
        -e RINGKV_SHUTDOWN_HANDOFF_MS=10000 -e RINGKV_READY_STALENESS_MAX_MS=10000 \
        "$IMAGE" /usr/local/bin/ringkv-node >/dev/null
}

# Waits until http://$1/readyz answers 200, at most $2 seconds.
wait_ready() {
    local addr=$1 limit_s=$2 t0
    t0=$(date +%s)
    # 503 until ready: quiet, since that is the expected answer while it starts.
    until curl -fs -m 2 -o /dev/null "http://$addr/readyz"; do
        (( $(date +%s) - t0 < limit_s )) || return 1
        sleep 0.5
    done
    echo "$addr ready after $(( $(date +%s) - t0 )) s" >&2
}

step "a cluster from the image: three nodes and a router, locked down as in the manifests"
for i in 0 1 2; do start_node "$i"; done
podman run -d --name ringkv-router --network "$NET" --ip "$SUBNET_PREFIX.20" "${hosts[@]}" \
    "${locked[@]}" \
    -e RINGKV_ROUTER_LISTEN=0.0.0.0:6000 -e RINGKV_ROUTER_METRICS_LISTEN=0.0.0.0:9100 \
    -e RINGKV_ROUTER_SEEDS="ringkv-0.ringkv:7001,ringkv-1.ringkv:7001,ringkv-2.ringkv:7001" \
    -e RINGKV_ROUTER_READ_POLICY=least-outstanding \
    "$IMAGE" /usr/local/bin/ringkv-router >/dev/null
for i in 0 1 2; do
    wait_ready "$SUBNET_PREFIX.$((10 + i)):9101" 120 || {
        podman logs --tail 30 "ringkv-$i" >&2; fail "ringkv-$i not ready in 120 s"; }
done
wait_ready "$SUBNET_PREFIX.20:9100" 60 || {
    podman logs --tail 30 ringkv-router >&2; fail "router not ready in 60 s"; }

cli() { podman exec ringkv-router /usr/local/bin/ringkv --endpoint 127.0.0.1:6000 "$@"; }
for k in 1 2 3 4 5 6 7 8; do cli put "image-check-$k" "value-$k" >/dev/null; done
[[ "$(cli get image-check-5)" == *value-5* ]] || fail "a write through the router did not read back"
echo "8 writes through the router read back" >&2

step "SIGTERM to ringkv-0: hands off, exits 0 within the grace period, comes back on its volume"
t0=$(date +%s%N)
podman stop -t "$GRACE_S" ringkv-0 >/dev/null
stop_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
code=$(podman inspect ringkv-0 --format '{{.State.ExitCode}}')
[[ "$code" == 0 ]] || { podman logs --tail 30 ringkv-0 >&2; fail "ringkv-0 exited $code on SIGTERM"; }
(( stop_ms < GRACE_S * 1000 )) || fail "ringkv-0 took ${stop_ms} ms to stop (grace ${GRACE_S} s)"
echo "ringkv-0 stopped in $stop_ms ms, exit 0" >&2
# Served by the other two while it is gone.
[[ "$(cli get image-check-1)" == *value-1* ]] || fail "read with ringkv-0 stopped"
podman rm ringkv-0 >/dev/null
start_node 0
wait_ready "$SUBNET_PREFIX.10:9101" 120 || { podman logs --tail 30 ringkv-0 >&2; fail "ringkv-0 not ready again"; }
for k in 1 2 3 4 5 6 7 8; do
    [[ "$(cli get "image-check-$k")" == *"value-$k"* ]] || fail "image-check-$k lost"
done
echo "all 8 keys read back after the restart" >&2

step "image check passed: $IMAGE, $size_mb MB, user $user"

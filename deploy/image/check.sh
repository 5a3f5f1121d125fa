#!/usr/bin/env bash
#! Builds the image from `deploy/Dockerfile` and checks it does what the manifests rely on:
#!
#! 1. its user is the manifests' `runAsUser` (10001), and it holds the three binaries and no
#!    build tools (no cargo, rustc, cc, ld);
#! 2. a cluster runs from it as the manifests run it: three node containers and a router, each
#!    with the command and environment of the StatefulSet (or the router Deployment), read
#!    from the rendered dev overlay so they cannot drift from the manifests, a read-only root
#!    filesystem, every capability dropped, no privilege escalation, a writable `/tmp` and a
#!    named volume for the data; names `ringkv-N.ringkv` resolve to the nodes, as the headless
#!    Service makes them resolve;
#! 3. the nodes' and the router's `/readyz` turn ready, a write through the router reads back,
#!    a node stopped with SIGTERM (what the kubelet sends) exits 0 within the grace period
#!    after handing its leaderships off, and comes back ready on its volume with the data.
#!
#! Usage: `deploy/image/check.sh` (root, podman: `apt-get install -y podman mmdebstrap runc`;
#! kubectl, to render the manifests, and python3 with PyYAML, to read them).
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
MANIFESTS=$(mktemp)
trap 'rm -f "$MANIFESTS"' EXIT
kubectl kustomize deploy/k8s/overlays/dev >"$MANIFESTS"

# manifest KIND POD WHAT: from the rendered dev overlay, the first container's `command` (one
# word a line), its `env` (NAME=value a line, `$(VAR)` expanded, the pod's name for
# metadata.name) or the pod's `grace` period in seconds.
manifest() {
    python3 - "$MANIFESTS" "$@" <<'PY'
import re, sys, yaml
path, kind, pod, what = sys.argv[1:]
spec = next(d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == kind)["spec"]["template"]["spec"]
container = spec["containers"][0]
if what == "command":
    print("\n".join(container["command"]))
elif what == "grace":
    print(spec.get("terminationGracePeriodSeconds", 30))
else:
    env = {}
    for e in container.get("env", []):
        if "value" in e:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            value = pod
        else:
            sys.exit(f"{kind} env {e['name']}: only values and metadata.name are supported here")
        env[e["name"]] = value
        print(f"{e['name']}={value}")
PY
}
GRACE_S=$(manifest StatefulSet ringkv-0 grace)

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
trap 'cleanup; rm -f "$MANIFESTS"' EXIT
cleanup

hosts=()
for i in 0 1 2; do hosts+=(--add-host "ringkv-$i.ringkv:$SUBNET_PREFIX.$((10 + i))"); done
# What the manifests' securityContext asks of the runtime.
locked=(--read-only --cap-drop ALL --security-opt no-new-privileges --user 10001:10001
        --tmpfs /tmp:size=64m,mode=1777)

# Runs pod $2 of the manifests' $1 (StatefulSet or Deployment) as container $2, with its
# command and environment; the rest of the arguments go to `podman run`.
run_pod() {
    local kind=$1 pod=$2 env=() command=() e listed
    shift 2
    listed=$(manifest "$kind" "$pod" command) || fail "$kind $pod: no command in the manifests"
    mapfile -t command <<<"$listed"
    listed=$(manifest "$kind" "$pod" env) || fail "$kind $pod: its environment"
    while IFS= read -r e; do env+=(-e "$e"); done <<<"$listed"
    podman run -d --name "$pod" --network "$NET" "${hosts[@]}" "${locked[@]}" "${env[@]}" "$@" \
        "$IMAGE" "${command[@]}" >/dev/null
}

start_node() {
    local i=$1
    run_pod StatefulSet "ringkv-$i" --hostname "ringkv-$i" --ip "$SUBNET_PREFIX.$((10 + i))" \
        -v "data-ringkv-$i:/var/lib/ringkv"
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
run_pod Deployment ringkv-router --ip "$SUBNET_PREFIX.20"
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

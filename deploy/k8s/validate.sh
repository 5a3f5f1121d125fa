#!/usr/bin/env bash
# Renders every overlay (and the examples) and validates them offline against the
# Kubernetes API schemas in strict mode (unknown fields are errors), for the oldest and the
# newest Kubernetes versions ringkv supports. The Prometheus operator's objects have no schema
# there; tests/tests/observability.rs checks them against a live node and router instead.
# Called by .ci/run. Needs kubectl (its built-in kustomize) or kustomize, and python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${RINGKV_K8S_VENV:-/var/tmp/ringkv-k8s-venv}"
versions=(1.30.0 1.34.0)

if command -v kubectl >/dev/null; then render=(kubectl kustomize)
elif command -v kustomize >/dev/null; then render=(kustomize build)
else
  echo "deploy/k8s/validate.sh needs kubectl or kustomize to render the overlays:" >&2
  echo "  https://kubernetes.io/docs/tasks/tools/ (kubectl) or https://kubectl.docs.kubernetes.io/installation/kustomize/" >&2
  exit 1
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in dev production; do
  "${render[@]}" "$here/overlays/$overlay" > "$out/$overlay.yaml"
done
"${render[@]}" "$here/examples/access-policy" > "$out/access-policy.yaml"
cp "$here"/examples/*.yaml "$out/"
for v in "${versions[@]}"; do
  for f in "$out"/*.yaml; do
    # --no-warn: the operator's kinds have no schema here (checked by the observability test).
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$f"
  done
  echo "manifests valid for Kubernetes $v (strict): $(cd "$out" && ls *.yaml | tr '\n' ' ')"
done

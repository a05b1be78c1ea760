#!/usr/bin/env bash
# Schema validation of the deployment files (no cluster or Docker engine needed):
#   - every Kubernetes object under deploy/k8s (each kustomization's `kubectl kustomize` output
#     and every manifest no kustomization uses) against the Kubernetes API schemas, strictly,
#     and the custom resources against their vendored CRDs (tests/deploy/crds);
#   - docker-compose.yml against the Compose Specification schema, its image pins, the NATS
#     version (scripts/ensure-nats.sh) and the single image build (the stop grace periods are
#     checked against the services' shutdown budgets in tests/tests/compose.rs);
#   - a self-test: the broken files under tests/deploy/fixtures must each be rejected.
# The checker is tests/deploy/validate.py; its packages (tests/deploy/requirements.txt, from
# PyPI) go into a virtualenv under .tools/, rebuilt when the requirements change. Needs python3
# (with venv) and kubectl. VALIDATE_K8S_VERSION overrides the pinned API version (1.32.0).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/deploy-venv"
requirements="$root/tests/deploy/requirements.txt"
stamp="$venv/requirements.txt"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "validate-deploy: kubectl not found on PATH; it renders the kustomizations" \
    "(kubectl kustomize). Install kubectl 1.27 or later." >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$stamp"; then
  echo "validate-deploy: installing tests/deploy/requirements.txt into .tools/deploy-venv" >&2
  python3 -m venv --clear "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    -r "$requirements" >&2
  cp "$requirements" "$stamp"
fi

exec "$venv/bin/python" "$root/tests/deploy/validate.py" --root "$root" "$@"

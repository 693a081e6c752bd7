#!/usr/bin/env bash
# Validates deploy/ without a cluster: built-in kinds against the Kubernetes schemas (kubernetes-validate),
# the examples against the generated CRDs (JSON schema + CEL rules), broken resources refused, the
# kustomization complete; and checks that the node proxy's dependency tree holds no kube / k8s-openapi.
# Idempotent: the Python tools are installed once into target/deploy-validate/py (PyPI only, no venv needed).
set -euo pipefail
cd "$(dirname "$0")/.."

py=target/deploy-validate/py
stamp="$py/.requirements"
if ! cmp -s deploy/validate-requirements.txt "$stamp" 2>/dev/null; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    echo "deploy/validate.sh: installing python3-pip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  rm -rf "$py"
  # --target installs beside the system packages, not into them (allowed on an externally managed Python).
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-warn-script-location --target "$py" \
    -r deploy/validate-requirements.txt
  cp deploy/validate-requirements.txt "$stamp"
fi
PYTHONPATH="$py" python3 deploy/validate.py

# The node proxy depends on strait-api WITHOUT its `kube` feature; keep it that way.
proxy_tree=$(cargo tree -p strait-proxy -e normal --prefix none)
if grep -qE '^(kube|k8s-openapi) ' <<<"$proxy_tree"; then
  echo "deploy/validate.sh: strait-proxy depends on kube or k8s-openapi (see 'cargo tree -p strait-proxy -i kube')" >&2
  exit 1
fi

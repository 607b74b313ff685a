#!/usr/bin/env bash
# CI: the fast tier (`pytest -m "not slow"`, harness and library) in a fresh environment on the
# newest Python this machine has, installed with `.[train,test]`, which brings no TensorFlow;
# the script fails if TensorFlow is importable there.
set -euo pipefail
cd "$(dirname "$0")/.."

newest() {  # the newest CPython this machine has: pyenv's builds, else python3.N on PATH
  local version
  if command -v pyenv >/dev/null &&
    version=$(pyenv versions --bare | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -t. -k2,2n -k3,3n | tail -1) &&
    [[ -n "$version" ]]; then
    echo "$(pyenv prefix "$version")/bin/python"
    return
  fi
  for minor in 15 14 13 12 11; do
    if command -v "python3.$minor" >/dev/null; then
      command -v "python3.$minor"
      return
    fi
  done
  command -v python3
}

python=$(newest)
venv=/tmp/znorm-optax-newest-venv
start=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[train,test]'
"$venv/bin/python" - <<'EOF'
import importlib.util, sys
if importlib.util.find_spec("tensorflow") is not None:
  sys.exit("newest_python: TensorFlow is installed, but [train] must not need it")
print(f"newest_python: Python {sys.version.split()[0]}, no TensorFlow")
EOF
"$venv/bin/python" -m pytest -q -m "not slow"
echo "newest_python: passed in $((SECONDS - start)) s"

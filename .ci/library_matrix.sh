#!/usr/bin/env bash
# CI: the library's tests (not the harness), each environment a fresh virtual environment:
#   newest  Python 3.12, the newest jax, jaxlib, optax, chex and numpy pip resolves;
#   lowest  Python 3.10 (requires-python), jax, jaxlib, optax, chex and numpy pinned (==)
#           to the lower bounds in pyproject.toml (jaxlib to jax's bound).
# Usage: .ci/library_matrix.sh [newest|lowest ...]   (default: both)
# Needs pyenv's Python 3.12 and 3.10 (or python3.12 / python3.10 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

LIBRARY_TESTS=(tests/test_transforms.py tests/test_properties.py tests/test_fit.py znorm_optax)
TEST_TOOLS=("pytest>=8" "pytest-xdist" "hypothesis>=6.100")

interpreter() {  # interpreter MAJOR.MINOR: the newest pyenv build of that version, or PATH's
  local version
  if command -v pyenv >/dev/null &&
    version=$(pyenv versions --bare | grep -E "^$1\.[0-9]+$" | sort -t. -k3 -n | tail -1) &&
    [[ -n "$version" ]]; then
    echo "$(pyenv prefix "$version")/bin/python"
  else
    command -v "python$1"
  fi
}

lowest_pins() {  # name==lower-bound for the library's dependencies, from pyproject.toml
  python3 - <<'EOF'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
bounds = {}
for dep in deps:
  m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", dep.strip())
  if not m:
    raise SystemExit(f"library_matrix: cannot read a lower bound from {dep!r}")
  bounds[m.group(1).lower()] = m.group(2)
bounds.setdefault("jaxlib", bounds["jax"])  # jaxlib is released with jax
print(" ".join(f"{name}=={version}" for name, version in sorted(bounds.items())))
EOF
}

run_env() {  # run_env NAME PYTHON PACKAGES...
  local name=$1 python=$2
  shift 2
  local venv=/tmp/znorm-optax-$name-venv start=$SECONDS
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet -e . "$@" "${TEST_TOOLS[@]}"
  echo "library_matrix[$name]: $("$venv/bin/python" -c 'import sys, jax, jaxlib, optax, chex, numpy
print(f"Python {sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
      f"optax {optax.__version__}, chex {chex.__version__}, numpy {numpy.__version__}")')"
  local installed=$((SECONDS - start))
  "$venv/bin/python" -m pytest -q -n 2 "${LIBRARY_TESTS[@]}"
  echo "library_matrix[$name]: passed (install ${installed}s, total $((SECONDS - start))s)"
}

envs=("$@")
[[ ${#envs[@]} -gt 0 ]] || envs=(newest lowest)
for env in "${envs[@]}"; do
  case $env in
    newest) run_env newest "$(interpreter 3.12)" --upgrade jax jaxlib optax chex numpy ;;
    # shellcheck disable=SC2046  # word splitting of the pins is intended
    lowest) run_env lowest "$(interpreter 3.10)" $(lowest_pins) ;;
    *) echo "library_matrix: unknown environment '$env' (newest, lowest)" >&2 && exit 2 ;;
  esac
done

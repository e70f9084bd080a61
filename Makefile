# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# The first interpreter that actually runs and is >= 3.11 (pyenv shims may exist but fail).
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11; do \
             $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint sysdeps testdeps install doctor bench clean server pools worker

demo: sysdeps $(STAMP)  ## build the tiny model, validate embedded data, generate (no downloads)
	$(BIN)/realign demo

test: sysdeps testdeps $(STAMP) lint  ## lint, then the whole test suite
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff: lint (pycodestyle, pyflakes, import order) and formatting, 120 columns
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: sysdeps $(STAMP)

doctor: sysdeps $(STAMP)
	$(BIN)/realign doctor

bench: sysdeps $(STAMP)  ## ratio benches (blas, SFT vs mlx-lm, generation, DPO metrics, start-up): one table
	$(BIN)/python bench/run_all.py
	$(BIN)/python bench/validate.py

server: sysdeps $(STAMP)  ## Prefect UI on 127.0.0.1:4200: pools, deployments, a local worker (Ctrl-C stops all)
	$(BIN)/realign server $(if $(NIGHTLY_TZ),--timezone $(NIGHTLY_TZ))

# Against the Prefect server in PREFECT_API_URL (or your Prefect profile): the pools prefect.yaml names.
pools: $(STAMP)
	@for p in realign m4-max m3-ultra; do \
	  $(BIN)/prefect work-pool inspect $$p >/dev/null 2>&1 && echo "work pool $$p exists" || $(BIN)/prefect work-pool create $$p --type process; \
	done

# On each Mac, from its checkout: make worker POOL=m4-max (PREFECT_API_URL must point at the server).
worker: sysdeps $(STAMP)
	@test -n "$(POOL)" || { echo "usage: make worker POOL=m4-max|m3-ultra|realign"; exit 2; }
	REALIGN_HOME=$(CURDIR) $(BIN)/prefect worker start --pool $(POOL) --type process

# MLX's Linux CPU wheel ships a reference BLAS ~30x slower than OpenBLAS; realign preloads
# Debian's libopenblas0-pthread when present. Installed here when we are root with apt.
sysdeps:
	@if [ "$$(uname)" = Linux ] && ! /sbin/ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing libopenblas0-pthread (fast BLAS for MLX on CPU)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null; \
	  else \
	    echo "note: for ~30x faster MLX matmuls on Linux run: sudo apt-get install -y libopenblas0-pthread"; \
	  fi; \
	fi

# bubblewrap isolates code the RLVR verifier runs (without it: rlimits + the harness's audit hook, + unshare -n).
# The browser tests drive Debian's chromium (never `playwright install`): installed here when we are root with apt;
# otherwise the command is printed and those tests are skipped with the same message.
testdeps:
	@if [ "$$(uname)" = Linux ] && ! command -v bwrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap (the code verifier's sandbox)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null || true; \
	fi
	@if [ "$$(uname)" = Linux ] && ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium (browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: the browser tests need chromium and will be skipped: sudo apt-get install -y chromium"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: realign needs Python >= 3.11; install it, or run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"realign needs Python >= 3.11, $(PYTHON) is {sys.version.split()[0]}; run: make PYTHON=python3.11 ..."'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

clean:  ## remove the virtualenv and caches; runs/ (your runs) is kept
	rm -rf $(VENV) .pytest_cache .ruff_cache

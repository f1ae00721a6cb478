# Two commands for a new user: `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# A real search: ProxylessNAS space, digits data, local Ray cluster, committed CPU LUT.
demo: install
	$(BIN)/nas search --space proxylessnas --strategy evolution --evaluator train \
		--trials 8 --epochs 1 --max-latency-ms 9.5 --run-dir runs/demo

# --durations: the slowest tests in every CI log, to keep the suite under 15 minutes.
test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30

# Everything, with the exhaustive matrices (about three times as long as `make test`).
test-all: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "slow or not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs

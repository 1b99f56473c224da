# One entry point for people and CI. `make run` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup system-deps run test lint typecheck check bench clean

$(BIN)/egress-agent: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/egress-agent

system-deps:
	bash scripts/system-deps.sh

# Run the agent in the foreground on the embedded defaults: SQLite under the state
# directory, metrics on 127.0.0.1:9813, watching the files under examples/watched.
run: setup
	$(BIN)/egress-agent --config examples/agent.yaml run

lint: setup
	$(BIN)/ruff check agent tests bench migrations
	$(BIN)/ruff format --check agent tests bench

typecheck: setup
	$(BIN)/mypy

test: setup system-deps
	$(BIN)/ruff check agent tests bench migrations
	$(BIN)/mypy
	# three workers on two cores for the independent tests (and drills that may run beside
	# them: most of their time is spent waiting on agents and subprocesses); drills with
	# host-wide limits or timing bounds and network-namespace tests run alone afterwards
	$(BIN)/pytest -q -n 3 -m "not (drill or netns) or concurrent" $(PYTEST_ARGS)
	$(BIN)/pytest -q -m "(drill or netns) and not concurrent" $(PYTEST_ARGS)

bench: setup system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

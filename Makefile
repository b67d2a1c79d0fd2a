# Every target sets up its own virtualenv on first use. Direct dependencies are pinned in
# pyproject.toml and every transitive one in requirements.lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test powercut bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m hil.demo

test: $(STAMP)
	$(BIN)/pytest

powercut: $(STAMP)
	$(BIN)/python -m hil.powercut

bench: $(STAMP)
	$(BIN)/python -m hil.bench

clean:
	rm -rf $(VENV) build .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

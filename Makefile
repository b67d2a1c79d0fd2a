# Every target sets up its own virtualenv on first use. Direct dependencies are pinned in
# pyproject.toml and every transitive one in requirements.lock; the emulated Pico's rp2040js is
# pinned in hil/pico/package.json and its lock file (node 18 or newer).
#
# The Pico tier runs the stock MicroPython firmware given as PICO_FIRMWARE (a UF2, with the RP2040
# boot ROM rp2040-bootrom-B1.bin beside it or as PICO_BOOTROM); without one its tests skip and
# say how to get one. A checkout next to ../shared/rp2/ finds the firmware there.
PYTHON ?= python3
NPM    ?= npm
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM := $(VENV)/.system
RIG    := hil/pico
RIG_STAMP := $(RIG)/node_modules/.installed

ifdef PICO_FIRMWARE
export PICO_FIRMWARE
endif
ifdef PICO_BOOTROM
export PICO_BOOTROM
endif

.PHONY: setup demo demo-fleet test powercut bench fuzz clean

setup: $(STAMP) $(RIG_STAMP) $(SYSTEM)

$(SYSTEM): hil/system_packages.sh | $(STAMP)
	bash hil/system_packages.sh
	touch $@

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[test]'
	touch $@

$(RIG_STAMP): $(RIG)/package.json $(RIG)/package-lock.json
	$(NPM) ci --prefix $(RIG) --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/python -m hil.demo

demo-fleet: setup
	$(BIN)/python -m hil.demo_fleet

# The suite runs on TEST_JOBS pytest-xdist workers: most of its time is meters booting and intervals
# closing, not computing. A file's tests stay on one worker, and the emulated Pico's files run one
# after another (hil/pytest_plugin.py's scheduler).
TEST_JOBS ?= 3

test: setup
	$(BIN)/pytest -n $(TEST_JOBS) --dist loadfile

powercut: setup
	$(BIN)/python -m hil.powercut

bench: setup
	$(BIN)/python -m hil.bench

fuzz: setup
	$(BIN)/python -m hil.fuzz

clean:
	rm -rf $(VENV) $(RIG)/node_modules build .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

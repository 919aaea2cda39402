# Two commands: `make run` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check package-check fuzz bench bench-e2e bench-sql bench-campaign bench-recovery clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/herald run -c herald.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

check: $(STAMP)
	$(BIN)/herald check -c herald.yaml --strict

# pip install of the distribution (herald-bsg) into a clean venv, with an example connector package
package-check:
	bash .ci/package-check

# The hypothesis fuzz suites on a long budget: make fuzz EXAMPLES=100000 [SEED=N]
EXAMPLES ?= 10000
fuzz: $(STAMP)
	HERALD_FUZZ_EXAMPLES=$(EXAMPLES) HERALD_FUZZ_SEED=$(SEED) $(BIN)/python -m pytest -q \
	  tests/test_fuzz_rules.py tests/test_fuzz_config.py tests/test_fuzz_http.py tests/test_pumping.py -k "fuzz or peer or mask"

bench: $(STAMP)
	$(BIN)/python bench/match.py

bench-e2e: $(STAMP)
	$(BIN)/python bench/e2e.py

bench-sql: $(STAMP)
	$(BIN)/python bench/sql_poll.py

bench-campaign: $(STAMP)
	$(BIN)/python bench/campaign.py

bench-recovery: $(STAMP)
	$(BIN)/python bench/recovery.py

clean:
	rm -rf $(VENV) var .pytest_cache

# Two commands: `make run` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check bench bench-e2e bench-sql bench-campaign clean

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

bench: $(STAMP)
	$(BIN)/python bench/match.py

bench-e2e: $(STAMP)
	$(BIN)/python bench/e2e.py

bench-sql: $(STAMP)
	$(BIN)/python bench/sql_poll.py

bench-campaign: $(STAMP)
	$(BIN)/python bench/campaign.py

clean:
	rm -rf $(VENV) var .pytest_cache

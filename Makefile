# `make demo` and `make test` set everything up on a fresh machine; nothing needs installing by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit bench clean torture

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m durable_nb.demo example_notebooks/crash_resume.ipynb --workdir demo-run

lint: $(STAMP)
	$(BIN)/ruff check durable_nb tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) lint browser-deps js-test postgres-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The browser tests drive Debian's Chromium (never a downloaded browser) against the built extension.
EXT_SRC := $(wildcard extension/src/*.ts extension/style/*) extension/package.json extension/tsconfig.json
EXT_STAMP := $(VENV)/.labextension
NODE_STAMP := extension/node_modules/.package-lock.json

.PHONY: browser-deps js-test postgres-deps
# The PostgreSQL tests and benchmarks start their own server from Debian's binaries (tests/pg_server.py).
postgres-deps:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; }

browser-deps: $(EXT_STAMP)
	test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

$(NODE_STAMP): extension/package-lock.json
	command -v npm >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	cd extension && npm ci --no-audit --no-fund

# Rebuild the extension when its sources change, then reinstall so the venv's share/jupyter gets the build.
$(EXT_STAMP): $(STAMP) $(NODE_STAMP) $(EXT_SRC)
	cd extension && PATH="$(CURDIR)/$(BIN):$$PATH" npm run build:prod
	$(BIN)/pip install -q --no-deps -e .
	touch $@

js-test: $(NODE_STAMP)
	cd extension && npm test

# The torture suite at full size (issue 17): 100+ SIGKILLs, 300 corrupted copies, a 30 s S3 outage, a full disk,
# read-only media and permissions, a 10 minute soak of 4 kernels. `make test` runs the same tests at a short
# size. Prints the figures at the end.
torture: $(STAMP)
	DURABLE_NB_TORTURE=long $(BIN)/python -m pytest -q -p no:cacheprovider -k torture tests

bench: $(STAMP) postgres-deps
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build dist

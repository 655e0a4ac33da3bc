# pgingest: `make deps` sets everything up, `make test` runs the checks. `make help` lists targets.

# ---- variables ---------------------------------------------------------------------------
SHELL        := /bin/bash
.SHELLFLAGS  := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON       ?= python3
VENV         := .venv
VBIN         := $(VENV)/bin
STAMPS       := .stamps
VENV_STAMP   := $(STAMPS)/venv
PGCLUSTER    := scripts/pgcluster.sh
PYTEST_ARGS  ?=
# Prometheus rule files (their unit tests, *.test.yml, are run by tests/test_prometheus_rules.py)
PROM_RULES   := $(filter-out %.test.yml,$(wildcard ops/prometheus/*.yml))

# DATABASE_URL from the environment (or the command line) wins over the private cluster in
# .pgdata (scripts/pgcluster.sh); every recipe sees it.
ifeq ($(origin DATABASE_URL),undefined)
DATABASE_URL := $(shell $(PGCLUSTER) url)
PRIVATE_DB   := 1
endif
export DATABASE_URL

.PHONY: help system venv deps db db-stop print-database-url install install.sql lint test clean \
        demo bench bench-peers chaos chaos-small eval compat

# ---- targets -----------------------------------------------------------------------------
help:
	@echo "make deps                 system packages + extensions + promtool (system) and .venv (venv)"
	@echo "make db / db-stop         start / stop the private cluster in .pgdata"
	@echo "make print-database-url   the URL everything uses (DATABASE_URL overrides)"
	@echo "make install              install pgingest into DATABASE_URL"
	@echo "make install.sql          write the install script to install.sql"
	@echo "make lint                 ruff, ruff format, sqlfluff, mypy, promtool check rules"
	@echo "make demo                 the main job: a real corpus through the pipeline, then searches"
	@echo "make test                 deps, db, lint, pytest (PYTEST_ARGS=...)"
	@echo "make bench / bench-peers  benchmarks as ratios to same-run references; pgingest vs pgai"
	@echo "make eval                 retrieval quality on the project's question set (eval-results.json)"
	@echo "make compat               the pipeline against Infinity, a real embedding server (.cache/compat)"
	@echo "make chaos                20,000 documents under faults, kills and a restart; checks nothing was lost"
	@echo "make chaos-small          the same at 1,500 documents, as a test (minutes; not in make test)"
	@echo "make clean                stop the cluster, remove .pgdata .venv .stamps"

system:
	scripts/install-system.sh

venv: $(VENV_STAMP)

$(VENV)/pyvenv.cfg:
	$(PYTHON) -m venv $(VENV)

# Re-done only when pyproject.toml changes (or the venv is recreated).
# torch first, pinned, with pip (which reads pip's config: 2.13.0 is the CPU build in its
# find-links on this machine's disk; anything else downloads GBs), without compiling its .py files
# (Python compiles what it imports). The rest with uv, installed from the registry into the venv:
# on a fresh machine 23 s instead of pip's 372 s for the same 192 packages, same versions; torch
# named again so that no dependency can replace the installed CPU build.
$(VENV_STAMP): pyproject.toml $(VENV)/pyvenv.cfg
	$(VBIN)/python -m pip install -q --disable-pip-version-check --no-compile 'torch==2.13.0' 'uv==0.13.9'
	$(VBIN)/uv pip install -q --python $(VBIN)/python -e '.[dev,local]' 'torch==2.13.0'
	@mkdir -p $(STAMPS) && touch $@

deps: system venv

db: system
ifdef PRIVATE_DB
	$(PGCLUSTER) start
else
	@echo "DATABASE_URL is set: not starting the private cluster"
	pg_isready -d "$$DATABASE_URL"
endif

db-stop:
	$(PGCLUSTER) stop

print-database-url:
	@echo "$(DATABASE_URL)"

install: db venv
	$(VBIN)/pgingest install

install.sql: venv
	$(VBIN)/pgingest install --print > $@.tmp
	mv $@.tmp $@

lint: venv
	$(VBIN)/ruff check src tests scripts bench eval
	$(VBIN)/ruff format --check src tests scripts bench eval
	$(VBIN)/sqlfluff lint sql migrations plpython src/pgingest/installer
	$(VBIN)/mypy
	@command -v promtool >/dev/null || { echo "promtool is missing: make system installs it" >&2; exit 1; }
	promtool check rules $(PROM_RULES)

test: deps db lint
	$(VBIN)/pytest -m "not chaos" $(PYTEST_ARGS)

clean:
	-$(PGCLUSTER) destroy-second
	-$(PGCLUSTER) destroy
	rm -rf .pgdata $(VENV) $(STAMPS)

# The main job: the Python standard library's documentation through the whole pipeline with the
# bundled local model, then searches. DEMO_ARGS=--keep-running leaves the model server and worker up.
DEMO_ARGS ?=
demo: install
	$(VBIN)/pgingest demo $(DEMO_ARGS)

# Kill everything, then check nothing was lost (docs/reliability.md). Restarts PostgreSQL once
# when DATABASE_URL is the private cluster: not while tests run on it. CHAOS_ARGS=--small|--keep|--seed N
CHAOS_ARGS ?=
chaos: venv db
	$(VBIN)/python scripts/chaos.py $(CHAOS_ARGS)

# The small chaos run (1,500 documents, all three sources, kills, a second model), as a test.
chaos-small: venv db
	$(VBIN)/pytest -m chaos tests/test_chaos.py $(PYTEST_ARGS)

# Benchmarks: every figure next to a reference measured in the same run (bench/README.md).
BENCH_ARGS ?=
bench: db venv
	$(VBIN)/python -m bench.run $(BENCH_ARGS)

# Retrieval quality: the project's own question set through the SQL API (eval/README.md).
EVAL_ARGS ?=
eval: db venv
	$(VBIN)/python -m eval.run $(EVAL_ARGS)

# The heading path in the model's input, with and without (issue 22): CPU only, no database
# (eval/headings/; docs/retrieval.md).
EVAL_HEADINGS_ARGS ?=
.PHONY: eval-headings
eval-headings: venv
	$(VBIN)/python -m eval.headings.run $(EVAL_HEADINGS_ARGS)

# A real embedding server: Infinity in its own venv under .cache/compat (scripts/compat.py).
COMPAT_ARGS ?=
compat: db venv
	$(VBIN)/python scripts/compat.py $(COMPAT_ARGS)

# pgai's vectorizer worker on the same corpus, embedder and database (installs pgai into .cache/).
bench-peers: db venv
	$(VBIN)/python bench/peers.py $(BENCH_ARGS)

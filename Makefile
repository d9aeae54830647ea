# Two commands on a fresh machine: `make demo` and `make test`. See README.md.
SHELL := /bin/bash
DATA ?= synthetic
VENV := .venv
RECS := $(VENV)/bin/recs
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo pipeline serve stop db-up db-down test lint bench airflow clean-var

setup:            ## venv with pinned packages; checks Java 17 and Postgres binaries
	@scripts/setup.sh

db-up: setup      ## start the private Postgres under var/ (unless RECS_DATABASE_URL) and migrate
	@$(RECS) db-up

db-down: setup
	@$(RECS) db-down

load: db-up       ## load DATA (synthetic by default, or a MovieLens folder)
	@$(RECS) load $(DATA)

pipeline: load    ## everything but serving: exits when the lists are published
	@$(RECS) pipeline

demo: pipeline    ## pipeline, then the reader on 127.0.0.1:8000 and curl commands
	@$(RECS) serve --daemon
	@$(RECS) examples

serve: db-up      ## the reader in the foreground (gunicorn)
	@$(RECS) serve

airflow: db-up    ## Airflow UI (standalone) with the project's DAGs; prints URL and login
	@$(RECS) airflow-ui

stop: setup       ## stop a reader started by `make demo`
	@$(RECS) stop

test: setup       ## the whole suite against real Postgres, Spark, Airflow and FAISS
	@$(VENV)/bin/python -m pytest

lint: setup
	@$(VENV)/bin/ruff check .

bench: setup      ## benchmarks; figures go to docs/benchmarks.md by hand, with the command
	@$(VENV)/bin/python -m bench.run_all

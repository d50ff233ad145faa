# Two commands do all the set-up on a fresh machine (Python 3.11, package registries only):
#   make demo       build .venv and the browser viewer's scripts if missing, build the demo
#                   data, train its checkpoint on the real HER2ST sections, run the cohort
#   make test       build .venv, .venv-viewers and the viewer's scripts if missing, then ruff,
#                   snakemake --lint (in the tests) and pytest, listing the 20 slowest tests
# While working:
#   make test-fast  build .venv if missing, then ruff and pytest without the tests that run the
#                   real workflow (marker e2e), need a SLURM cluster (slurm) or train for long
#                   (slow)
# `make viewers` builds .venv-viewers alone: squidpy and spatialdata, which cannot share .venv.
# `make viewer-assets` installs OpenSeadragon (npm registry, envs/viewer-assets/package-lock.json)
# for `hespotex view`.
PYTHON ?= python3
VENV := .venv
VIEWERS_VENV := .venv-viewers
VIEWER_ASSETS := envs/viewer-assets
BIN := $(CURDIR)/$(VENV)/bin
CORES ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: demo test test-fast env viewers viewer-assets

env: $(VENV)/installed.stamp

viewers: $(VIEWERS_VENV)/installed.stamp

viewer-assets: $(VIEWER_ASSETS)/installed.stamp

$(VENV)/installed.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VIEWER_ASSETS)/installed.stamp: $(VIEWER_ASSETS)/package.json $(VIEWER_ASSETS)/package-lock.json
	npm ci --prefix $(VIEWER_ASSETS) --no-audit --no-fund --silent
	touch $@

$(VIEWERS_VENV)/installed.stamp: envs/viewers.txt
	$(PYTHON) -m venv $(VIEWERS_VENV)
	$(VIEWERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VIEWERS_VENV)/bin/python -m pip install --quiet -r envs/viewers.txt
	touch $@

# The demo data is rebuilt when the code that builds it changes (a new demo slide, say).
demo/her2st/sections.tsv: hespotex/demo/builder.py hespotex/demo/planted_artifacts.py \
		| $(VENV)/installed.stamp
	$(BIN)/hespotex demo-data --out demo

# Retrained when the checkpoint's format may have changed (its module), not only its inputs.
demo/model.safetensors: demo/her2st/sections.tsv config/demo.yaml hespotex/network/checkpoint.py
	$(BIN)/hespotex train --config config/demo.yaml --sections demo/her2st/sections.tsv \
		--validation C4 --out $@

demo: demo/model.safetensors $(VIEWER_ASSETS)/installed.stamp
	$(BIN)/snakemake --profile workflow/profiles/local --configfile config/demo.yaml \
		--cores $(CORES)

test: $(VENV)/installed.stamp $(VIEWERS_VENV)/installed.stamp $(VIEWER_ASSETS)/installed.stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest --durations=20

test-fast: $(VENV)/installed.stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m "not e2e and not slurm and not slow" --durations=20

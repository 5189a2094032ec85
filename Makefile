# Two entry points for a fresh clone:
#   make repro   create .venv, install, run the whole DVC pipeline on the embedded default data
#   make test    create or reuse .venv, install, run the test suite
# A second run reinstalls nothing: the install is stamped against pyproject.toml.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_HOME := $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export OMP_NUM_THREADS ?= 2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install repro test test-all clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m hmrmamba.ssm.build || true
	$(BIN)/python -m hmrmamba.demo.pose_models --if-missing || echo "pose models not fetched: hmrmamba demo needs --keypoints until python -m hmrmamba.demo.pose_models succeeds"
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro
	$(BIN)/hmrmamba where

# the fast suite plus the integration tests (real DVC, Prefect and MLflow on loopback)
test: $(STAMP)
	$(BIN)/python -m pytest -m "(integration or not slow) and not gpu" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -m "not gpu" -q

clean-venv:
	rm -rf $(VENV)

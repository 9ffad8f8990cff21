# Every target creates its own virtualenv, so each works on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test bench protos clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/wakegate up -f examples/helloworld/helloworld-go.yaml


test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m tests.support.import_contract
	$(BIN)/pytest -q

# Regenerate the Python code of the project's own protos (tests fail if it is stale).
protos: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos/gen \
		--grpc_python_out=protos/gen protos/wakegate/proto/v1/*.proto

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV)

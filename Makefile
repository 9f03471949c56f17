# Two set-up commands: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv if missing and installs what it needs (CPU torch first).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.demp-installed

.PHONY: demo test setup data clean

# Where the library finds CIFAR-10 when data.root is not set (the library itself knows no path).
DEMP_DATA ?= $(abspath ../shared/data/cifar10-jpeg.zip)
export DEMP_DATA

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,onnx,lightning,hf]'
	touch $(STAMP)

setup: $(STAMP)

# Fashion-MNIST comes from Debian; best effort (tests skip the real-file checks without it).
data:
	@test -d /usr/share/datasets/fashion-mnist || \
	  ( (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || \
	    echo "note: could not install dataset-fashion-mnist; run: apt-get install -y dataset-fashion-mnist" )

demo: setup data
	$(BIN)/demp train

test: setup data
	$(BIN)/python -m pytest tests

clean:
	rm -rf $(VENV) runs .pytest_cache

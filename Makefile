# Two commands for a fresh machine (Python >= 3.10): `make demo` and `make test`.
# Both create or reuse a virtual environment in .venv. torch is pinned first, so pip takes
# the CPU build on a CPU machine instead of pulling several GB of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean-data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The main job on the built-in default data (clevrer_sim, quick preset). Rerunning it
# continues an interrupted encoder run instead of starting again.
ENCODER_RUN ?= runs/demo/encoder
demo: $(STAMP)
	$(BIN)/cjepa data generate preset=quick
	$(BIN)/cjepa data stats split=train
	$(BIN)/cjepa data show split=train video=0
	$(BIN)/cjepa train-encoder preset=quick out=$(ENCODER_RUN) resume=auto
	$(BIN)/cjepa extract-slots checkpoint=$(ENCODER_RUN)/encoder.pt
	$(BIN)/cjepa show-slots checkpoint=$(ENCODER_RUN)/encoder.pt split=validation video=0

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/generate.py
	$(BIN)/python benchmarks/encoder.py

clean-data:
	rm -rf datasets/clevrer_sim/*.h5 datasets/clevrer_sim/questions datasets/clevrer_sim/show datasets/clevrer_sim/stats

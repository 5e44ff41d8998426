# Two commands for a fresh machine (Python >= 3.10): `make demo` and `make test`.
# Both create or reuse a virtual environment in .venv. torch is pinned first, so pip takes
# the CPU build on a CPU machine instead of pulling several GB of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo quick-encoder test test-slow lint bench clean-data predictor-figures ablation phyre

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The main job on the built-in default data: the whole pipeline (clevrer_sim -> encoder -> slots ->
# predictors with and without object masking -> QA and interventions -> report.md) in
# $(MAIN_RUN). Rerunning it continues an interrupted run.
MAIN_RUN ?= runs/main
demo: $(STAMP)
	$(BIN)/cjepa main out=$(MAIN_RUN)

# The quick-preset data, encoder and slots under datasets/clevrer_sim: the inputs of the
# issue-3/4 figures and of the masking ablation. Rerunning continues an interrupted encoder run.
ENCODER_RUN ?= runs/demo/encoder
quick-encoder: $(STAMP)
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
	$(BIN)/python benchmarks/phyre.py
	$(BIN)/python benchmarks/distributed.py
	$(BIN)/python benchmarks/memory.py

clean-data:
	rm -rf datasets/clevrer_sim/*.h5 datasets/clevrer_sim/questions datasets/clevrer_sim/show datasets/clevrer_sim/stats

# Issue 4's figures: rollout error against horizon and latent interventions, for predictors
# trained with and without object masking on oracle and on learned slots. Needs
# `make quick-encoder` first (the quick data, the encoder and its slots). Writes under $(PRED_RUNS).
PRED_RUNS ?= runs/predictor
CF_DATA ?= datasets/clevrer_sim_cf
predictor-figures: $(STAMP)
	$(BIN)/cjepa oracle-slots
	$(BIN)/cjepa data generate preset=quick data.root=$(CF_DATA) data.generator.counterfactuals=true \
		'data.generator.videos={train: 0, validation: 50, test: 0}'
	$(BIN)/cjepa oracle-slots data.root=$(CF_DATA) splits=[validation]
	$(BIN)/cjepa extract-slots checkpoint=$(ENCODER_RUN)/encoder.pt data.root=$(CF_DATA) \
		splits=[validation] counterfactuals=true
	set -e; for slots in oracle learned; do for masking in object none; do \
		run=$(PRED_RUNS)/$$slots-$$masking; dir=$$( [ $$slots = oracle ] && echo oracle_slots || echo slots ); \
		$(BIN)/cjepa train slots=$$slots masking=$$masking out=$$run resume=auto; \
		$(BIN)/cjepa rollout checkpoint=$$run/predictor.pt; \
		$(BIN)/cjepa intervene checkpoint=$$run/predictor.pt slots=$(CF_DATA)/$$dir; \
	done; done

# Issue 5's masking ablation: masking {none, object 0..1 .. 0..4} x 3 seeds x {learned, oracle}
# slots, a predictor and two QA readers each (configs/eval_ablation.yaml; about 3.2 minutes a run
# on 2 cores at the quick preset, 1.6 hours in all). Needs `make quick-encoder` first. Finished
# runs are kept, so an interrupted ablation continues.
ABLATION_RUN ?= runs/ablation
ablation: $(STAMP)
	$(BIN)/cjepa oracle-slots splits=[train,validation]
	$(BIN)/cjepa eval ablation out=$(ABLATION_RUN)

# Issue 7's figures: the phyre_sim data (10 templates x 100 tasks x 8 attempts, about 2 minutes),
# its oracle slots, and the PHYRE evaluation over 3 within-template and 2 cross-template folds
# (a world model, a readout and a plausibility model trained per fold; about 8 minutes a fold on
# 2 cores with bf16, README). Finished folds are kept, so an interrupted evaluation continues.
PHYRE_RUN ?= runs/phyre
phyre: $(STAMP)
	$(BIN)/cjepa data generate data=phyre_sim
	$(BIN)/cjepa oracle-slots data=phyre_sim
	$(BIN)/cjepa eval phyre out=$(PHYRE_RUN) 'folds={within: [0, 1, 2], cross: [0, 1]}'

"""PHYRE evaluation of the world model on phyre_sim: the same as `cjepa eval phyre`.

    python eval/phyre_plausibility.py                                  # folds within 0-2, cross 0
    python eval/phyre_plausibility.py folds='{within: [0, 1, 2, 3, 4], cross: []}' out=runs/phyre5

A `folds` override is merged into the default: a kind it leaves out keeps its default folds,
so `cross: []` is needed to run within-template folds alone.

Overrides are Hydra's; see configs/eval_phyre.yaml. Per fold it trains the predictor (the ball
as a one-shot action node) and the success readout on the training tasks, then scores the test
tasks: AUCCESS of the ranked candidate actions against a random order and the simulator oracle,
violation-of-expectation AUROC per violation type, rollout fidelity and object permanence.
Writes <out>/results.{md,json}, one directory per fold and a PNG of a task's best-ranked actions.
"""

from __future__ import annotations

import sys

from causaljepa import cli

if __name__ == "__main__":
    cli.main(["eval", "phyre", *sys.argv[1:]])

"""Counterfactual questions answered by geometry on oracle slots, without a reader: the same as
`cjepa eval cf-geometry`.

    python eval/clevrer_cf_geometry.py data.root=datasets/clevrer_sim_1k_v400 \
        checkpoints=[runs/ablation1k_v400/oracle/none/seed0/predictor.pt]

Overrides are Hydra's; see configs/eval_cf_geometry.yaml. Writes <out>/results.md (per option,
per question and per kind of choice for every world), results.json and results.png.
"""

from __future__ import annotations

import sys

from causaljepa import cli

if __name__ == "__main__":
    cli.main(["eval", "cf-geometry", *sys.argv[1:]])

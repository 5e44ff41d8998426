"""Influence graphs of trained predictors, scored against the simulator's truth: the same as
`cjepa eval influence`.

    python eval/influence_graphs.py \
        checkpoints=[runs/main/predictor_none/predictor.pt,runs/main/predictor_object/predictor.pt]
    python eval/influence_graphs.py checkpoints=[...] data.root=datasets/clevrer_sim_cf slots=oracle

Overrides are Hydra's; see configs/eval_influence.yaml. Writes <out>/scores.md (AUROC and AP
of each measure against the contact and the counterfactual truth), <out>/<predictor>/graphs/
(GraphML and torch_geometric files per window and per video) and PNGs of the graphs drawn over
the frames.
"""

from __future__ import annotations

import sys

from causaljepa import cli

if __name__ == "__main__":
    cli.main(["eval", "influence", *sys.argv[1:]])

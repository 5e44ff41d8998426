"""CLEVRER counterfactual evaluation: the same as `cjepa eval clevrer` (and, with `ablation` as
the first argument, `cjepa eval ablation`).

    python eval/clevrer_counterfactual.py checkpoint=runs/main/predictor_object/predictor.pt
    python eval/clevrer_counterfactual.py ablation out=runs/ablation [slots=[oracle]] [seeds=[0,1,2]]

Overrides are Hydra's; see configs/eval_clevrer.yaml and configs/eval_ablation.yaml.
"""

from __future__ import annotations

import sys

from causaljepa import cli

if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "ablation":
        cli.main(["eval", "ablation", *args[1:]])
    else:
        cli.main(["eval", "clevrer", *args])

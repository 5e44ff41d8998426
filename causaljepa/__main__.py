"""``python -m causaljepa`` = ``cjepa`` (what ``torchrun ... -m causaljepa train ...`` runs)."""

from .cli import main

main()

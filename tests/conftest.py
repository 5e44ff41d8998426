"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch

from causaljepa import cli


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread is as fast, and far faster on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def oracle_data(base, generate: tuple[str, ...] = ()):
    """Smoke data under <base>/ds (plus ``generate`` overrides) and its oracle slots, made from
    ``base``. Returns the data root."""
    root = base / "ds"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        run_cli(["data", "generate", "preset=smoke", f"data.root={root}", *generate])
        run_cli(["oracle-slots", f"data.root={root}"])
    return root


def oracle_world(base, generate: tuple[str, ...] = (), runs: dict[str, tuple[str, ...]] | None = None):
    """``oracle_data``, and a smoke predictor per entry of ``runs`` (name -> extra train
    overrides, trained into <base>/<name>), all run from ``base``. Returns the data root."""
    root = oracle_data(base, generate)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        for name, extra in (runs or {"run": ()}).items():
            run_cli(["train", "preset=smoke", "slots=oracle", f"data.root={root}", f"out={base / name}",
                     "trainer.progress=false", *extra])  # fmt: skip
    return root


def run_cli(argv: list[str]) -> None:
    """Run a cjepa command in-process; a SystemExit (Hydra's, on a bad config) becomes an error,
    since a module fixture must not end in SystemExit (pytest hides it)."""
    try:
        cli.main(argv)
    except SystemExit as e:
        raise RuntimeError(f"'cjepa {' '.join(argv)}' exited with {e.code} (see stderr)") from e

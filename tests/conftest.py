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


def run_cli(argv: list[str]) -> None:
    """Run a cjepa command in-process; a SystemExit (Hydra's, on a bad config) becomes an error,
    since a module fixture must not end in SystemExit (pytest hides it)."""
    try:
        cli.main(argv)
    except SystemExit as e:
        raise RuntimeError(f"'cjepa {' '.join(argv)}' exited with {e.code} (see stderr)") from e

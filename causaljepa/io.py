"""Atomic outputs: a file appears under its name only once it is complete."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PARTIAL = ".partial"


def partial_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete: ``name.partial.ext`` keeps the extension,
    so writers that infer the format from it (matplotlib, ffmpeg) still work."""
    return path.with_name(path.stem + PARTIAL + path.suffix)


@contextmanager
def atomic_output(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; rename it to ``path`` if the block succeeds, else delete it.

    A process killed at any moment (even by SIGKILL) leaves either the old file or the new one
    under ``path``, never a mix. ``durable`` also flushes the file and the rename to disk
    (fsync), so a power cut after the call returns cannot lose or tear it (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    if durable and hasattr(os, "O_DIRECTORY"):  # the directory entry of the rename
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj))


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_figure_path(path: str | os.PathLike, what: str = "out") -> Path:
    """``path`` as a Path if its suffix names a figure format, else a ValueError naming ``what``."""
    path = Path(path)
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(
            f"{what}={path}: a figure is written to a file whose name ends in one of "
            f"{', '.join(FIGURE_SUFFIXES)} (the format follows it), not "
            f"{repr(path.suffix) if path.suffix else 'a name without a suffix'}"
        )
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically and close it; the format is the name's suffix."""
    import matplotlib.pyplot as plt

    try:
        path = check_figure_path(path, "figure")
    except ValueError:
        plt.close(fig)
        raise
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    return Path(path)

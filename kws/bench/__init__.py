"""Benchmarks behind ``kws bench``: each module here measures one part and prints figures.

A benchmark module exposes ``NAME`` (str), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> dict`` (prints a human-readable
report and returns the figures, which ``kws bench --json`` writes out).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def benchmarks() -> dict[str, ModuleType]:
    """All benchmark modules, by ``NAME``."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # helpers shared by benchmarks
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found[module.NAME] = module
    return found

"""The shape of the public API: every library module declares ``__all__``, lists only
names it defines itself, and no function or class name is defined in two modules."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import defaultdict

import kws

# The command line, the benchmarks and the server are programs, not APIs.
PROGRAMS = ("kws.cli", "kws.bench", "kws.serve", "kws.__main__")


def _library_modules() -> list:
    names = [m.name for m in pkgutil.walk_packages(kws.__path__, "kws.") if not m.name.startswith(PROGRAMS)]
    return [importlib.import_module(n) for n in sorted(names)]


def test_every_library_module_declares_all_of_its_own_names() -> None:
    for module in _library_modules():
        if module.__name__ == "kws.data":  # a package of modules: nothing of its own to export
            continue
        assert hasattr(module, "__all__"), f"{module.__name__} has no __all__"
        for name in module.__all__:
            obj = getattr(module, name)  # AttributeError: a name __all__ lists but the module lacks
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and module.__name__ != "kws":
                assert obj.__module__ == module.__name__, f"{module.__name__}.__all__ lists {name} of {obj.__module__}"


def test_no_two_modules_define_the_same_public_name() -> None:
    homes = defaultdict(list)
    for module in _library_modules():
        for name, obj in vars(module).items():
            if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)):
                if obj.__module__ == module.__name__:
                    homes[name].append(module.__name__)
    assert {n: m for n, m in homes.items() if len(m) > 1} == {}

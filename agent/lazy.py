"""Package attributes imported when first named (PEP 562 module `__getattr__`).

A package that re-exports its parts pays for all of them on any import of one: the CLI
verb that reads the incident chain would import the correlator, the config model and the
pipeline, and `scan` would import the policy holder's SQLAlchemy. Such a package names
where each attribute lives, and the module is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: `where` maps an attribute to its submodule."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__

"""Named implementations of one extension point: generator engines, describer backends,
scorer metrics.

A registry lists the service's built-in implementations as "module:attribute" strings,
one line each, and also finds those that installed distributions declare under the
entry-point group of the same name, e.g. in a plugin's pyproject.toml:

    [project.entry-points."regen.generator.engines"]
    my-engine = "my_package.engine:MyEngine"

Nothing is imported until it is chosen, so an implementation's libraries are needed
only where it runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, what: str, builtins: Mapping[str, str]) -> None:
        """`group`: the entry-point group; `what`: how errors name an entry ("engine")."""
        self.group = group
        self.what = what
        self._builtins = dict(builtins)

    def _targets(self) -> dict[str, str]:
        targets: dict[str, str] = {}
        for entry in importlib.metadata.entry_points(group=self.group):
            targets[entry.name] = entry.value
        shadowed = sorted(set(targets) & set(self._builtins))
        if shadowed:
            log.warning("%s: built-in %s %s shadows an installed plugin", self.group, self.what, ", ".join(shadowed))
        return targets | self._builtins

    def names(self) -> list[str]:
        """Every registered name: the built-ins first, in their order, then plugins by name."""
        plugins = sorted(set(self._targets()) - set(self._builtins))
        return [*self._builtins, *plugins]

    def load(self, name: str) -> T:
        """The implementation registered as `name`; ValueError listing the names if none."""
        targets = self._targets()
        target = targets.get(name)
        if target is None:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}")
        module_name, _, attribute = target.partition(":")
        loaded: Any = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            loaded = getattr(loaded, part)
        return loaded

"""One registry class for everything chosen by name: architectures, attacks, defences, tasks,
datasets and profiles.

A :class:`Registry` is a ``dict`` (name -> object) that also knows aliases, a name normaliser,
and entries imported on first use (``"module:attribute"`` strings given as :class:`Lazy`), and
that answers an unknown name with one :class:`DrmguardError` listing the choices::

    ARCHS = Registry("architecture")

    @ARCHS.register("small_resnet", aliases=("small",))
    class SmallResNet(nn.Module): ...

    ARCHS.get("small")        # the class
    ARCHS.list()              # ["small_resnet", ...]
    ARCHS.get("nope")         # DrmguardError: unknown architecture 'nope' (choose ...)

Being a dict, a registry keeps working where the code used the plain dicts before (``name in
ARCHS``, ``sorted(ATTACKS)``, ``monkeypatch.setitem(PROFILES, ...)``).
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable

from .errors import DrmguardError

_MISSING = object()


class Lazy(str):
    """A registry entry imported on first :meth:`Registry.get`: ``"package.module:attribute"``."""

    def resolve(self):
        module, _, attr = self.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
        return obj


class Registry(dict):
    """name -> object, with aliases, lazily imported entries and a clear error for unknown
    names (see the module docstring)."""

    def __init__(self, kind: str, normalise: Callable[[str], str] | None = None,
                 choices_text: str | None = None):
        super().__init__()
        self.kind = kind
        self.aliases: dict[str, str] = {}
        self._normalise = normalise or (lambda s: s)
        self._choices_text = choices_text

    def register(self, name: str | None = None, obj=_MISSING, *, aliases: Iterable[str] = ()):
        """Add ``obj`` under ``name`` (default: ``obj.name``); without ``obj`` a decorator."""
        def add(o):
            key = name if name is not None else getattr(o, "name", None) or o.__name__
            if key in self and self[key] is not o:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self[key] = o
            for a in aliases:
                self.aliases[a] = key
            return o
        return add if obj is _MISSING else add(obj)

    def canonical(self, name) -> str:
        """The registered name for ``name`` (an alias or another spelling); raises for an
        unknown one."""
        key = self._normalise(str(name))
        key = self.aliases.get(key, key)
        if key not in self:
            raise DrmguardError(f"unknown {self.kind} '{name}' (choose {self.choices()})")
        return key

    def choices(self) -> str:
        return self._choices_text or ", ".join(self)

    def get(self, name, default=_MISSING):
        """The object registered as ``name`` (alias or normalised spelling); with ``default``
        that instead of the error for an unknown name (as ``dict.get``)."""
        try:
            key = self.canonical(name)
        except DrmguardError:
            if default is not _MISSING:
                return default
            raise
        value = dict.__getitem__(self, key)
        if isinstance(value, Lazy):
            value = value.resolve()
        return value

    def list(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self.keys())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.list()})"


__all__ = ["Registry", "Lazy"]

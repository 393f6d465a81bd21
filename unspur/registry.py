"""Name-keyed registries (timm-style): a name maps to a config class and a factory.

A registry is filled by the modules that implement its entries, on import::

    LOSSES = Registry("loss")

    @register_loss("cft", CftLossConfig, batch_keys=MASKED, needs=RELEVANCE)
    def cft_loss(...): ...

A config field whose value names an entry (``loss.name``, ``segmenter.name``, ...) looks the name
up here when it is validated, so registering an entry is the only edit needed to add one; an
unknown name raises :class:`UnknownNameError` listing what is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Entry", "Registry", "UnknownNameError"]

F = TypeVar("F")


class UnknownNameError(LookupError, ValueError):
    """A name is not in a registry; the message lists the registered names."""


@dataclass(frozen=True)
class Entry(Generic[F]):
    """One registered name: its ``config`` class (None: no settings), ``factory`` and free ``meta``."""

    name: str
    config: type | None = None
    factory: F | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """``kind`` names what is registered (used in errors: "unknown loss 'foo'; registered: ...").

    It reads like a mapping of name -> factory (``REG[name]``, ``in``, iteration over sorted
    names, :meth:`items`); :meth:`entry` gives the whole :class:`Entry`. ``hint`` is appended to the unknown-name error (e.g. which package registers the built-ins).
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, Entry[F]] = {}

    def add(self, name: str, factory: F | None = None, config: type | None = None, **meta: Any) -> Entry[F]:
        """Register ``name``; registering a taken name again is an error (call :meth:`unregister`)."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        entry = Entry(name, config, factory, dict(meta))
        self._entries[name] = entry
        return entry

    def register(self, name: str, config: type | None = None, **meta: Any) -> Callable[[F], F]:
        """Decorator form of :meth:`add`: the decorated object is the factory, returned unchanged."""

        def wrap(factory: F) -> F:
            self.add(name, factory, config, **meta)
            return factory

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests register toy entries and remove them afterwards)."""
        self.entry(name)
        del self._entries[name]

    def entry(self, name: str) -> Entry[F]:
        """The entry called ``name``; :class:`UnknownNameError` listing the registered names otherwise."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "(none)"
            hint = f" ({self.hint})" if self.hint else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}{hint}")
        return entry

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __getitem__(self, name: str) -> F:
        """The factory of ``name`` (``LOSSES["cft"]``); :class:`UnknownNameError` if unknown."""
        return self.entry(name).factory

    def items(self) -> list[tuple[str, F]]:
        """``(name, factory)`` pairs, sorted by name."""
        return [(n, self._entries[n].factory) for n in self.names()]

    def configs(self) -> dict[str, type | None]:
        """name -> config class."""
        return {n: self._entries[n].config for n in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

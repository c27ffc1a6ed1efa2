"""Registries of what a profile names by string, and the user files that add to them.

What this file achieves: a `Registry` maps a name (a dataset, a model family) to its entry and remembers which user
file registered it (`source`; None for a built-in), so that a job using an entry depends on that one file and no
other. `load_files(paths, key)` imports user files, each once per content, recording each as the source of what it
registers; the KD variants (`kdbench.engine.losses`) use the same loading. A name registered twice by different code
is refused.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

_LOADED: dict[str, str] = {}  # sha256 of a user file already imported -> its module name
_SOURCE: list[str | None] = [None]  # the user file being imported now, if any


def current_source() -> str | None:
    """The user file being imported by `load_files` now (what a registration records as its source), else None.
    A registration made while a module of the kdbench package is being imported (its built-ins, when a user's file
    is the first to import that module) is a built-in's: the first caller outside the package is then Python's
    import machinery, not the user's code."""
    if _SOURCE[0] is None:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name != "kdbench" and not name.startswith("kdbench."):
            return None if name.startswith("importlib") else _SOURCE[0]
        frame = frame.f_back
    return None


def load_files(paths, key: str = "extensions") -> dict[str, str]:
    """Import each Python file (it registers datasets, models or variants as a side effect); return {path: sha256}.
    `key` names the config key that listed them, for the error message."""
    hashes = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (config key {key})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        hashes[str(path)] = digest
        if digest not in _LOADED:  # the same content registers the same entries: import it once per process
            name = f"kdbench_user_{path.stem}_{digest[:12]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            _SOURCE[0] = str(path)
            try:
                spec.loader.exec_module(module)
            finally:
                _SOURCE[0] = None
            _LOADED[digest] = name
    return hashes


class Registry:
    """name -> entry, with the user file that registered each (`sources`)."""

    def __init__(self, kind: str, builtins: tuple[str, ...] = (), files_key: str = "extensions"):
        self.kind, self._builtins, self.files_key = kind, builtins, files_key
        self._entries: dict[str, object] = {}
        self.sources: dict[str, str | None] = {}

    def _load_builtins(self) -> None:
        for module in self._builtins:  # the modules whose import registers the built-in entries
            importlib.import_module(module)

    def add(self, name: str, entry, same=None, builtin: bool = False) -> None:
        """Register `entry` as `name` (`builtin`: kdbench's own, whoever's import triggered it). Registering a name
        again is refused when it is other code: by default, when another user file registers it; with
        `same(old, new)`, when that says the two are not the same code."""
        source = None if builtin else current_source()
        if name in self._entries:
            clash = (not same(self._entries[name], entry) if same is not None
                     else self.sources[name] != source and source is not None)
            if clash:
                raise ValueError(f"a {self.kind} named {name!r} is already registered (by "
                                 f"{self.sources[name] or 'kdbench'}); choose another name")
        self._entries[name] = entry
        self.sources.setdefault(name, source)

    def get(self, name: str):
        self._load_builtins()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {self.names()}. Fix: choose one of those, or "
                           f"list the file that registers it under `{self.files_key}`")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries

    def source(self, name: str) -> str | None:
        self.get(name)
        return self.sources[name]

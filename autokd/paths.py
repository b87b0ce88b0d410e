"""The path rules of configs: which keys hold paths, and how they are made absolute or relative.

Every path a training config holds is named by a dotted key (`PATH_KEYS`; a study adds its search
space file and its storage, `STUDY_PATH_KEYS`). A relative path in a file is relative to the file's
folder; `~` and absolute paths are taken as given. The loaders make them absolute once
(`resolve_paths`); what autokd stores in a study and writes to a file holds them relative to that
study's or file's folder again (`relative_paths`), so that it names no path of the machine or of the
working directory it was written from. A config says which keys it holds by its `path_keys`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from pydantic import BaseModel

# Dotted keys ("*": each item of a list).
PATH_KEYS = ("data.path", "data.data_dir", "data.unlabeled.file", "teachers.*.checkpoint", "teachers.*.torchscript",
             "teachers.*.logits", "student.path", "cache_dir")
STUDY_PATH_KEYS = (*PATH_KEYS, "search_space", "storage")
_Config = TypeVar("_Config", bound=BaseModel)  # a TrainConfig or StudySpec: its `path_keys` name its paths


def absolute_path(path: str, folder: str | Path) -> str:
    """`path` as a file in `folder` means it, absolute: `~` and absolute paths as given, relative ones from `folder`."""
    given = Path(path).expanduser()
    return str(given) if given.is_absolute() else os.path.abspath(os.path.join(folder, given))


def relative_path(path: str, folder: str | Path) -> str:
    """An absolute (or `~`) `path` relative to `folder`, so that the two can move together; a relative one as it is.

    Absolute still when the two share no folder but the filesystem root (``/usr/share/...`` from a
    home folder): a relative path would be no more portable than the absolute one."""
    given = Path(path).expanduser()
    if not given.is_absolute():
        return path
    target, base = os.path.abspath(given), os.path.abspath(folder)
    if os.path.commonpath([target, base]) == given.anchor:
        return target
    return os.path.relpath(target, base)


def resolve_paths(config: _Config, folder: str | Path) -> _Config:
    """A copy of `config` (a TrainConfig or StudySpec) with every path absolute, relative ones taken from `folder`.

    Example::

        stored = TrainConfig.model_validate(trial.user_attrs["config"])   # paths relative to the study file
        config = resolve_paths(stored, spec.folder)                      # ready to load data and teachers
    """
    copy = config.model_copy(deep=True)
    _map_paths(copy, lambda path: absolute_path(path, folder))
    return copy


def relative_paths(config: _Config, folder: str | Path) -> _Config:
    """A copy of `config` with every absolute path relative to `folder` (`relative_path`): how a study stores its
    configs (relative to the study file's folder) and a config file is written (relative to its own folder)."""
    copy = config.model_copy(deep=True)
    _map_paths(copy, lambda path: relative_path(path, folder))
    return copy


def is_path_key(dotted: str) -> bool:
    """Is `dotted` (e.g. ``teachers.0.checkpoint``) one of `STUDY_PATH_KEYS`?"""
    return any(_matches(dotted.split("."), key.split(".")) for key in STUDY_PATH_KEYS)


def _matches(parts: list[str], pattern: list[str]) -> bool:
    return len(parts) == len(pattern) and all(p == q or (q == "*" and p.isdigit()) for p, q in zip(parts, pattern))


def _map_paths(config: BaseModel, change: Callable[[str], str]) -> None:
    """Replace, in place, every path in `config` (its `path_keys`: `PATH_KEYS`, a study's `STUDY_PATH_KEYS`)
    by `change(path)`."""
    for key in config.path_keys:
        for node, name in list(_path_slots(config, key.split("."))):
            value = _child(node, name)
            changed = _storage_path(value, change) if key == "storage" else change(value)
            if changed != value:
                if isinstance(node, (dict, list)):
                    node[name] = changed
                else:
                    setattr(node, name, changed)


def _path_slots(node: Any, parts: list[str]) -> Iterator[tuple[Any, Any]]:
    """(container, key) of each non-empty string at the dotted `parts` below `node` (models, dicts, lists)."""
    head, rest = parts[0], parts[1:]
    for name in (range(len(node)) if head == "*" and isinstance(node, list) else [head]):
        value = _child(node, name)
        if rest and value is not None:
            yield from _path_slots(value, rest)
        elif not rest and isinstance(value, str) and value:
            yield node, name


def _child(node: Any, name: Any) -> Any:
    if isinstance(node, list):
        return node[name] if isinstance(name, int) else None
    return node.get(name) if isinstance(node, dict) else getattr(node, name, None)


def _storage_path(url: str, change: Callable[[str], str]) -> str:
    """A storage URL with its SQLite or journal file's path changed; a database server's as it is."""
    if url.startswith("sqlite:///"):
        path, mark, query = url.removeprefix("sqlite:///").partition("?")
        return url if path in ("", ":memory:") else f"sqlite:///{change(path)}{mark}{query}"
    return url if "://" in url else change(url)

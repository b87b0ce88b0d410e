"""Config files read: bounded, safe YAML, validated into the `spec` models, every error one line.

`read_yaml` reads a mapping with `safe_load` only, bounded (size, nesting, alias expansion, no
duplicate keys); `load_study`, `load_train_config` and `train_config_from_dict` validate it and
make the file's paths absolute from its folder (`paths.resolve_paths`). Pydantic's first error
becomes one line that names the file and the dotted key::

    studies/x.yaml: distill.temperature: must be > 0, got -1
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from autokd.archs import ARCH_ERROR, resolve_code_path
from autokd.errors import ConfigError
from autokd.paths import resolve_paths
from autokd.spec import StudySpec, TrainConfig, cut, shown

MAX_YAML_BYTES = 4 * 2**20  # a study, space or training config is a few kB
MAX_YAML_NODES = 100_000  # values after expanding every alias; a study has a few hundred
MAX_YAML_DEPTH = 50  # nesting; a study needs five
_Config = TypeVar("_Config", TrainConfig, StudySpec)

class _Loader(yaml.SafeLoader):
    """`yaml.safe_load`, but a key given twice is an error, not "the last one wins", and nesting is bounded."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` then a key of its own: an override
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class refuses it in its own words
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand to more than MAX_YAML_NODES values or MAX_YAML_DEPTH levels.

    Walks the node graph once (shared nodes are counted from a memo), so an alias bomb is
    measured in microseconds, before anything is built from it."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values when expanded, height)
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if id(node) in done:
            size, height = done[id(node)]
        elif id(node) in active:
            raise yaml.composer.ComposerError(None, None, "an alias refers to its own anchor (a recursive value)",
                                              node.start_mark)
        elif depth > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              node.start_mark)
        else:
            active.add(id(node))
            size, height = 1, 0
            children = (node.value if isinstance(node, yaml.SequenceNode) else
                        [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else [])
            for child in children:
                child_size, child_height = measure(child, depth + 1)
                size, height = size + child_size, max(height, child_height + 1)
                if size > MAX_YAML_NODES:
                    raise yaml.composer.ComposerError(None, None, f"aliases expand to more than {MAX_YAML_NODES:,} "
                                                      "values (an alias bomb?)", child.start_mark)
            active.discard(id(node))
            done[id(node)] = size, height
        if depth + height > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              node.start_mark)
        return size, height

    measure(root, 0)


def _load_yaml(text: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path` (safe_load only, bounded: see `_Loader`), or a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a YAML config "
                          f"(at most {MAX_YAML_BYTES:,})")
    try:
        document = _load_yaml(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: not valid YAML{where}: {cut(problem, 120)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested deeper than {MAX_YAML_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(document).__name__}")
    return document


def describe_validation_error(error: ValidationError) -> tuple[str, str]:
    """Pydantic's first error as (dotted key, what was expected [, got X])."""
    first = error.errors()[0]
    location = cut(".".join(str(part) for part in first["loc"]), 120)
    key = location or "<top level>"
    kind, message = first["type"], first["msg"]
    if kind == ARCH_ERROR:  # worded by autokd (archs, or a check across sections); ctx names the key
        return ".".join(filter(None, (location, cut(first["ctx"]["key"])))) or key, message
    if kind == "extra_forbidden":
        return key, "unknown key"
    if kind == "missing":
        return key, "required key is missing"
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = message[0].lower() + message[1:] if message else message
    message = message.replace("input should be", "must be").replace("greater than or equal to", ">=")
    message = message.replace("greater than", ">").replace("less than or equal to", "<=").replace("less than", "<")
    if kind.endswith("_type") or kind in {"literal_error", "greater_than", "greater_than_equal", "less_than",
                                         "less_than_equal", "string_pattern_mismatch", "int_from_float",
                                         "int_parsing", "float_parsing", "bool_parsing", "finite_number"}:
        return key, f"{cut(message, 160)}, got {shown(first.get('input'))}"
    return key, cut(message, 200)


def config_error(source: str | Path, error: ValidationError) -> ConfigError:
    """Turn pydantic's first error into `file: dotted.key: what was expected, got X`."""
    key, message = describe_validation_error(error)
    return ConfigError(f"{source}: {key}: {message}")


def _validate(model: type[BaseModel], document: dict[str, Any], source: str | Path) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise config_error(source, error) from None


def _relative_to_file(config: _Config, path: str | Path) -> _Config:
    """Paths written in a config file are relative to that file's folder: made absolute here, once (a copy)."""
    folder = Path(os.path.abspath(Path(path).parent))
    config = resolve_paths(config, folder)
    if isinstance(config, StudySpec):
        config._folder = folder
    config.student = resolve_code_path(config.student, Path(path).parent)  # custom: the factory's folder, absolute
    return config


def load_study(path: str | Path) -> StudySpec:
    document = read_yaml(path)
    if "search_space" not in document:
        raise ConfigError(f"{path}: search_space: required key is missing (is this a training config? "
                          "use `autokd train`)")
    document = {**document, "source": str(path)}
    return _relative_to_file(_validate(StudySpec, document, path), path)


def load_train_config(path: str | Path) -> TrainConfig:
    """A training config file, or a study file (its default student is trained)."""
    document = read_yaml(path)
    if "search_space" in document:
        return load_study(path).train_config()
    return _relative_to_file(_validate(TrainConfig, document, path), path)


def train_config_from_dict(document: dict[str, Any], source: str = "<config>") -> TrainConfig:
    return _validate(TrainConfig, document, source)

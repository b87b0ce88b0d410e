"""autokd: AutoML for knowledge distillation.

Optuna proposes, Ray Tune runs, a Pareto front of accuracy versus size comes out, and the
chosen config is trained for production with the same loop::

    import autokd
    result = autokd.search("studies/digits.yaml", resume=True)   # trials + Pareto front
    autokd.build_report("studies/digits.yaml")                    # reports/digits/index.html
    autokd.export_config("studies/digits.yaml", "best.yaml", max_params=5000)
    run = autokd.train("best.yaml", epochs=60)                    # runs/<name>/student.pt
"""

import importlib
import sys
import types

from autokd.errors import AutokdError, CheckpointError, ConfigError, DataError, NonFiniteLossError, StorageError

__version__ = "0.1.0"

# The public surface: module -> the names it gives. Each is imported on first use, so `import autokd`
# (and so the CLI) loads no torch, Optuna, pandas or matplotlib until a command needs them.
_PUBLIC = {
    "autokd.config_files": ["load_study", "load_train_config"],
    "autokd.data": ["Dataset", "load_data"],
    "autokd.distill": ["FitResult", "evaluate", "fit"],
    "autokd.export": ["export_config"],
    "autokd.losses": ["DistillationLoss"],
    "autokd.pareto": ["first_dominators", "hypervolume", "knee_index", "pareto_front_mask", "pareto_ranks"],
    "autokd.report": ["build_report"],
    "autokd.results": ["front_frame", "robust_frame", "trials_frame"],
    "autokd.search": ["SearchResult", "search"],
    "autokd.sizes": ["ModelSize", "model_size"],
    "autokd.spec": ["StudySpec", "TrainConfig"],
    "autokd.stopping": ["ParetoRungs"],
    "autokd.own_loop": ["teacher_targets"],
    "autokd.train": ["build_student", "load_student", "train"],
    "autokd.zoo": ["build_model"],
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = ["AutokdError", "CheckpointError", "ConfigError", "DataError", "NonFiniteLossError", "StorageError",
           *sorted(_MODULE_OF)]


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'autokd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    if not hasattr(_Package, name):
        globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted({*globals(), *__all__})


_assigned = {}  # values given to `autokd.search` / `autokd.train` on purpose, e.g. by a test's monkeypatch


def _function_named_like_its_module(name):
    """A property that keeps ``autokd.<name>`` the function when the submodule ``autokd.<name>`` is imported."""
    def get(package):
        return _assigned[name] if name in _assigned else __getattr__(name)

    def set_(package, value):
        if value is not sys.modules.get(f"autokd.{name}"):  # the import system binding the submodule: ignored
            _assigned[name] = value

    def delete(package):
        _assigned.pop(name, None)

    return property(get, set_, delete)


class _Package(types.ModuleType):
    # `search` and `train` are functions named like their modules. Importing `autokd.search`
    # (`import autokd.search` or `from autokd.search import ...`, anywhere) makes Python set the
    # package attribute `search` to the module; a property on the package's class outranks that
    # attribute, so the public name stays the function (the module is `sys.modules["autokd.search"]`).
    search = _function_named_like_its_module("search")
    train = _function_named_like_its_module("train")


sys.modules[__name__].__class__ = _Package

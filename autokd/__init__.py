"""autokd: AutoML for knowledge distillation.

Optuna proposes, Ray Tune runs, a Pareto front of accuracy versus size comes out, and the
chosen config is trained for production with the same loop::

    import autokd
    result = autokd.search("studies/digits.yaml", resume=True)   # trials + Pareto front
    autokd.build_report("studies/digits.yaml")                    # reports/digits/index.html
    autokd.export_config("studies/digits.yaml", "best.yaml", max_params=5000)
    run = autokd.train("best.yaml", epochs=60)                    # runs/<name>/student.pt
"""

from autokd.data import Dataset, load_data
from autokd.distill import FitResult, evaluate, fit
from autokd.errors import AutokdError, CheckpointError, ConfigError, DataError, NonFiniteLossError, StorageError
from autokd.losses import DistillationLoss
from autokd.pareto import first_dominators, hypervolume, knee_index, pareto_front_mask, pareto_ranks
from autokd.results import front_frame, robust_frame, trials_frame
# `search` and `train` are functions named like their modules: imported eagerly, or the first
# `import autokd.search` anywhere would rebind `autokd.search` to the module (Ray itself is imported lazily).
from autokd.search import SearchResult, search
from autokd.spec import StudySpec, TrainConfig, load_study, load_train_config
from autokd.stopping import ParetoRungs
from autokd.train import build_student, load_student, train
from autokd.zoo import ModelSize, build_model, model_size

__version__ = "0.1.0"


def __getattr__(name):
    # The report and export pull in matplotlib and the ONNX exporter: imported on first use.
    lazy = {"build_report": "autokd.report", "export_config": "autokd.export"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'autokd' has no attribute {name!r}")


__all__ = [
    "AutokdError", "CheckpointError", "ConfigError", "DataError", "Dataset", "DistillationLoss", "FitResult",
    "ModelSize", "NonFiniteLossError", "ParetoRungs", "SearchResult", "StorageError", "StudySpec", "TrainConfig",
    "build_model", "build_report", "build_student", "evaluate", "export_config", "first_dominators", "fit",
    "front_frame", "hypervolume", "knee_index", "load_data", "load_student", "load_study", "load_train_config",
    "model_size", "pareto_front_mask", "pareto_ranks", "robust_frame", "search", "train", "trials_frame",
]

"""Validated models of what users write: a training config and a study.

A *training config* says how to train one student (data, teachers, student, distillation,
schedule, seed). A *study* is a training config's defaults plus what to search and how
(search space, objectives, constraints, budget, sampler, resources, storage). Every model
refuses unknown keys, infinite or NaN floats and integers beyond int64; reading them from a
file, with one-line errors, is `config_files`; the rules for the paths they hold are `paths`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SerializerFunctionWrapHandler, field_validator,
                      model_serializer, model_validator)
from pydantic_core import PydanticCustomError

from autokd.archs import ARCH_ERROR, ATTENTION_FAMILIES, ArchDict, StudentArchDict
from autokd.paths import PATH_KEYS, STUDY_PATH_KEYS, absolute_path

SIZE_METRICS = ("params", "bytes_fp32", "bytes_fp16", "bytes_int8", "macs")
ACCURACY_METRIC = "val_accuracy"
INT8_ACCURACY_METRIC = "val_accuracy_int8"  # the trained student quantised (`quantize`), on val
ACCURACY_METRICS = (ACCURACY_METRIC, INT8_ACCURACY_METRIC)  # what the first objective may be
_CONSTRAINT = re.compile(r"^\s*(?P<metric>[a-z_0-9]+)\s*<=\s*(?P<limit>[0-9.eE+]+)\s*$")
INT64_MAX = 2**63 - 1
SEED_MAX = 2**32 - 1  # numpy's RandomState (Optuna's samplers) takes no more; torch and numpy's Generator agree
ECHO_LIMIT = 80  # characters of the user's input an error line repeats


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to about `limit` characters: an error line never echoes a whole hostile input."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters."""
    return cut(repr(value), limit)


def check_int64(value: Any) -> Any:
    """An int beyond int64 is refused (torch, numpy and the storage's integers stop there)."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise PydanticCustomError("int64", "must be an integer of at most 64 bits (|x| < 2**63), got {given}",
                                  {"given": shown(value)})
    return value


Seed = Annotated[int, Field(ge=0, le=SEED_MAX, description=f"an integer 0..{SEED_MAX}")]


def derived_seed(seed: int, offset: int) -> int:
    """A seed made from another (a trial's from the study's, a resumed sampler's, a paired one):
    wrapped into 0..SEED_MAX, so that a valid study seed never derives one the libraries refuse."""
    return (seed + offset) % (SEED_MAX + 1)


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored. No float is infinite or NaN,
    no integer beyond int64: what torch, numpy, Optuna and Ray would refuse later is refused here."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        return check_int64(value)


class UnlabeledSpec(_Strict):
    """Inputs without labels: distillation's KD and feature terms learn from them, CE never does.

    Exactly one of:

    - ``file``: a .npz whose ``x`` holds raw inputs shaped like the data's ([N, F], [N, H, W] or
      [N, C, H, W]; path relative to the study or config file);
    - ``keep_labels``: keep the labels of this many training samples (stratified by class, seeded by
      ``data.seed``) and use the rest of the training split as unlabeled.
    """

    file: str | None = Field(None, min_length=1)
    keep_labels: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> UnlabeledSpec:
        given = [key for key in ("file", "keep_labels") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of file (a .npz with x) or keep_labels (a number of training "
                             f"samples that keep their labels), got {' and '.join(given) or 'none'}")
        return self


class DataSpec(_Strict):
    name: Literal["digits", "fashion-mnist", "mnist1d", "file"] = "digits"
    data_dir: str | None = None
    path: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    seed: Seed = 0
    train_subset: int | None = Field(None, gt=0)
    mnist1d_samples: int = Field(4000, ge=100)
    unlabeled: UnlabeledSpec | None = None

    @model_validator(mode="after")
    def _file_needs_path(self) -> DataSpec:
        if self.name == "file" and not self.path:
            raise ValueError("data.name 'file' needs data.path (a .npz or .pt file with x and y)")
        return self

    @model_serializer(mode="wrap")
    def _without_unlabeled_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Data without unlabeled inputs dumps as it did before `unlabeled` existed: evaluation cache
        # keys (a hash of the dump) and stored trial configs stay the same.
        dumped = handler(self)
        if isinstance(dumped, dict) and self.unlabeled is None:
            dumped.pop("unlabeled", None)
        return dumped


class ScheduleSpec(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    # sgd's momentum; onecycle cycles it itself (torch's 1cycle policy: 0.85 to 0.95, beta1 for adamw)
    momentum: float = Field(0.9, ge=0, lt=1)
    lr_schedule: Literal["cosine", "onecycle", "constant"] = "cosine"


class TeacherSpec(_Strict):
    """A teacher, from exactly one source (paths relative to the study or config file):

    - ``arch``: a zoo architecture, trained here with ``schedule`` and ``seed``;
    - ``arch`` + ``checkpoint``: that architecture loaded from a state_dict;
    - ``torchscript``: a TorchScript file (``torch.jit.save``) that maps a batch of inputs to logits
      [batch, classes], and to (logits, features) through ``forward_features`` when it has one; it
      takes inputs normalised as autokd trains on them, or raw ones with ``inputs: raw``;
    - ``logits``: precomputed outputs, a .npz with ``train_logits`` [N_train, classes] (optional
      ``train_features`` [N_train, D], ``val_logits``, ``test_logits``), rows in the splits' order.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    arch: ArchDict | None = None
    checkpoint: str | None = None
    torchscript: str | None = Field(None, min_length=1)
    logits: str | None = Field(None, min_length=1)
    inputs: Literal["normalized", "raw"] = "normalized"  # what a torchscript teacher takes
    schedule: ScheduleSpec = Field(default_factory=lambda: ScheduleSpec(epochs=20))
    seed: Seed = 0

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if self.checkpoint and self.arch is None:
            raise ValueError("checkpoint needs arch: the zoo architecture whose state_dict it holds")
        given = [("checkpoint (with arch)" if self.checkpoint else "arch")] if self.arch is not None else []
        given += [key for key in ("torchscript", "logits") if getattr(self, key)]
        if len(given) != 1:
            raise ValueError("give exactly one of arch (a zoo teacher), checkpoint (with arch), torchscript "
                             f"(a file) or logits (a .npz of outputs), got {' and '.join(given) or 'none'}")
        if self.inputs == "raw" and not self.torchscript:
            raise ValueError("inputs: raw is for a torchscript teacher (others take what autokd trains on)")
        return self

    @property
    def kind(self) -> Literal["zoo", "checkpoint", "torchscript", "logits"]:
        return "torchscript" if self.torchscript else "logits" if self.logits else \
            "checkpoint" if self.checkpoint else "zoo"

    @property
    def file_key(self) -> str | None:
        """The key naming the file it comes from (checkpoint, torchscript or logits); None for a zoo teacher."""
        return self.kind if self.kind != "zoo" else None

    @property
    def file(self) -> str | None:
        """That file's path as written (relative to the study or config file), None for a zoo teacher."""
        return getattr(self, self.file_key) if self.file_key else None


class DistillSpec(_Strict):
    """Loss = w_ce * CE + w_kd * KD + w_feat * FEAT + w_at * AT; independent weights, no ambiguous alpha.

    AT is attention transfer (`autokd.losses.at_loss`): cnn/resnet students and teachers only.
    """

    teachers: list[str] | None = None  # subset of the study's teachers; None = all of them
    aggregation: Literal["mean_logits", "mean_probs", "confidence"] = "mean_logits"
    kind: Literal["kl", "mse", "dkd", "lskd", "dist"] = "kl"
    temperature: float = Field(4.0, gt=0)
    w_ce: float = Field(0.1, ge=0)
    w_kd: float = Field(0.9, ge=0)
    w_feat: float = Field(0.0, ge=0)
    w_at: float = Field(0.0, ge=0, allow_inf_nan=False)  # attention transfer (Zagoruyko & Komodakis, 2017)
    dkd_alpha: float = Field(1.0, ge=0)
    dkd_beta: float = Field(8.0, ge=0)
    dist_beta: float = Field(1.0, ge=0, allow_inf_nan=False)  # DIST: weight of the inter-class (per-sample) term
    dist_gamma: float = Field(1.0, ge=0, allow_inf_nan=False)  # DIST: weight of the intra-class (per-class) term

    @model_validator(mode="after")
    def _some_loss(self) -> DistillSpec:
        if self.w_ce + self.w_kd + self.w_feat + self.w_at <= 0:
            raise ValueError("w_ce + w_kd + w_feat + w_at must be > 0 (all loss weights are zero)")
        return self

    @property
    def uses_teachers(self) -> bool:
        """Does a term learn from the teachers (KD, FEAT or AT)?"""
        return self.w_kd > 0 or self.w_feat > 0 or self.w_at > 0

    @model_serializer(mode="wrap")
    def _without_zero_w_at(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A config without attention transfer dumps as it did before `w_at` existed: evaluation cache
        # keys (a hash of the dump), stored trial configs and resume checks stay the same.
        dumped = handler(self)
        if isinstance(dumped, dict) and self.w_at == 0:
            dumped.pop("w_at", None)
        return dumped


class QuantizeSpec(_Strict):
    """Post-training int8 quantisation of the trained student (`autokd.quantize`).

    With ``int8: true`` a search trial records ``val_accuracy_int8`` and `autokd train` writes
    student.int8.pt. cnn and resnet students are calibrated on the first ``calibration_samples``
    training samples; mlp students need no calibration (dynamic quantisation).
    """

    int8: bool = False
    calibration_samples: int = Field(1024, gt=0)


class _RunFields(_Strict):
    """What a training config and a study share: how one student is trained."""

    path_keys: ClassVar[tuple[str, ...]] = PATH_KEYS  # the keys that hold paths (`paths`)
    data: DataSpec = Field(default_factory=DataSpec)
    teachers: list[TeacherSpec] = Field(default_factory=list)
    student: StudentArchDict = Field(default_factory=lambda: {"family": "mlp", "depth": 1, "width": 32})
    distill: DistillSpec = Field(default_factory=DistillSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    augment: list[Literal["shift", "flip"]] = Field(default_factory=list)
    cache_dir: str = ".cache/autokd"
    # Intra-op CPU threads (None: torch's default). A search trial records its own, so that a
    # re-run, a test evaluation or `autokd train` of its config computes bit-identically on CPU.
    threads: int | None = Field(None, gt=0)
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)

    @model_serializer(mode="wrap")
    def _without_default_quantize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A config that does not quantise dumps as it did before `quantize` existed, so the cache
        # keys of earlier evaluations (a hash of the dump) and stored trial configs stay the same.
        dumped = handler(self)
        if isinstance(dumped, dict) and self.quantize == QuantizeSpec():
            dumped.pop("quantize", None)
        return dumped

    @model_validator(mode="after")
    def _teachers_consistent(self) -> _RunFields:
        names = [t.name for t in self.teachers]
        if len(set(names)) != len(names):
            raise ValueError(f"teacher names must be unique, got {names}")
        unknown = sorted(set(self.distill.teachers or []) - set(names))
        if unknown:
            raise ValueError(f"distill.teachers: unknown teacher(s) {unknown}; allowed: {names}")
        if self.distill.teachers == []:
            raise ValueError("distill.teachers: must name at least one teacher (or be omitted for all)")
        needs_teacher = self.distill.w_kd > 0 or self.distill.w_feat > 0
        if needs_teacher and not self.teachers:
            raise ValueError("distill.w_kd / w_feat > 0 need at least one entry in teachers")
        if self.distill.w_at > 0:
            reason = attention_refusal(self.student, self.selected_teachers())
            if reason:
                raise PydanticCustomError(ARCH_ERROR, "{message}", {"key": "distill.w_at", "message": reason})
        return self

    def selected_teachers(self) -> list[TeacherSpec]:
        chosen = self.distill.teachers
        return [t for t in self.teachers if chosen is None or t.name in chosen]


def attention_refusal(student: dict, teachers: list[TeacherSpec]) -> str | None:
    """Why attention transfer (w_at > 0) cannot run with this student and these teachers, or None.

    Both sides need convolutional stages (`archs.ATTENTION_FAMILIES`): a zoo cnn or resnet student,
    and teachers that are zoo cnn or resnet models (trained here or from a checkpoint). Whether their
    stages share a spatial size is checked once the input shape is known (`teacher_outputs.check_attention`).
    """
    if not teachers:
        return "attention transfer (w_at > 0) needs at least one teacher"
    if student.get("family") not in ATTENTION_FAMILIES:
        return (f"attention transfer (w_at > 0) needs a {' or '.join(ATTENTION_FAMILIES)} student (spatial "
                f"attention maps), got family {student.get('family')!r}; use w_at 0")
    for teacher in teachers:
        family = teacher.arch.get("family") if teacher.arch else teacher.kind
        if teacher.kind not in ("zoo", "checkpoint") or family not in ATTENTION_FAMILIES:
            return (f"attention transfer (w_at > 0) needs {' or '.join(ATTENTION_FAMILIES)} teachers (spatial "
                    f"attention maps), teacher {cut(teacher.name)!r} is {family!r}; use w_at 0 or leave it out "
                    "(distill.teachers)")
    return None


class TrainConfig(_RunFields):
    """One student's training, as `autokd export` writes it and `autokd train` reads it."""

    name: str = "run"
    provenance: dict[str, Any] | None = None


class Budget(_Strict):
    trials: int = Field(30, gt=0)
    time_limit_s: float | None = Field(None, gt=0)
    # Compute: no new trial starts once the trials have trained this many epochs in all
    # (early-stopped ones count what they trained); running trials finish.
    epochs: int | None = Field(None, gt=0)


class SamplerSpec(_Strict):
    name: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: Seed = 0


class Resources(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    concurrency: int = Field(2, gt=0)
    # Extra Ray resources per trial, e.g. {"fake_gpu": 0.25} to test GPU packing on CPU.
    custom: dict[str, float] = Field(default_factory=dict)


class EarlyStoppingSpec(_Strict):
    kind: Literal["none", "pareto", "asha"] = "none"
    grace_epochs: int = Field(1, gt=0)
    eta: int = Field(3, ge=2)


class RobustSpec(_Strict):
    top_k: int = Field(0, ge=0)
    seeds: int = Field(3, ge=2)


class SearchModeSpec(_Strict):
    """How the trial budget is spent: one flat search, or two levels (architectures, then distillation).

    Two levels: `level1_share` of the trials find the architecture front with cross-entropy
    only (proposals spread over log size); then each of up to `architectures` front
    architectures gets its CE-only and vanilla-KD baselines and tuned distillation configs,
    all trained on the same `seeds` (for `level2_epochs` epochs when set). A tuned (or vanilla) config
    takes its architecture's front place only when its paired mean gain over CE-only exceeds
    `margin_se` standard errors, and (`confirm`) stays positive on fresh seeds.
    """

    mode: Literal["auto", "two_level", "flat"] = "auto"  # auto: two levels when the space varies both
    level1_share: float = Field(0.4, gt=0, lt=1)
    architectures: int = Field(4, gt=0)
    seeds: int = Field(3, ge=2, le=10)
    margin_se: float = Field(2.0, ge=0)
    # Epochs of a level-2 trial (None: its architecture's). Distillation gains depend on the schedule's
    # length (Fashion-MNIST: +0.44 pt on val at 5 epochs was +0.25 on test at 15), so the distillation
    # is best chosen at the length production will train; level 1 only ranks architectures.
    level2_epochs: int | None = Field(None, gt=0)
    # Teachers less accurate (val) than the best CE-only student of level 1 are left out of level 2.
    weak_teachers: Literal["drop", "keep"] = "drop"
    # The last 2 trials per architecture retrain its distilled choice and CE-only on fresh seeds: the gain
    # that chose it is the best of many on the same seeds (winner's curse); the fresh one is unbiased,
    # and the choice keeps its place only when that gain is positive (`pairing.confirm`).
    confirm: bool = True
    # A level-2 trial trains its seeds as one batched model when its student can pack (`packing`):
    # the same runs (bit for bit on Intel CPUs), 1.6-2.6x faster for small MLPs (benchmarks/packing.py).
    pack_seeds: bool = True


class StudySpec(_RunFields):
    """A search: the run fields are the defaults every trial starts from."""

    path_keys: ClassVar[tuple[str, ...]] = STUDY_PATH_KEYS  # its search space file and storage too
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    search_space: str | dict[str, Any]
    objectives: list[str] = Field(default_factory=lambda: [ACCURACY_METRIC, "params"])
    constraints: list[str] = Field(default_factory=list)
    budget: Budget = Field(default_factory=Budget)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    resources: Resources = Field(default_factory=Resources)
    storage: str | None = None
    ray_address: str | None = None
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    robust: RobustSpec = Field(default_factory=RobustSpec)
    search: SearchModeSpec = Field(default_factory=SearchModeSpec)
    # The study file as given (error lines name it). Not user-set.
    source: str = Field("<study>", exclude=True)
    _folder: Path | None = PrivateAttr(None)  # the file's folder, absolute, as `load_study` found it

    @property
    def folder(self) -> Path:
        """The study file's folder, absolute: relative paths in the file, and in the configs stored in its
        study, are relative to it (the working directory for a study built in Python)."""
        if self._folder is not None:
            return self._folder
        return Path(os.path.abspath(Path(self.source).parent)) if self.source != "<study>" else Path.cwd()

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: list[str]) -> list[str]:
        if not objectives or objectives[0] not in ACCURACY_METRICS:
            raise ValueError(f"the first objective must be {ACCURACY_METRIC!r} or {INT8_ACCURACY_METRIC!r}, "
                             f"got {objectives}")
        sizes = objectives[1:]
        if not 1 <= len(sizes) <= 2 or any(s not in SIZE_METRICS for s in sizes):
            raise ValueError(f"after {objectives[0]!r} give one or two of {list(SIZE_METRICS)}, got {sizes}")
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"objectives must not repeat, got {objectives}")
        return objectives

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, constraints: list[str]) -> list[str]:
        for text in constraints:
            _constraint(text)  # evaluated now, as `size_limits` will before every trial: a bad one never gets there
        return constraints

    @model_validator(mode="after")
    def _int8_objective_quantizes(self) -> "StudySpec":
        # val_accuracy_int8 as the objective: every trial quantises (quantize.int8 follows unless set
        # false), and the search is flat: the two-level front choice pairs fp32 accuracies.
        if self.objectives[0] != INT8_ACCURACY_METRIC:
            return self
        if not self.quantize.int8:
            if "int8" in self.quantize.model_fields_set:
                raise ValueError(f"quantize.int8: must be true when the first objective is "
                                 f"{INT8_ACCURACY_METRIC!r}, got false")
            self.quantize = self.quantize.model_copy(update={"int8": True})
        if self.search.mode == "two_level":
            raise ValueError(f"search.mode: a study whose first objective is {INT8_ACCURACY_METRIC!r} searches "
                             "flat (the two-level front choice pairs fp32 accuracies); use flat or auto, "
                             "got 'two_level'")
        if self.search.mode == "auto":
            self.search = self.search.model_copy(update={"mode": "flat"})
        return self

    @model_validator(mode="after")
    def _stopping_follows_the_budget(self) -> "StudySpec":
        # With a compute budget and no stopping kind given, stop early: at equal compute Pareto-aware
        # stopping found the better front (benchmarks/early_stopping.py). A trial budget keeps
        # meaning full trainings unless the study asks otherwise.
        if self.budget.epochs is not None and "kind" not in self.early_stopping.model_fields_set:
            self.early_stopping = self.early_stopping.model_copy(update={"kind": "pareto"})
        return self

    def size_limits(self) -> dict[str, float]:
        """Constraints as {metric: upper bound}; checked before a trial trains."""
        limits: dict[str, float] = {}
        for text in self.constraints:
            metric, limit = _constraint(text)
            limits[metric] = min(limit, limits.get(metric, math.inf))
        return limits

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + ["minimize"] * (len(self.objectives) - 1)

    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        folder = self.folder if self.source != "<study>" else Path("studies")
        return f"sqlite:///{folder / (self.name + '.db')}"

    def resolve_path(self, path: str) -> Path:
        """`path` as the study file means it (`absolute_path`); `load_study` made the study's own paths absolute."""
        return Path(absolute_path(path, self.folder))

    def train_config(self) -> TrainConfig:
        """The study's default student and distillation settings as a training config."""
        run_fields = {name: getattr(self, name) for name in _RunFields.model_fields}
        return TrainConfig(name=f"{self.name}-default", **_plain(run_fields))


def _constraint(text: str) -> tuple[str, float]:
    """(metric, limit) of '<metric> <= <number>'; the limit a finite number > 0."""
    match = _CONSTRAINT.match(text)
    if not match or match["metric"] not in SIZE_METRICS:
        raise ValueError(f"expected '<metric> <= <number>' with metric in {list(SIZE_METRICS)}, got {shown(text)}")
    try:
        limit = float(match["limit"])
    except ValueError:
        raise ValueError(f"{shown(match['limit'])} is not a number, in {shown(text)}") from None
    if not math.isfinite(limit) or limit <= 0:
        raise ValueError(f"the limit must be a finite number > 0 (no model is smaller), got {shown(text)}")
    return match["metric"], limit


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v.model_dump() if isinstance(v, BaseModel) else
            [x.model_dump() if isinstance(x, BaseModel) else x for x in v] if isinstance(v, list) else v
            for k, v in fields.items()}

"""Validated models of what users write: a training config and a study.

A *training config* says how to train one student (data, teachers, student, distillation,
schedule, seed). A *study* is a training config's defaults plus what to search and how
(search space, objectives, constraints, budget, sampler, resources, storage).

Every error is one line that names the file and the dotted key::

    studies/x.yaml: distill.temperature: must be > 0, got -1
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, TypeVar

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, SerializerFunctionWrapHandler, ValidationError,
                      field_validator, model_serializer, model_validator)
from pydantic_core import PydanticCustomError

from autokd.archs import ARCH_ERROR, ATTENTION_FAMILIES, ArchDict, StudentArchDict, resolve_code_path
from autokd.errors import ConfigError

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
    stages share a spatial size is checked once the input shape is known (`teachers.check_attention`).
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
    all trained on the same `seeds`. A tuned (or vanilla) config takes its architecture's front
    place only when its paired mean gain over CE-only exceeds `margin_se` standard errors.
    """

    mode: Literal["auto", "two_level", "flat"] = "auto"  # auto: two levels when the space varies both
    level1_share: float = Field(0.4, gt=0, lt=1)
    architectures: int = Field(4, gt=0)
    seeds: int = Field(3, ge=2, le=10)
    margin_se: float = Field(2.0, ge=0)
    # Teachers less accurate (val) than the best CE-only student of level 1 are left out of level 2.
    weak_teachers: Literal["drop", "keep"] = "drop"
    # A level-2 trial trains its seeds as one batched model when its student can pack (`packing`):
    # the same runs bit for bit on CPU, 1.4-2x faster for small MLPs (benchmarks/packing.py).
    pack_seeds: bool = True


class StudySpec(_RunFields):
    """A search: the run fields are the defaults every trial starts from."""

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


# ---------------------------------------------------------------------------------------------
# Reading files

MAX_YAML_BYTES = 4 * 2**20  # a study, space or training config is a few kB
MAX_YAML_NODES = 100_000  # values after expanding every alias; a study has a few hundred
MAX_YAML_DEPTH = 50  # nesting; a study needs five


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


# ---------------------------------------------------------------------------------------------
# Paths: relative to the file that holds them

# Every path a training config holds, as dotted keys ("*": each item of a list); a study adds its
# search space file and its storage (the file of an SQLite or journal storage). A relative path in
# a file is relative to the file's folder; `~` and absolute paths are taken as given. The loaders
# make them absolute once (`resolve_paths`); what autokd stores in a study and writes to a file
# holds them relative to that study's or file's folder again (`relative_paths`), so that it names
# no path of the machine or of the working directory it was written from.
PATH_KEYS = ("data.path", "data.data_dir", "data.unlabeled.file", "teachers.*.checkpoint", "teachers.*.torchscript",
             "teachers.*.logits", "student.path", "cache_dir")
STUDY_PATH_KEYS = (*PATH_KEYS, "search_space", "storage")
_Config = TypeVar("_Config", bound="_RunFields")


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


def _map_paths(config: _RunFields, change: Callable[[str], str]) -> None:
    """Replace, in place, every path in `config` (`PATH_KEYS`, a study's `STUDY_PATH_KEYS`) by `change(path)`."""
    for key in STUDY_PATH_KEYS if isinstance(config, StudySpec) else PATH_KEYS:
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


def _relative_to_file(spec: _RunFields, path: str | Path) -> None:
    """Paths written in a config file are relative to that file's folder: made absolute here, once."""
    folder = Path(os.path.abspath(Path(path).parent))
    _map_paths(spec, lambda value: absolute_path(value, folder))
    if isinstance(spec, StudySpec):
        spec._folder = folder
    spec.student = resolve_code_path(spec.student, Path(path).parent)  # custom: the factory's folder, absolute


def load_study(path: str | Path) -> StudySpec:
    document = read_yaml(path)
    if "search_space" not in document:
        raise ConfigError(f"{path}: search_space: required key is missing (is this a training config? "
                          "use `autokd train`)")
    document = {**document, "source": str(path)}
    spec = _validate(StudySpec, document, path)
    _relative_to_file(spec, path)
    return spec


def load_train_config(path: str | Path) -> TrainConfig:
    """A training config file, or a study file (its default student is trained)."""
    document = read_yaml(path)
    if "search_space" in document:
        return load_study(path).train_config()
    config = _validate(TrainConfig, document, path)
    _relative_to_file(config, path)
    return config


def train_config_from_dict(document: dict[str, Any], source: str = "<config>") -> TrainConfig:
    return _validate(TrainConfig, document, source)

"""Distillation losses, each weighted on its own: total = w_ce*CE + w_kd*KD + w_feat*FEAT + w_at*AT.

No single "alpha" trades hard against soft targets: every term has its own weight, so a
config reads the same whatever KD kind it uses.

- KD kinds: ``kl`` (Hinton, KL at temperature T scaled by T²), ``mse`` (on logits),
  ``dkd`` (Decoupled KD, Zhao et al., CVPR 2022), ``lskd`` (KL of per-sample standardized
  logits, Sun et al., CVPR 2024), ``dist`` (Pearson-correlation relations, Huang et al.,
  NeurIPS 2022).
- Several teachers are first combined into one set of logits by `ensemble_logits`, so every
  KD kind consumes the same thing (``lskd`` standardizes the combined logits).
- The feature term is a FitNets hint: a learned Linear maps the student's penultimate
  features to the (concatenated) teachers' features, and MSE compares them.
- The attention term is attention transfer (Zagoruyko & Komodakis, ICLR 2017) between the
  spatial attention maps of matched convolutional stages (`attention_map`, `matched_stages`,
  `at_loss`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AGGREGATIONS", "KINDS", "DistillationLoss", "at_loss", "attention_map", "ensemble_logits", "kd_dist",
           "kd_dkd", "kd_kl", "kd_lskd", "kd_mse", "matched_stages"]

KINDS = ("dist", "dkd", "kl", "lskd", "mse")
AGGREGATIONS = ("confidence", "mean_logits", "mean_probs")

# Subtracted from the target logit so that it drops out of the non-target softmax (as in DKD's code).
_MASK_OFFSET = 1000.0
# Added to the per-sample standard deviation (as in LSKD's code): constant logits standardize to 0, not 0/0.
_STANDARDIZE_EPS = 1e-7
# Floor of the product of norms in the Pearson correlation, so that a constant vector correlates 0, not 0/0.
# DIST's code adds 1e-8 instead; with many classes a class's probabilities across a batch can spread
# by ~1e-4, where an added 1e-8 would pull the correlation towards 0 even for identical predictions.
_PEARSON_FLOOR = 1e-8


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softened distributions, batch mean, times T² (Hinton et al.)."""
    # log_target keeps the value of KL(softmax(t/T) || softmax(s/T)) without taking log of a 0 probability.
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def kd_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits."""
    return F.mse_loss(student_logits, teacher_logits)


def kd_dkd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
           temperature: float, alpha: float, beta: float) -> torch.Tensor:
    """Decoupled KD: (alpha * TCKD + beta * NCKD) * T², batch mean (Zhao et al., CVPR 2022).

    TCKD is the KL between the binary (target, non-target) distributions at T; NCKD the KL
    between the distributions over the non-target classes only.
    """
    target_mask = F.one_hot(targets, student_logits.shape[-1]).to(student_logits.dtype)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)
    tckd = _batchmean_kl(_binary_log_probs(student_log_probs, targets),
                         _binary_log_probs(teacher_log_probs, targets))
    nckd = _batchmean_kl(F.log_softmax(student_logits / temperature - _MASK_OFFSET * target_mask, dim=-1),
                         F.log_softmax(teacher_logits / temperature - _MASK_OFFSET * target_mask, dim=-1))
    return (alpha * tckd + beta * nckd) * temperature ** 2


def kd_lskd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``kd_kl`` of per-sample standardized logits: logit standardization (Sun et al., CVPR 2024).

    Z(z) = (z - mean(z)) / (std(z) + 1e-7), mean and std over the classes of each sample, std
    with Bessel's correction (torch.std, as in the authors' code). The loss is
    T² * mean over samples of KL(softmax(Z(t) / T) || softmax(Z(s) / T)).
    The student has to match the teacher's logits only up to a per-sample shift and positive scale.
    """
    return kd_kl(_standardized(student_logits), _standardized(teacher_logits), temperature)


def _standardized(logits: torch.Tensor) -> torch.Tensor:
    centered = logits - logits.mean(dim=-1, keepdim=True)
    return centered / (logits.std(dim=-1, keepdim=True) + _STANDARDIZE_EPS)


def kd_dist(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, beta: float,
            gamma: float) -> torch.Tensor:
    """DIST: (beta * inter + gamma * intra) * T² (Huang et al., NeurIPS 2022, tau² as in the authors' code).

    With P_s = softmax(s / T), P_t = softmax(t / T) of shape [B, C] and d(u, v) = 1 - pearson(u, v):
    inter = mean over samples b of d(P_s[b, :], P_t[b, :])  (each sample's ranking of the classes);
    intra = mean over classes c of d(P_s[:, c], P_t[:, c])  (each class's ranking of the samples).
    pearson(u, v) = <u - mean(u), v - mean(v)> / max(|u - mean(u)| * |v - mean(v)|, 1e-8).
    A batch of one sample has no intra-class relation: that term is then gamma * T², with no gradient.
    """
    student_probs = F.softmax(student_logits / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
    inter = (1 - _pearson(student_probs, teacher_probs, dim=-1)).mean()
    intra = (1 - _pearson(student_probs, teacher_probs, dim=0)).mean()
    return (beta * inter + gamma * intra) * temperature ** 2


def _pearson(u: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """Pearson correlation of u and v along `dim`: one value per slice."""
    u_centered = u - u.mean(dim=dim, keepdim=True)
    v_centered = v - v.mean(dim=dim, keepdim=True)
    norms = u_centered.norm(dim=dim) * v_centered.norm(dim=dim)
    return (u_centered * v_centered).sum(dim=dim) / norms.clamp_min(_PEARSON_FLOOR)


def _binary_log_probs(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, 2]: log p(target) and log p(any other class), computed in log space (no log(0))."""
    log_p_target = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    is_target = F.one_hot(targets, log_probs.shape[-1]).bool()
    log_p_others = torch.logsumexp(log_probs.masked_fill(is_target, -math.inf), dim=-1)
    return torch.stack([log_p_target, log_p_others], dim=-1)


def _batchmean_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)


def attention_map(activation: torch.Tensor, p: int = 2) -> torch.Tensor:
    """The spatial attention map of a stage's activation A [B, C, *spatial], as in the paper:

        Q(b) = vec( sum over channels c of |A[b, c]|^p )      (p = 2: the paper's F_sum^2)
        q(b) = Q(b) / ||Q(b)||_2                              -> [B, prod(spatial)]

    A map that is all zeros (every activation 0) stays zeros (the norm is floored at 1e-12).

        >>> attention_map(torch.tensor([[[[1.0, -2.0]], [[0.0, 1.0]]]]))   # [B=1, C=2, 1, 2]: Q = [1, 5]
        tensor([[0.1961, 0.9806]])
    """
    return F.normalize(activation.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def matched_stages(student_sizes: Sequence[Sequence[int]],
                   teacher_sizes: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(student stage, teacher stage) pairs whose attention maps attention transfer compares.

    The rule: one pair per spatial size that a student stage and a teacher stage both have, made of
    the deepest student stage and the deepest teacher stage of that size; sizes of a single position
    (1 x 1) are skipped, since their normalised map is always 1. No map is interpolated. Pairs come
    shallowest first.

        >>> matched_stages([(8, 8), (4, 4), (2, 2)], [(8, 8), (8, 8), (4, 4), (1, 1)])
        [(0, 1), (1, 2)]
    """
    deepest_teacher = {tuple(size): index for index, size in enumerate(teacher_sizes) if math.prod(size) > 1}
    deepest_student = {tuple(size): index for index, size in enumerate(student_sizes) if math.prod(size) > 1}
    return sorted((student, deepest_teacher[size]) for size, student in deepest_student.items()
                  if size in deepest_teacher)


def at_loss(student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention transfer between matched maps (each [B, P], normalised by `attention_map`):

        AT = 1/2 * sum over pairs j of  mean over the batch of  || q_s^j(b) - q_t^j(b) ||_2

    This is the paper's term (its eq. 2) with beta taken out: the loss's weight w_at plays beta,
    so w_at * AT = beta/2 * sum_j || ... ||_p with p = 2. (The authors' code instead uses the mean
    over batch and positions of the squared difference, with beta = 1000; we keep the paper's norm.)
    """
    if not student_maps or len(student_maps) != len(teacher_maps):
        raise ValueError(f"at_loss needs one teacher map per student map (at least one), got "
                         f"{len(student_maps)} and {len(teacher_maps)}")
    return 0.5 * sum((s - t.detach()).norm(dim=1).mean() for s, t in zip(student_maps, teacher_maps))


def ensemble_logits(teacher_logits: torch.Tensor, targets: torch.Tensor | None, method: str,
                    temperature: float) -> torch.Tensor:
    """Combine stacked teacher logits [T, B, C] into one set of logits [B, C].

    - ``mean_logits``: the mean of the logits.
    - ``mean_probs``: ``T * log(mean_t softmax(z_t / T))``, so that softmax(result / T) is the
      mean of the teachers' softened probabilities.
    - ``confidence``: like ``mean_probs`` but teacher t weighs ``p_t(y) / sum_t p_t(y)`` per sample,
      with ``p_t(y)`` its probability (at T=1) of the true label ``targets``.

    A single teacher's logits are returned as they are, whatever the method.

        >>> two_teachers = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])   # [T=2, B=1, C=2]
        >>> ensemble_logits(two_teachers, None, "mean_logits", temperature=1.0)
        tensor([[1., 1.]])
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {method!r}")
    if teacher_logits.dim() != 3:
        raise ValueError(f"teacher_logits must be [teachers, batch, classes], got shape {tuple(teacher_logits.shape)}")
    if teacher_logits.shape[0] == 1:
        return teacher_logits[0]
    if method == "mean_logits":
        return teacher_logits.mean(dim=0)
    # Mixtures of probabilities are formed in log space: log(sum_t w_t p_t) = logsumexp(log w_t + log p_t).
    log_probs = F.log_softmax(teacher_logits / temperature, dim=-1)  # [T, B, C]
    if method == "mean_probs":
        return temperature * (torch.logsumexp(log_probs, dim=0) - math.log(teacher_logits.shape[0]))
    log_weights = _confidence_log_weights(teacher_logits, targets)  # [T, B]
    return temperature * torch.logsumexp(log_weights.unsqueeze(-1) + log_probs, dim=0)


def _confidence_log_weights(teacher_logits: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """[T, B] log of p_t(y) / sum_t p_t(y); a softmax over teachers, so it stays finite when p_t(y) underflows."""
    if targets is None:
        raise ValueError("aggregation 'confidence' needs the true labels (targets), got None")
    true_label = targets.reshape(1, -1, 1).expand(teacher_logits.shape[0], -1, 1)
    log_p_true = F.log_softmax(teacher_logits, dim=-1).gather(-1, true_label).squeeze(-1)
    return F.log_softmax(log_p_true, dim=0)


class DistillationLoss(nn.Module):
    """total = w_ce * CE(student, labels) + w_kd * KD(student, teachers) + w_feat * FEAT + w_at * AT.

    AT (``w_at > 0``) is `at_loss` between the student's stage outputs (`ZooModel.forward_stages`)
    and each teacher's cached attention maps, stages paired by `matched_stages`, averaged over
    the teachers.

    Terms with weight 0 are not computed (and need no teacher inputs). With ``w_feat > 0``
    the loss owns ``regressor``, a Linear from student to teacher feature space that trains
    with the student (optimise ``loss.parameters()`` too) but is not part of the student.

        >>> loss_fn = DistillationLoss(w_ce=0.5, w_kd=0.5, kind="kl", temperature=2.0)
        >>> student, labels = torch.zeros(4, 10), torch.zeros(4, dtype=torch.long)
        >>> teachers = torch.zeros(2, 4, 10)                     # [teachers, batch, classes]
        >>> total, parts = loss_fn(student, labels, teacher_logits=teachers)
        >>> sorted(parts), round(parts["kd"], 6)
        (['ce', 'kd'], 0.0)
    """

    def __init__(self, *, w_ce: float = 1.0, w_kd: float = 0.0, w_feat: float = 0.0, w_at: float = 0.0,
                 kind: str = "kl",
                 temperature: float = 4.0, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
                 dist_beta: float = 1.0, dist_gamma: float = 1.0, aggregation: str = "mean_logits",
                 student_feature_dim: int | None = None, teacher_feature_dim: int | None = None):
        super().__init__()
        for name, value in {"w_ce": w_ce, "w_kd": w_kd, "w_feat": w_feat, "w_at": w_at, "dkd_alpha": dkd_alpha,
                            "dkd_beta": dkd_beta, "dist_beta": dist_beta, "dist_gamma": dist_gamma}.items():
            _check_number(name, value, ">= 0 and finite", lambda v: 0 <= v < math.inf)
        if w_ce + w_kd + w_feat + w_at <= 0:
            raise ValueError(f"w_ce + w_kd + w_feat + w_at must be > 0, got {w_ce} + {w_kd} + {w_feat} + {w_at}")
        _check_number("temperature", temperature, "> 0", lambda v: 0 < v < math.inf)
        _check_choice("kind", kind, KINDS)
        _check_choice("aggregation", aggregation, AGGREGATIONS)
        self.w_ce, self.w_kd, self.w_feat, self.w_at = float(w_ce), float(w_kd), float(w_feat), float(w_at)
        self.kind, self.aggregation, self.temperature = kind, aggregation, float(temperature)
        self.dkd_alpha, self.dkd_beta = float(dkd_alpha), float(dkd_beta)
        self.dist_beta, self.dist_gamma = float(dist_beta), float(dist_gamma)
        self.regressor: nn.Linear | None = None
        if self.w_feat > 0:
            for name, value in {"student_feature_dim": student_feature_dim,
                                "teacher_feature_dim": teacher_feature_dim}.items():
                if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                    raise ValueError(f"{name} must be an integer >= 1 when w_feat > 0, got {value!r}")
            self.regressor = nn.Linear(student_feature_dim, teacher_feature_dim)

    @classmethod
    def from_config(cls, cfg: Any, student_feature_dim: int | None = None,
                    teacher_feature_dim: int | None = None) -> DistillationLoss:
        """From a training config (its ``distill`` section), the section itself, or a plain dict."""
        section = cfg.get("distill", cfg) if isinstance(cfg, dict) else getattr(cfg, "distill", cfg)
        names = ("w_ce", "w_kd", "w_feat", "w_at", "kind", "temperature", "dkd_alpha", "dkd_beta", "dist_beta",
                 "dist_gamma", "aggregation")
        if isinstance(section, dict):
            given = {name: section[name] for name in names if name in section}
        else:
            given = {name: getattr(section, name) for name in names if hasattr(section, name)}
        return cls(**given, student_feature_dim=student_feature_dim, teacher_feature_dim=teacher_feature_dim)

    def forward(self, student_logits: torch.Tensor, targets: torch.Tensor,
                teacher_logits: torch.Tensor | None = None, student_features: torch.Tensor | None = None,
                teacher_features: torch.Tensor | None = None,
                labeled: torch.Tensor | None = None, student_stages: Sequence[torch.Tensor] | None = None,
                teacher_maps: Sequence[dict[tuple[int, ...], torch.Tensor]] | None = None,
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """(total loss, {term: value} for the computed terms only, as floats for logging).

        With ``w_at > 0``: `student_stages` are the student's stage outputs [B, C, *spatial], and
        `teacher_maps` one dict per teacher, {spatial size: attention maps [B, P]}.

        `labeled` (bool [B], None: all rows) marks the rows whose `targets` are labels. CE is the mean
        over those rows (0 when none); KD and FEAT use every row, and where KD needs a class (``dkd``,
        ``confidence``) an unlabeled row takes the teachers' mean-logit argmax.
        """
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if labeled is not None:
            if teacher_logits is not None:  # unlabeled rows: the teachers' class, never their given target
                targets = torch.where(labeled, targets, teacher_logits.detach().mean(dim=0).argmax(dim=-1))
            if self.w_ce > 0:
                ce = (F.cross_entropy(student_logits[labeled], targets[labeled]) if bool(labeled.any())
                      else student_logits.new_zeros(()))
                terms["ce"] = (self.w_ce, ce)
        elif self.w_ce > 0:
            terms["ce"] = (self.w_ce, F.cross_entropy(student_logits, targets))
        if self.w_kd > 0:
            terms["kd"] = (self.w_kd, self._kd(student_logits, targets, _required(teacher_logits, "teacher_logits")))
        if self.w_feat > 0:
            terms["feat"] = (self.w_feat, self._feat(_required(student_features, "student_features"),
                                                     _required(teacher_features, "teacher_features")))
        if self.w_at > 0:
            terms["at"] = (self.w_at, self._at(_required(student_stages, "student_stages"),
                                               _required(teacher_maps, "teacher_maps")))
        total = sum(weight * value for weight, value in terms.values())
        return total, {name: value.detach().item() for name, (_, value) in terms.items()}

    def _kd(self, student_logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        # The teachers are fixed targets: no gradient flows into them.
        teacher = ensemble_logits(teacher_logits.detach(), targets, self.aggregation, self.temperature)
        if self.kind == "kl":
            return kd_kl(student_logits, teacher, self.temperature)
        if self.kind == "lskd":
            return kd_lskd(student_logits, teacher, self.temperature)
        if self.kind == "mse":
            return kd_mse(student_logits, teacher)
        if self.kind == "dist":
            return kd_dist(student_logits, teacher, self.temperature, self.dist_beta, self.dist_gamma)
        return kd_dkd(student_logits, teacher, targets, self.temperature, self.dkd_alpha, self.dkd_beta)

    def _feat(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.regressor(student_features), teacher_features.detach())

    def _at(self, student_stages: Sequence[torch.Tensor],
            teacher_maps: Sequence[dict[tuple[int, ...], torch.Tensor]]) -> torch.Tensor:
        sizes = [tuple(stage.shape[2:]) for stage in student_stages]
        student_maps: dict[int, torch.Tensor] = {}  # a stage matched by several teachers is mapped once
        per_teacher = []
        for index, maps in enumerate(teacher_maps):
            teacher_sizes = list(maps)
            pairs = matched_stages(sizes, teacher_sizes)
            if not pairs:
                raise ValueError(f"attention transfer: no student stage {sizes} has the spatial size of a stage "
                                 f"of teacher {index} {teacher_sizes}")
            for stage, _ in pairs:
                if stage not in student_maps:
                    student_maps[stage] = attention_map(student_stages[stage].float())
            per_teacher.append(at_loss([student_maps[s] for s, _ in pairs],
                                       [maps[teacher_sizes[t]] for _, t in pairs]))
        return sum(per_teacher) / len(per_teacher)

    def extra_repr(self) -> str:
        return (f"w_ce={self.w_ce}, w_kd={self.w_kd}, w_feat={self.w_feat}, w_at={self.w_at}, kind={self.kind!r}, "
                f"temperature={self.temperature}, aggregation={self.aggregation!r}")


def _check_number(name: str, value: Any, expected: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{name} must be a number {expected}, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _required(tensor: torch.Tensor | None, name: str) -> torch.Tensor:
    if tensor is None:
        raise ValueError(f"{name} is required when its loss weight is > 0, got None")
    return tensor

"""Distillation losses against values computed by hand (math.exp / math.log) on 2x3 and 3x3 tensors;
the attention-transfer term against maps computed in plain Python from tiny stages;
the lskd and dist kinds also from a study file and through one epoch of `fit`."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml

from autokd import losses
from autokd.config_files import load_study
from autokd.data import load_data
from autokd.distill import fit
from autokd.errors import ConfigError
from autokd.losses import (DistillationLoss, at_loss, attention_map, ensemble_logits, kd_dist, kd_dkd, kd_kl, kd_lskd,
                           kd_mse, matched_stages)
from autokd.spec import DataSpec, DistillSpec, ScheduleSpec
from autokd.zoo import build_model

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
TEACHER = [[2.0, 1.0, 0.0], [0.5, 0.5, 1.0]]
SECOND_TEACHER = [[0.0, 3.0, -1.0], [1.0, 2.0, 0.0]]
TARGETS = [1, 2]
# DIST's intra-class term correlates each class across the batch; with two samples every such
# correlation is +1 or -1, so its checks use a third sample.
DIST_STUDENT = STUDENT + [[0.5, 1.5, -0.5]]
DIST_TEACHER = TEACHER + [[-1.0, 0.0, 2.0]]


def _tensor(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _softmax(row, temperature=1.0):
    exps = [math.exp(z / temperature) for z in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    """KL(p || q) = sum_i p_i * log(p_i / q_i)."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def _close(tensor, value):
    return torch.allclose(torch.as_tensor(tensor, dtype=torch.float64), torch.as_tensor(value, dtype=torch.float64),
                          rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------- single KD losses


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_kl_matches_hand_computation_with_t_squared(temperature):
    per_row = [_kl(_softmax(t, temperature), _softmax(s, temperature)) for s, t in zip(STUDENT, TEACHER)]
    expected = sum(per_row) / 2 * temperature ** 2  # batchmean, then Hinton's T² factor
    assert _close(kd_kl(_tensor(STUDENT), _tensor(TEACHER), temperature), expected)


def test_kd_kl_is_zero_when_student_equals_teacher():
    assert _close(kd_kl(_tensor(TEACHER), _tensor(TEACHER), 3.0), 0.0)


def test_kd_mse_matches_hand_computation():
    squared = [(s - t) ** 2 for s_row, t_row in zip(STUDENT, TEACHER) for s, t in zip(s_row, t_row)]
    assert _close(kd_mse(_tensor(STUDENT), _tensor(TEACHER)), sum(squared) / 6)


def _hand_dkd(temperature, alpha, beta, student=STUDENT, teacher=TEACHER, targets=TARGETS):
    tckd, nckd = [], []
    for s, t, y in zip(student, teacher, targets):
        p_s, p_t = _softmax(s, temperature), _softmax(t, temperature)
        # TCKD: binary distributions (target, all other classes)
        tckd.append(_kl([p_t[y], 1 - p_t[y]], [p_s[y], 1 - p_s[y]]))
        # NCKD: distributions over the non-target classes, renormalised
        others_s = [p for i, p in enumerate(p_s) if i != y]
        others_t = [p for i, p in enumerate(p_t) if i != y]
        nckd.append(_kl([p / sum(others_t) for p in others_t], [p / sum(others_s) for p in others_s]))
    return (alpha * sum(tckd) + beta * sum(nckd)) / len(tckd) * temperature ** 2  # batchmean, then T²


@pytest.mark.parametrize(("temperature", "alpha", "beta"), [(1.0, 1.0, 8.0), (2.0, 0.5, 2.0), (4.0, 0.0, 1.0)])
def test_kd_dkd_matches_hand_computation(temperature, alpha, beta):
    loss = kd_dkd(_tensor(STUDENT), _tensor(TEACHER), torch.tensor(TARGETS), temperature, alpha, beta)
    assert torch.allclose(loss, torch.tensor(_hand_dkd(temperature, alpha, beta), dtype=torch.float64), rtol=1e-6)


def test_kd_dkd_of_three_samples_whose_labels_miss_the_last_class_matches_hand_computation():
    """Three samples (a batch mean over 3, not 2) and labels 0, 1, 0: the one-hot mask still spans all
    three classes, although no label is the last one."""
    targets = [0, 1, 0]
    loss = kd_dkd(_tensor(DIST_STUDENT), _tensor(DIST_TEACHER), torch.tensor(targets), 2.0, 0.5, 2.0)
    assert _close(loss, _hand_dkd(2.0, 0.5, 2.0, DIST_STUDENT, DIST_TEACHER, targets))


def test_kd_dkd_warns_about_nothing_and_keeps_the_logits_dtype():
    """Every softmax names its class dimension (an implicit one is deprecated, with a warning), and the
    loss of bfloat16 logits is bfloat16, as its terms are (the target mask takes the logits' dtype)."""
    import warnings

    for dtype, rtol in ((torch.float32, 1e-5), (torch.float64, 1e-9), (torch.bfloat16, 0.1)):  # bf16: 8-bit mantissa
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = kd_dkd(_tensor(STUDENT).to(dtype), _tensor(TEACHER).to(dtype), torch.tensor(TARGETS), 2.0, 1.0, 8.0)
        assert loss.dtype == dtype
        assert torch.allclose(loss.double(), torch.tensor(_hand_dkd(2.0, 1.0, 8.0), dtype=torch.float64), rtol=rtol)


def test_kd_dkd_stays_finite_for_confident_logits():
    confident = torch.tensor([[60.0, -60.0, 0.0]])
    loss = kd_dkd(confident, -confident, torch.tensor([0]), 1.0, 1.0, 8.0)
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------- logit standardization (LSKD)


def _hand_standardized(row):
    """(z - mean) / (sample std + 1e-7), the sample std with K - 1 in the denominator."""
    mean = sum(row) / len(row)
    std = math.sqrt(sum((z - mean) ** 2 for z in row) / (len(row) - 1))
    return [(z - mean) / (std + 1e-7) for z in row]


def _hand_lskd(student, teacher, temperature):
    per_row = [_kl(_softmax(_hand_standardized(t), temperature), _softmax(_hand_standardized(s), temperature))
               for s, t in zip(student, teacher)]
    return sum(per_row) / len(per_row) * temperature ** 2


def test_kd_lskd_centres_each_sample_on_its_own_mean_in_float32():
    """A sample far from 0 (2**20, exact in float32) beside one near 0: each is centred on its own mean
    (exact in float32, the values being that close), so the float32 loss is the hand one of the
    samples without the offset; centring on another mean would round away the small sample's digits."""
    student, teacher = [[0.1, 0.7, -0.4], [0.0, 0.5, -0.25]], [[0.3, -0.2, 0.9], [1.5, 0.25, -1.0]]
    offset = torch.tensor([[0.0], [2.0 ** 20]])
    loss = kd_lskd(torch.tensor(student) + offset, torch.tensor(teacher), 2.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_hand_lskd(student, teacher, 2.0), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_lskd_matches_hand_computation(temperature):
    # Row 0 of STUDENT: mean 7/6, sample std sqrt(7/12) = 0.7638; standardized [-0.218, 1.091, -0.873].
    assert _hand_standardized(STUDENT[0]) == pytest.approx([-0.2182, 1.0911, -0.8729], abs=1e-4)
    loss = kd_lskd(_tensor(STUDENT), _tensor(TEACHER), temperature)
    assert _close(loss, _hand_lskd(STUDENT, TEACHER, temperature))


def test_kd_lskd_ignores_a_per_sample_shift_and_positive_scale_of_the_student():
    scale, shift = _tensor([[3.0], [0.25]]), _tensor([[-5.0], [10.0]])
    rescaled = _tensor(STUDENT) * scale + shift
    assert torch.allclose(kd_lskd(rescaled, _tensor(TEACHER), 2.0), kd_lskd(_tensor(STUDENT), _tensor(TEACHER), 2.0),
                          rtol=1e-6)
    # ... so a student that is a shifted, scaled teacher has nothing left to learn (plain KL does).
    shifted_teacher = _tensor(TEACHER) * scale + shift
    assert kd_lskd(shifted_teacher, _tensor(TEACHER), 2.0).item() == pytest.approx(0.0, abs=1e-9)
    assert kd_kl(shifted_teacher, _tensor(TEACHER), 2.0).item() > 0.1


# --------------------------------------------------------------------------- DIST


def _hand_pearson(u, v):
    mean_u, mean_v = sum(u) / len(u), sum(v) / len(v)
    covariance = sum((a - mean_u) * (b - mean_v) for a, b in zip(u, v))
    norm_u = math.sqrt(sum((a - mean_u) ** 2 for a in u))
    norm_v = math.sqrt(sum((b - mean_v) ** 2 for b in v))
    return covariance / (norm_u * norm_v)


def _hand_dist(student, teacher_probs, temperature, beta, gamma):
    """beta * inter + gamma * intra, times T²; teacher_probs are the teacher's probabilities at T."""
    student_probs = [_softmax(s, temperature) for s in student]
    inter = [1 - _hand_pearson(p_s, p_t) for p_s, p_t in zip(student_probs, teacher_probs)]   # rows: samples
    intra = [1 - _hand_pearson(c_s, c_t) for c_s, c_t in zip(zip(*student_probs), zip(*teacher_probs))]  # classes
    return (beta * sum(inter) / len(inter) + gamma * sum(intra) / len(intra)) * temperature ** 2


@pytest.mark.parametrize(("temperature", "beta", "gamma"), [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0), (4.0, 1.0, 0.0)])
def test_kd_dist_matches_hand_computation(temperature, beta, gamma):
    teacher_probs = [_softmax(t, temperature) for t in DIST_TEACHER]
    loss = kd_dist(_tensor(DIST_STUDENT), _tensor(DIST_TEACHER), temperature, beta, gamma)
    assert _close(loss, _hand_dist(DIST_STUDENT, teacher_probs, temperature, beta, gamma))


def test_kd_dist_warns_about_nothing():
    """Both softmaxes name their class dimension (an implicit one is deprecated, with a warning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = kd_dist(_tensor(DIST_STUDENT), _tensor(DIST_TEACHER), 2.0, 1.0, 1.0)
    assert _close(loss, _hand_dist(DIST_STUDENT, [_softmax(t, 2.0) for t in DIST_TEACHER], 2.0, 1.0, 1.0))


def test_kd_dist_is_zero_when_student_equals_teacher():
    for temperature in (1.0, 4.0):
        loss = kd_dist(_tensor(DIST_TEACHER), _tensor(DIST_TEACHER), temperature, 1.0, 1.0)
        assert loss.item() == pytest.approx(0.0, abs=1e-12)
    # ... and positive (at most 2 * (beta + gamma) * T²) otherwise.
    assert 0 < kd_dist(_tensor(DIST_STUDENT), _tensor(DIST_TEACHER), 1.0, 1.0, 1.0).item() <= 4


def test_kd_dist_with_one_sample_keeps_only_the_inter_class_gradient():
    student = _tensor(STUDENT[:1]).requires_grad_()
    inter_only = kd_dist(student, _tensor(TEACHER[:1]), 2.0, 1.0, 0.0)
    loss = kd_dist(student, _tensor(TEACHER[:1]), 2.0, 1.0, 3.0)
    assert _close(loss - inter_only, 3.0 * 2.0 ** 2)  # no relation across one sample: d = 1 for every class
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["lskd", "dist"])
def test_new_kinds_have_finite_gradients_even_for_constant_logits(kind):
    torch.manual_seed(0)
    student = torch.randn(5, 10, dtype=torch.float64)
    student[0] = 0.7  # one sample with all classes equal: its standard deviation and centered norm are 0
    student.requires_grad_()
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, kind=kind, temperature=3.0)
    total, _ = loss_fn(student, torch.tensor([0, 1, 2, 3, 4]), torch.randn(2, 5, 10, dtype=torch.float64))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(student.grad).all()
    assert student.grad[1:].abs().sum() > 0


def test_dist_with_mean_probs_ensemble_relates_to_the_mean_of_the_teachers_probabilities():
    temperature = 2.0
    second = DIST_STUDENT[1:] + [[2.0, -1.0, 0.0]]  # a second teacher, [B=3, C=3]
    teachers = torch.stack([_tensor(DIST_TEACHER), _tensor(second)])
    mean_probs = [[(a + b) / 2 for a, b in zip(_softmax(r1, temperature), _softmax(r2, temperature))]
                  for r1, r2 in zip(DIST_TEACHER, second)]
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, kind="dist", temperature=temperature, aggregation="mean_probs")
    total, _ = loss_fn(_tensor(DIST_STUDENT), torch.tensor([1, 2, 0]), teachers)
    assert total.item() == pytest.approx(_hand_dist(DIST_STUDENT, mean_probs, temperature, 1.0, 1.0), rel=1e-9)


@pytest.mark.parametrize("kind", ["lskd", "dist"])
@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_probs", "confidence"])
def test_new_kinds_consume_the_combined_teacher_logits(kind, aggregation):
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, kind=kind, temperature=2.0, aggregation=aggregation)
    total, _ = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS), _two_teachers())
    combined = ensemble_logits(_two_teachers(), torch.tensor(TARGETS), aggregation, 2.0)
    direct = kd_lskd(_tensor(STUDENT), combined, 2.0) if kind == "lskd" else kd_dist(_tensor(STUDENT), combined,
                                                                                        2.0, 1.0, 1.0)
    assert _close(total, direct)


# --------------------------------------------------------------------------- teacher ensembles


def _two_teachers():
    return torch.stack([_tensor(TEACHER), _tensor(SECOND_TEACHER)])  # [T=2, B=2, C=3]


def test_ensemble_mean_logits():
    expected = [[(a + b) / 2 for a, b in zip(r1, r2)] for r1, r2 in zip(TEACHER, SECOND_TEACHER)]
    assert _close(ensemble_logits(_two_teachers(), torch.tensor(TARGETS), "mean_logits", 2.0), expected)


def test_ensemble_mean_probs_softmax_is_mean_of_probs():
    temperature = 2.0
    result = ensemble_logits(_two_teachers(), torch.tensor(TARGETS), "mean_probs", temperature)
    mean_probs = [[(a + b) / 2 for a, b in zip(_softmax(r1, temperature), _softmax(r2, temperature))]
                  for r1, r2 in zip(TEACHER, SECOND_TEACHER)]
    assert _close(torch.softmax(result / temperature, dim=-1), mean_probs)
    assert _close(result, [[temperature * math.log(p) for p in row] for row in mean_probs])


def test_ensemble_confidence_weights_teachers_by_true_label_probability():
    temperature = 2.0
    result = ensemble_logits(_two_teachers(), torch.tensor(TARGETS), "confidence", temperature)
    expected = []
    for r1, r2, y in zip(TEACHER, SECOND_TEACHER, TARGETS):
        p1, p2 = _softmax(r1)[y], _softmax(r2)[y]  # how well each teacher predicts the true label (T=1)
        w1, w2 = p1 / (p1 + p2), p2 / (p1 + p2)
        expected.append([w1 * a + w2 * b for a, b in zip(_softmax(r1, temperature), _softmax(r2, temperature))])
    assert _close(torch.softmax(result / temperature, dim=-1), expected)


def test_ensembles_of_two_teachers_over_three_samples():
    """More samples than teachers: mean_probs averages over the 2 teachers (not the 3 samples), and
    confidence weighs the teachers of each sample by its own label's probability."""
    temperature, targets = 2.0, [1, 2, 0]
    second = SECOND_TEACHER + [[2.0, -1.0, 0.5]]
    teachers = torch.stack([_tensor(DIST_TEACHER), _tensor(second)])  # [T=2, B=3, C=3]
    mean_probs = ensemble_logits(teachers, torch.tensor(targets), "mean_probs", temperature)
    assert _close(mean_probs, [[temperature * math.log((a + b) / 2) for a, b in zip(_softmax(r1, temperature),
                                                                                    _softmax(r2, temperature))]
                               for r1, r2 in zip(DIST_TEACHER, second)])
    result = ensemble_logits(teachers, torch.tensor(targets), "confidence", temperature)
    expected = []
    for r1, r2, y in zip(DIST_TEACHER, second, targets):
        p1, p2 = _softmax(r1)[y], _softmax(r2)[y]
        expected.append([(p1 * a + p2 * b) / (p1 + p2) for a, b in zip(_softmax(r1, temperature),
                                                                      _softmax(r2, temperature))])
    assert _close(torch.softmax(result / temperature, dim=-1), expected)


@pytest.mark.parametrize("method", ["mean_logits", "mean_probs", "confidence"])
def test_single_teacher_logits_pass_through(method):
    one = _tensor(TEACHER).unsqueeze(0)
    assert torch.equal(ensemble_logits(one, torch.tensor(TARGETS), method, 4.0), _tensor(TEACHER))


def test_ensemble_rejects_unknown_method_and_missing_targets():
    with pytest.raises(ValueError, match=r"one of \['confidence', 'mean_logits', 'mean_probs'\], got 'max'"):
        ensemble_logits(_two_teachers(), torch.tensor(TARGETS), "max", 1.0)
    with pytest.raises(ValueError) as error:
        ensemble_logits(_two_teachers(), None, "confidence", 1.0)
    assert str(error.value) == "aggregation 'confidence' needs the true labels (targets), got None"
    with pytest.raises(ValueError, match=r"\[teachers, batch, classes\]"):
        ensemble_logits(_tensor(TEACHER), torch.tensor(TARGETS), "mean_logits", 1.0)


# --------------------------------------------------------------------------- DistillationLoss


def _hand_cross_entropy():
    return -sum(math.log(_softmax(s)[y]) for s, y in zip(STUDENT, TARGETS)) / 2


def test_total_is_the_weighted_sum_of_its_parts():
    torch.manual_seed(0)
    loss_fn = DistillationLoss(w_ce=0.3, w_kd=0.7, w_feat=0.2, kind="kl", temperature=2.0,
                               student_feature_dim=4, teacher_feature_dim=5).double()
    student_features, teacher_features = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    total, parts = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS), _two_teachers(), student_features, teacher_features)

    ce = _hand_cross_entropy()
    kd = kd_kl(_tensor(STUDENT), ensemble_logits(_two_teachers(), None, "mean_logits", 2.0), 2.0).item()
    feat = ((loss_fn.regressor(student_features) - teacher_features) ** 2).mean().item()
    assert parts == pytest.approx({"ce": ce, "kd": kd, "feat": feat}, rel=1e-9)
    assert all(isinstance(value, float) for value in parts.values())
    assert _close(total, 0.3 * ce + 0.7 * kd + 0.2 * feat)


@pytest.mark.parametrize("kind", ["mse", "dkd", "lskd", "dist"])
def test_kind_selects_the_kd_loss(kind):
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, kind=kind, temperature=2.0, dkd_alpha=0.5, dkd_beta=2.0,
                               dist_beta=0.5, dist_gamma=2.0)
    teachers = _tensor(TEACHER).unsqueeze(0)
    total, _ = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS), teachers)
    expected = {"dkd": lambda: _hand_dkd(2.0, 0.5, 2.0),
                "lskd": lambda: _hand_lskd(STUDENT, TEACHER, 2.0),
                "dist": lambda: _hand_dist(STUDENT, [_softmax(t, 2.0) for t in TEACHER], 2.0, 0.5, 2.0),
                "mse": lambda: kd_mse(_tensor(STUDENT), _tensor(TEACHER)).item()}[kind]()
    assert total.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "mse", "dkd", "lskd", "dist"])
@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_probs", "confidence"])
def test_no_kind_or_aggregation_warns(kind, aggregation):
    """Every softmax names its class (or teacher) dimension: an implicit one is deprecated, with a warning."""
    import warnings

    loss_fn = DistillationLoss(w_ce=0.5, w_kd=0.5, kind=kind, temperature=2.0, aggregation=aggregation)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total, _ = loss_fn(_tensor(DIST_STUDENT), torch.tensor([1, 2, 0]),
                           torch.stack([_tensor(DIST_TEACHER), _tensor(SECOND_TEACHER + [[2.0, -1.0, 0.5]])]))
    assert torch.isfinite(total)


def test_zero_weight_terms_are_not_computed():
    loss_fn = DistillationLoss(w_ce=1.0, w_kd=0.0, w_feat=0.0)
    poisoned_teachers = torch.full((1, 2, 3), float("nan"))
    total, parts = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS), poisoned_teachers)
    assert parts.keys() == {"ce"}
    assert _close(total, _hand_cross_entropy())
    assert loss_fn.regressor is None and not list(loss_fn.parameters())
    total, parts = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS))  # no teacher inputs needed at all
    assert parts.keys() == {"ce"}


def test_feature_regressor_and_student_get_gradients_but_teachers_do_not():
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, w_feat=1.0, student_feature_dim=4, teacher_feature_dim=6)
    student_logits = torch.randn(3, 5, requires_grad=True)
    student_features = torch.randn(3, 4, requires_grad=True)
    teacher_logits = torch.randn(2, 3, 5, requires_grad=True)
    teacher_features = torch.randn(3, 6, requires_grad=True)
    total, _ = loss_fn(student_logits, torch.tensor([0, 1, 4]), teacher_logits, student_features, teacher_features)
    total.backward()
    assert loss_fn.regressor.weight.grad.abs().sum() > 0
    assert loss_fn.regressor.bias.grad.abs().sum() > 0
    assert student_features.grad.abs().sum() > 0 and student_logits.grad.abs().sum() > 0
    assert teacher_logits.grad is None and teacher_features.grad is None


def test_missing_teacher_input_for_a_weighted_term_is_an_error():
    with pytest.raises(ValueError, match="teacher_logits"):
        DistillationLoss(w_kd=1.0)(_tensor(STUDENT), torch.tensor(TARGETS))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"w_ce": -1.0}, r"w_ce must be a number >= 0 and finite, got -1.0"),
    ({"w_kd": float("nan")}, r"w_kd must be a number >= 0 and finite, got nan"),
    ({"dkd_beta": -2}, r"dkd_beta must be a number >= 0 and finite, got -2"),
    ({"dist_beta": float("inf")}, r"dist_beta must be a number >= 0 and finite, got inf"),
    ({"dist_gamma": -0.5}, r"dist_gamma must be a number >= 0 and finite, got -0.5"),
    ({"temperature": 0}, r"temperature must be a number > 0, got 0"),
    ({"temperature": "4"}, r"temperature must be a number > 0, got '4'"),
    ({"kind": "cosine"}, r"kind must be one of \['dist', 'dkd', 'kl', 'lskd', 'mse'\], got 'cosine'"),
    ({"aggregation": "max"}, r"aggregation must be one of \['confidence', 'mean_logits', 'mean_probs'\], got 'max'"),
    ({"w_feat": 0.5, "student_feature_dim": 8},
     r"teacher_feature_dim must be an integer >= 1 when w_feat > 0, got None"),
    ({"w_ce": 0.0}, r"w_ce \+ w_kd \+ w_feat \+ w_at must be > 0"),
])
def test_invalid_arguments_name_the_parameter(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(**kwargs)


def test_from_config_reads_a_train_config_a_distill_section_or_a_dict():
    section = SimpleNamespace(w_ce=0.1, w_kd=0.9, w_feat=0.5, w_at=0.75, kind="dkd", temperature=3.0, dkd_alpha=0.5,
                              dkd_beta=4.0, dist_beta=2.0, dist_gamma=0.25, aggregation="confidence", teachers=["a"])
    expected = {"w_ce": 0.1, "w_kd": 0.9, "w_feat": 0.5, "w_at": 0.75, "kind": "dkd", "temperature": 3.0,
                "dkd_alpha": 0.5, "dkd_beta": 4.0, "dist_beta": 2.0, "dist_gamma": 0.25, "aggregation": "confidence"}
    for cfg in (SimpleNamespace(distill=section), section, dict(vars(section)), {"distill": dict(vars(section))}):
        loss_fn = DistillationLoss.from_config(cfg, student_feature_dim=8, teacher_feature_dim=16)
        assert {name: getattr(loss_fn, name) for name in expected} == expected
        assert loss_fn.regressor.in_features == 8 and loss_fn.regressor.out_features == 16


def test_from_config_uses_defaults_for_missing_fields():
    loss_fn = DistillationLoss.from_config({"w_kd": 0.5})
    assert (loss_fn.w_ce, loss_fn.w_kd, loss_fn.kind, loss_fn.temperature) == (1.0, 0.5, "kl", 4.0)


def test_cross_entropy_term_matches_torch():
    total, _ = DistillationLoss()(_tensor(STUDENT), torch.tensor(TARGETS))
    assert _close(total, F.cross_entropy(_tensor(STUDENT), torch.tensor(TARGETS)))


# --------------------------------------------------------------------------- selected from a study file

_STUDY = {
    "name": "s",
    "teachers": [{"name": "t1", "arch": {"family": "mlp", "width": 32}, "schedule": {"epochs": 1}}],
    "search_space": {"params": {"distill.temperature": {"type": "float", "low": 1, "high": 4}}},
}


def test_a_study_file_selects_dist_and_its_weights(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**_STUDY, "distill": {"kind": "dist", "dist_beta": 2, "dist_gamma": 0.5}}))
    loss_fn = DistillationLoss.from_config(load_study(path).train_config())
    assert (loss_fn.kind, loss_fn.dist_beta, loss_fn.dist_gamma) == ("dist", 2.0, 0.5)
    path.write_text(yaml.safe_dump({**_STUDY, "distill": {"kind": "lskd"}}))
    assert DistillationLoss.from_config(load_study(path).train_config()).kind == "lskd"


@pytest.mark.parametrize(("distill", "expected"), [
    ({"kind": "dist2"}, "distill.kind: must be 'kl', 'mse', 'dkd', 'lskd' or 'dist', got 'dist2'"),
    ({"kind": "dist", "dist_gamma": -1}, "distill.dist_gamma: must be >= 0, got -1"),
    ({"kind": "dist", "dist_beta": float("inf")}, "distill.dist_beta: must be a finite number, got inf"),
])
def test_a_bad_distill_kind_or_weight_is_a_one_line_error(tmp_path, distill, expected):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**_STUDY, "distill": distill}))
    with pytest.raises(ConfigError) as error:
        load_study(path)
    assert str(error.value) == f"{path}: {expected}"


@pytest.mark.parametrize("kind", ["lskd", "dist"])
def test_fit_distils_with_the_new_kinds_for_an_epoch(kind):
    digits = load_data(DataSpec(name="digits", val_fraction=0.15, train_subset=300))
    teacher = build_model({"family": "mlp", "depth": 1, "width": 16}, digits.input_shape, digits.num_classes, seed=1)

    class CachedTeacher:
        feature_dim = teacher.feature_dim
        with torch.no_grad():
            logits = teacher(digits.x_train)

        def for_batch(self, indices, inputs, features=True):
            return self.logits[indices].unsqueeze(0), None

    student = build_model({"family": "mlp", "depth": 1, "width": 8}, digits.input_shape, digits.num_classes, seed=0)
    result = fit(student, digits, CachedTeacher(), DistillSpec(kind=kind, w_ce=0.5, w_kd=0.5, temperature=2.0),
                 ScheduleSpec(epochs=1, batch_size=64), seed=0, device="cpu")
    assert result.epochs_trained == 1 and math.isfinite(result.history[0].train_loss)
    assert 0.0 <= result.val_accuracy <= 1.0


# --------------------------------------------------------------------------- attention transfer in DistillationLoss


def _hand_attention(stage):
    """Per sample of [B, C, *spatial]: the sum over channels of the squared activations at each position
    (row-major), divided by its L2 norm; plain Python on nested lists."""
    def flat(nested):
        return [v for item in nested for v in flat(item)] if isinstance(nested, list) else [nested]

    maps = []
    for sample in stage.tolist():
        channels = [flat(channel) for channel in sample]
        summed = [sum(channel[k] ** 2 for channel in channels) for k in range(len(channels[0]))]
        norm = math.sqrt(sum(v ** 2 for v in summed))
        maps.append([v / norm for v in summed])
    return maps


def _hand_at(student_maps, teacher_maps):
    """1/2 * the batch mean of the L2 distance between the student's and the teacher's map of each sample."""
    distances = [math.sqrt(sum((s - t) ** 2 for s, t in zip(s_row, t_row)))
                 for s_row, t_row in zip(student_maps, teacher_maps.tolist())]
    return 0.5 * sum(distances) / len(distances)


def _unit_rows(rows, positions, seed):
    maps = torch.rand(rows, positions, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return maps / maps.norm(dim=1, keepdim=True)


def _at_stages():
    """Student stages of spatial sizes (2, 2), (2, 2), (1, 3), (1, 1), batch 2: leaves that take gradients."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(2, 2, 2, 2), (2, 3, 2, 2), (2, 2, 1, 3), (2, 4, 1, 1)]
    return [torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]


def test_at_term_averages_over_teachers_the_hand_at_of_each_ones_matched_stages(monkeypatch):
    """Teacher 0 has maps at (2, 2), (1, 3) and (1, 1); teacher 1 at (3, 1) (the student's (1, 3) transposed:
    no match) and (1, 3). So teacher 0 pairs the deeper (2, 2) stage (1) and stage 2, teacher 1 only stage 2,
    and one-position maps are never compared. AT is the mean of the two teachers' terms; stage 2, matched by
    both, is mapped once; gradients reach the matched student stages only, never the teachers' maps."""
    stages = _at_stages()
    teacher_maps = [{(2, 2): _unit_rows(2, 4, 1), (1, 3): _unit_rows(2, 3, 2), (1, 1): torch.ones(2, 1)},
                    {(3, 1): _unit_rows(2, 3, 3), (1, 3): _unit_rows(2, 3, 4).requires_grad_()}]
    calls, attention_map = [], losses.attention_map
    monkeypatch.setattr(losses, "attention_map",
                        lambda activation: calls.append(activation) or attention_map(activation))
    loss_fn = DistillationLoss(w_ce=0.0, w_at=2.5)
    total, parts = loss_fn(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), student_stages=stages,
                           teacher_maps=teacher_maps)

    first = (_hand_at(_hand_attention(stages[1]), teacher_maps[0][(2, 2)])
             + _hand_at(_hand_attention(stages[2]), teacher_maps[0][(1, 3)]))
    second = _hand_at(_hand_attention(stages[2]), teacher_maps[1][(1, 3)])
    assert first != pytest.approx(second, rel=1e-2)  # the mean is not any one teacher's term
    assert parts.keys() == {"at"} and parts["at"] == pytest.approx((first + second) / 2, rel=1e-6)
    assert total.item() == pytest.approx(2.5 * (first + second) / 2, rel=1e-6)
    assert len(calls) == 2  # stages 1 and 2, each once
    total.backward()
    assert [stage.grad is not None and stage.grad.abs().sum() > 0 for stage in stages] == [False, True, True, False]
    assert teacher_maps[1][(1, 3)].grad is None


def test_at_term_maps_half_precision_stages_in_float32():
    """Stages from an autocast forward are float16; their squares (300² = 90000) overflow float16, so the
    map is computed in float32: q = [300², 400²] / |[300², 400²]| = [9, 16] / sqrt(337)."""
    stage = torch.tensor([[[[300.0, 0.0]], [[0.0, 400.0]]]], dtype=torch.float16)  # [1, 2, 1, 2]
    teacher = torch.tensor([[0.6, 0.8]], dtype=torch.float16)  # cached maps are float16 too
    total, parts = DistillationLoss(w_ce=0.0, w_at=1.0)(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long),
                                                        student_stages=[stage], teacher_maps=[{(1, 2): teacher}])
    q = [9 / math.sqrt(337), 16 / math.sqrt(337)]
    t = teacher.double().tolist()[0]
    expected = 0.5 * math.sqrt((q[0] - t[0]) ** 2 + (q[1] - t[1]) ** 2)
    assert total.dtype == torch.float32 and parts["at"] == pytest.approx(expected, rel=1e-5)


def test_at_term_without_a_matching_stage_names_the_teacher_and_both_sizes():
    """Teacher 1 shares only the one-position size (1, 1) with the student, which is never compared."""
    teacher_maps = [{(1, 3): _unit_rows(2, 3, 0)}, {(3, 1): _unit_rows(2, 3, 1), (1, 1): torch.ones(2, 1)}]
    message = ("attention transfer: no student stage [(2, 2), (2, 2), (1, 3), (1, 1)] has the spatial size of a "
               "stage of teacher 1 [(3, 1), (1, 1)]")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        DistillationLoss(w_ce=0.0, w_at=1.0)(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                                             student_stages=_at_stages(), teacher_maps=teacher_maps)


# --------------------------------------------------------------------------- attention transfer by hand
# (Zagoruyko & Komodakis, ICLR 2017; training with it: tests/test_attention.py)


def test_the_attention_map_is_the_channel_sum_of_squares_normalised_per_sample():
    # channel 0 [[1, 2], [0, 1]], channel 1 [[-1, 0], [2, 1]]
    # sum_c |A|^2 = [[1+1, 4+0], [0+4, 1+1]] = [2, 4, 4, 2]; its L2 norm sqrt(4+16+16+4) = sqrt(40)
    # -> [2, 4, 4, 2] / sqrt(40) = [1, 2, 2, 1] / sqrt(10)
    activation = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[-1.0, 0.0], [2.0, 1.0]]]])
    expected = torch.tensor([[1.0, 2.0, 2.0, 1.0]]) / math.sqrt(10)
    assert torch.allclose(attention_map(activation), expected, atol=1e-7)
    # per sample: a second sample, all zeros, stays zeros (no 0/0) and does not change the first
    both = attention_map(torch.cat([activation, torch.zeros_like(activation)]))
    assert torch.allclose(both[0], expected[0], atol=1e-7) and torch.equal(both[1], torch.zeros(4))


def test_the_at_loss_is_half_the_sum_over_stages_of_the_batch_mean_of_l2_distances():
    # stage 1 (2 positions): sample 0 q_s = [1, 0], q_t = [0.6, 0.8]: |q_s - q_t| = sqrt(0.16 + 0.64) = sqrt(0.8);
    #                        sample 1 q_s = q_t = [0.6, 0.8]: 0.   batch mean = sqrt(0.8) / 2
    # stage 2 (4 positions): both samples q_s = [1, 0, 0, 0], q_t = [0, 1, 0, 0]: sqrt(2) each, mean sqrt(2)
    # AT = 1/2 * (sqrt(0.8) / 2 + sqrt(2))
    student = [torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])]
    teacher = [torch.tensor([[0.6, 0.8], [0.6, 0.8]]), torch.tensor([[0.0, 1, 0, 0], [0.0, 1, 0, 0]])]
    expected = 0.5 * (math.sqrt(0.8) / 2 + math.sqrt(2))
    assert at_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_loss_weighs_at_by_w_at_and_pairs_stages_by_spatial_size():
    # The student's stages: [1, 1, 2] (positions 2) -> map [1, 0] after squaring [1, 0]; [1, 1, 1, 1] (one position:
    # never matched). The teacher's map at size (2,) is [0, 1]: distance sqrt(2), AT = sqrt(2) / 2.
    stages = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[3.0]]])]
    teacher_maps = [{(2,): torch.tensor([[0.0, 1.0]])}]
    loss_fn = DistillationLoss(w_ce=0.0, w_at=3.0)
    total, parts = loss_fn(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), student_stages=stages,
                           teacher_maps=teacher_maps)
    assert parts["at"] == pytest.approx(math.sqrt(2) / 2) and total.item() == pytest.approx(3 * math.sqrt(2) / 2)
    # two teachers: the mean of their AT terms (the second matches exactly: 0)
    total, parts = loss_fn(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), student_stages=stages,
                           teacher_maps=teacher_maps + [{(2,): torch.tensor([[1.0, 0.0]])}])
    assert parts["at"] == pytest.approx(math.sqrt(2) / 4)
    with pytest.raises(ValueError, match=r"no student stage \[\(2,\), \(1,\)\] has the spatial size"):
        loss_fn(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), student_stages=stages,
                teacher_maps=[{(4,): torch.ones(1, 4) / 2}])


def test_at_loss_needs_one_teacher_map_per_student_map_and_at_least_one():
    maps = [torch.full((2, 4), 0.5)]
    for student, teacher in ((maps, maps * 2), (maps * 2, maps), ([], [])):
        with pytest.raises(ValueError) as error:
            at_loss(student, teacher)
        assert str(error.value) == (f"at_loss needs one teacher map per student map (at least one), got "
                                    f"{len(student)} and {len(teacher)}")


def test_stages_are_matched_by_spatial_size_deepest_of_each_one_position_never():
    assert matched_stages([(8, 8), (4, 4), (2, 2)], [(8, 8), (8, 8), (4, 4), (1, 1)]) == [(0, 1), (1, 2)]
    assert matched_stages([(8, 8), (8, 8)], [(8, 8)]) == [(1, 0)]
    assert matched_stages([(4, 4), (1, 1)], [(8, 8), (1, 1)]) == []


def test_unspecified_arguments_take_their_documented_defaults():
    """Defaults seen through the loss value: temperature 4, dkd_alpha 1, dkd_beta 8, dist_beta 1, dist_gamma 1,
    w_ce 1 (alone: plain cross-entropy), each equal to the loss with the argument given explicitly."""
    teachers = _tensor(TEACHER).unsqueeze(0)
    dkd, _ = DistillationLoss(w_ce=0.0, w_kd=1.0, kind="dkd")(_tensor(STUDENT), torch.tensor(TARGETS), teachers)
    assert _close(dkd, _hand_dkd(4.0, 1.0, 8.0))
    explicit = DistillationLoss(w_ce=0.0, w_kd=1.0, kind="dkd", temperature=4.0, dkd_alpha=1.0, dkd_beta=8.0)
    assert _close(explicit(_tensor(STUDENT), torch.tensor(TARGETS), teachers)[0], dkd)
    dist, _ = DistillationLoss(w_ce=0.0, w_kd=1.0, kind="dist")(_tensor(DIST_STUDENT), torch.tensor([1, 2, 0]),
                                                                 _tensor(DIST_TEACHER).unsqueeze(0))
    assert _close(dist, _hand_dist(DIST_STUDENT, [_softmax(t, 4.0) for t in DIST_TEACHER], 4.0, 1.0, 1.0))
    kl, _ = DistillationLoss(w_ce=0.0, w_kd=1.0)(_tensor(STUDENT), torch.tensor(TARGETS), teachers)
    assert _close(kl, sum(_kl(_softmax(t, 4.0), _softmax(s, 4.0)) for s, t in zip(STUDENT, TEACHER)) / 2 * 16)
    total, parts = DistillationLoss()(_tensor(STUDENT), torch.tensor(TARGETS))
    assert parts.keys() == {"ce"} and _close(total, _hand_cross_entropy())


@pytest.mark.parametrize("name", ["w_ce", "w_kd", "w_feat", "w_at", "dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma"])
@pytest.mark.parametrize("value", [-1.0, -3, float("inf"), float("nan"), True, "1"])
def test_every_weight_must_be_a_finite_number_at_least_0(name, value):
    with pytest.raises(ValueError) as error:
        DistillationLoss(**{name: value})
    assert str(error.value) == f"{name} must be a number >= 0 and finite, got {value!r}"


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), True, "4"])
def test_the_temperature_must_be_a_positive_finite_number(value):
    with pytest.raises(ValueError) as error:
        DistillationLoss(temperature=value)
    assert str(error.value) == f"temperature must be a number > 0, got {value!r}"


@pytest.mark.parametrize("temperature", [0.5, 1, 1.0])
def test_temperatures_up_to_1_are_accepted(temperature):
    loss_fn = DistillationLoss(w_ce=0.0, w_kd=1.0, temperature=temperature)
    total, _ = loss_fn(_tensor(STUDENT), torch.tensor(TARGETS), _tensor(TEACHER).unsqueeze(0))
    per_row = [_kl(_softmax(t, temperature), _softmax(s, temperature)) for s, t in zip(STUDENT, TEACHER)]
    assert loss_fn.temperature == temperature and _close(total, sum(per_row) / 2 * temperature ** 2)


def test_the_sum_of_the_weights_must_be_positive():
    with pytest.raises(ValueError) as error:
        DistillationLoss(w_ce=0, w_kd=0.0, w_feat=0.0, w_at=0)
    assert str(error.value) == "w_ce + w_kd + w_feat + w_at must be > 0, got 0 + 0.0 + 0.0 + 0"


@pytest.mark.parametrize("name", ["student_feature_dim", "teacher_feature_dim"])
@pytest.mark.parametrize("value", [None, 0, -2, 2.0, True, "4"])
def test_feature_dims_must_be_integers_at_least_1_when_w_feat_is_positive(name, value):
    dims = {"student_feature_dim": 3, "teacher_feature_dim": 5, name: value}
    with pytest.raises(ValueError) as error:
        DistillationLoss(w_feat=0.5, **dims)
    assert str(error.value) == f"{name} must be an integer >= 1 when w_feat > 0, got {value!r}"


def test_feature_dims_of_1_are_accepted():
    loss_fn = DistillationLoss(w_ce=0.0, w_feat=1.0, student_feature_dim=1, teacher_feature_dim=1)
    assert (loss_fn.regressor.in_features, loss_fn.regressor.out_features) == (1, 1)
    with torch.no_grad():
        loss_fn.regressor.weight.fill_(2.0)
        loss_fn.regressor.bias.fill_(0.5)
    features = {"student_features": torch.tensor([[1.0], [-1.0]]), "teacher_features": torch.tensor([[2.0], [0.0]])}
    total, parts = loss_fn(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), **features)
    # regressor: 2x + 0.5 -> [2.5, -1.5]; squared errors 0.25 and 2.25, mean 1.25
    assert parts == {"feat": pytest.approx(1.25)} and total.item() == pytest.approx(1.25)


def test_a_missing_input_of_a_weighted_term_is_named_in_full():
    def message(name):
        return f"{name} is required when its loss weight is > 0, got None"

    student, targets = torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)
    cases = [
        (DistillationLoss(w_kd=1.0), {}, "teacher_logits"),
        (DistillationLoss(w_feat=1.0, student_feature_dim=2, teacher_feature_dim=2),
         {"teacher_features": torch.zeros(1, 2)}, "student_features"),
        (DistillationLoss(w_feat=1.0, student_feature_dim=2, teacher_feature_dim=2),
         {"student_features": torch.zeros(1, 2)}, "teacher_features"),
        (DistillationLoss(w_at=1.0), {"teacher_maps": [{(2,): torch.ones(1, 2)}]}, "student_stages"),
        (DistillationLoss(w_at=1.0), {"student_stages": [torch.ones(1, 1, 2)]}, "teacher_maps"),
    ]
    for loss_fn, inputs, missing in cases:
        with pytest.raises(ValueError) as error:
            loss_fn(student, targets, **inputs)
        assert str(error.value) == message(missing)


# Labeled rows: rows 0 and 2 carry labels 1 and 0; row 1 is unlabeled and its given target (2) is garbage.
# The teachers' mean logits of row 1 are [0.75, 1.25, 0.5]: the class DKD uses for it is 1.
_SEMI_TEACHERS = [DIST_TEACHER, SECOND_TEACHER + [[2.0, -1.0, 0.5]]]
_SEMI_TARGETS = [1, 2, 0]


def _semi_inputs(labeled):
    teachers = torch.stack([_tensor(rows) for rows in _SEMI_TEACHERS])  # [T=2, B=3, C=3]
    return _tensor(DIST_STUDENT), torch.tensor(_SEMI_TARGETS), teachers, torch.tensor(labeled)


def _hand_semi_dkd():
    mean_logits = [[(a + b) / 2 for a, b in zip(r1, r2)] for r1, r2 in zip(*_SEMI_TEACHERS)]
    assert mean_logits[1] == [0.75, 1.25, 0.5]
    return _hand_dkd(2.0, 1.0, 8.0, DIST_STUDENT, mean_logits, [1, 1, 0])


def test_labeled_rows_set_the_cross_entropy_and_unlabeled_rows_take_the_teachers_class():
    student, targets, teachers, labeled = _semi_inputs([True, False, True])
    loss_fn = DistillationLoss(w_ce=0.5, w_kd=2.0, kind="dkd", temperature=2.0)
    total, parts = loss_fn(student, targets, teachers, labeled=labeled)
    ce = -(math.log(_softmax(DIST_STUDENT[0])[1]) + math.log(_softmax(DIST_STUDENT[2])[0])) / 2  # rows 0 and 2 only
    kd = _hand_semi_dkd()
    assert parts == pytest.approx({"ce": ce, "kd": kd}, rel=1e-9)
    assert _close(total, 0.5 * ce + 2.0 * kd)
    # every row labeled: the given targets everywhere, as without `labeled`
    total, parts = loss_fn(student, targets, teachers, labeled=torch.ones(3, dtype=torch.bool))
    assert parts == pytest.approx(loss_fn(student, targets, teachers)[1], rel=1e-12)


def test_with_no_labeled_row_the_cross_entropy_is_0_and_with_w_ce_0_it_is_not_computed():
    student, targets, teachers, labeled = _semi_inputs([False, False, False])
    loss_fn = DistillationLoss(w_ce=0.5, w_kd=2.0, kind="dkd", temperature=2.0)
    total, parts = loss_fn(student, targets, teachers, labeled=labeled)
    mean_logits = [[1.0, 2.0, -0.5], [0.75, 1.25, 0.5], [0.5, -0.5, 1.25]]  # every row takes its argmax: 1, 1, 2
    assert mean_logits == [[(a + b) / 2 for a, b in zip(r1, r2)] for r1, r2 in zip(*_SEMI_TEACHERS)]
    kd = _hand_dkd(2.0, 1.0, 8.0, DIST_STUDENT, mean_logits, [1, 1, 2])
    assert parts.keys() == {"ce", "kd"} and parts["ce"] == 0.0
    assert _close(total, 2.0 * kd)
    student, targets, teachers, labeled = _semi_inputs([True, False, True])
    total, parts = DistillationLoss(w_ce=0.0, w_kd=2.0, kind="dkd", temperature=2.0)(student, targets, teachers,
                                                                                    labeled=labeled)
    assert parts.keys() == {"kd"} and _close(total, 2.0 * _hand_semi_dkd())

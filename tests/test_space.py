"""Search spaces: YAML grammar -> Optuna define-by-run, conditionals, teacher subsets."""

import optuna
import pytest

from autokd.errors import ConfigError
from autokd.space import SUBSET_SEPARATOR, parse_space
from autokd.spec import StudySpec

STUDY = StudySpec.model_validate({
    "name": "s", "search_space": "unused.yaml",
    "teachers": [{"name": n, "arch": {"family": "mlp", "width": 16}} for n in ("a", "b", "c")],
    "student": {"family": "mlp", "depth": 1, "width": 8},
})

FULL = {"params": {
    "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
    "student.width": {"type": "int", "low": 4, "high": 64, "log": True, "when": {"student.family": ["mlp"]}},
    "student.channels": {"type": "int", "low": 2, "high": 8, "when": {"student.family": ["cnn"]}},
    "distill.kind": {"type": "categorical", "choices": ["kl", "dkd"]},
    "distill.dkd_beta": {"type": "float", "low": 1, "high": 8, "when": {"distill.kind": ["dkd"]}},
    "distill.teachers": {"type": "teacher_subset"},
    "distill.temperature": {"type": "float", "low": 1, "high": 16, "log": True},
    "schedule.epochs": {"type": "fixed", "value": 3},
}}


def sample(space, n=40):
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=0))
    trials = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        trials.append(trial.params)
        study.tell(trial, [0.5, 1.0])
    return trials


def test_conditionals_only_appear_when_their_condition_holds():
    space = parse_space(FULL, "space.yaml", STUDY)
    for params in sample(space):
        assert ("student.width" in params) == (params["student.family"] == "mlp")
        assert ("student.channels" in params) == (params["student.family"] == "cnn")
        assert ("distill.dkd_beta" in params) == (params["distill.kind"] == "dkd")


def test_teacher_subsets_are_non_empty_and_cover_all_seven():
    space = parse_space(FULL, "space.yaml", STUDY)
    choices = space.subsets(space.params["distill.teachers"])
    assert len(choices) == 7 and all(choice for choice in choices)
    assert {len(c.split(SUBSET_SEPARATOR)) for c in choices} == {1, 2, 3}


def test_apply_builds_a_valid_config_and_switches_family():
    space = parse_space(FULL, "space.yaml", STUDY)
    config = space.apply(STUDY.train_config(), {"student.family": "cnn", "student.channels": 4,
                                                "distill.kind": "kl", "distill.teachers": "a+c",
                                                "distill.temperature": 2.5})
    assert config.student["family"] == "cnn" and config.student["channels"] == 4
    assert "width" not in config.student  # the mlp's shape does not leak into the cnn
    assert config.distill.teachers == ["a", "c"] and config.distill.temperature == 2.5
    assert config.schedule.epochs == 3  # fixed values are applied too


@pytest.mark.parametrize("params, expected", [
    ({"distill.temperature": {"type": "float", "low": 5, "high": 1}}, "low must be <= high"),
    ({"distill.kind": {"type": "categorical", "choices": []}}, "params"),
    ({"distill.temperature": {"type": "float", "low": 0, "high": 1, "log": True}}, "log scale needs low > 0"),
    ({"distill.temperature": {"type": "gaussian", "low": 0, "high": 1}}, "params"),
    ({"distill.t": {"type": "float", "low": 1, "high": 2}}, "params.distill.t: unknown key"),
    ({"optimizer.lr": {"type": "float", "low": 1, "high": 2}}, "expected a dotted key starting with one of"),
    ({"distill.temperature": {"type": "float", "low": 1, "high": 2, "when": {"distill.kind": ["kl"]}}},
     "when: 'distill.kind' is not a parameter defined above this one"),
    ({"student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
      "student.width": {"type": "int", "low": 2, "high": 8}}, "family 'cnn' has no parameter 'width'"),
    ({"distill.w_ce": {"type": "teacher_subset"}}, "only for distill.teachers"),
    # values Optuna or the config refuse later: inf/NaN bounds, integers beyond int64, unstorable choices
    ({"distill.temperature": {"type": "float", "low": 1, "high": float("inf")}}, "high: must be a finite number"),
    ({"distill.temperature": {"type": "float", "low": float("nan"), "high": 2}}, "low: must be a finite number"),
    ({"schedule.epochs": {"type": "int", "low": 1, "high": 2**63}}, "high: must be an integer of at most 64 bits"),
    ({"distill.w_ce": {"type": "categorical", "choices": [0.5, float("inf")]}}, "choices: must be a finite number"),
    ({"distill.kind": {"type": "categorical", "choices": [["kl"]]}}, "each choice must be a string, number"),
    # rules that parse but cannot be sampled as written
    ({"student.width": {"type": "int", "low": 4, "high": 64, "log": True, "step": 2}}, "log: true cannot go with"),
    ({"student.width": {"type": "int", "low": 4, "high": 63, "step": 4}}, "step 4 does not divide high - low = 59"),
    ({"distill.kind": {"type": "categorical", "choices": ["kl", "dkd"]},
      "distill.dkd_beta": {"type": "float", "low": 1, "high": 8, "when": {"distill.kind": ["dkd", "dkdd"]}}},
     "when: 'distill.kind' never takes 'dkdd'; it takes ['kl', 'dkd']"),
    ({"student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
      "student.width": {"type": "int", "low": 2, "high": 8, "when": {"student.family": ["resnet"]}}},
     "when: 'student.family' never takes 'resnet'"),
    ({"schedule.epochs": {"type": "int", "low": 1, "high": 9, "step": 2},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"schedule.epochs": [4]}}},
     "when: 'schedule.epochs' never takes 4; it takes integers 1..9 in steps of 2"),
    ({"schedule.epochs": {"type": "int", "low": 1, "high": 9},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"schedule.epochs": [10]}}}, "never takes 10"),
    ({"distill.teachers": {"type": "teacher_subset", "max_size": 1},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"distill.teachers": ["a+b"]}}},
     "when: 'distill.teachers' never takes 'a+b'"),
    ({"distill.kind": {"type": "fixed", "value": "kl"},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"distill.kind": ["kl"]}}},
     "'distill.kind' is fixed, not sampled, so the condition never holds"),
    ({"distill.w_ce": {"type": "float", "low": 0, "high": 1},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"distill.w_ce": [0.5]}}},
     "'distill.w_ce' is a float"),
    ({"distill.kind": {"type": "categorical", "choices": ["kl"]},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"distill.kind": []}}}, "lists no value"),
    ({"student.family": {"type": "fixed", "value": "vit"}}, "student.family.value: must be among"),
])
def test_bad_spaces_are_one_line_errors(params, expected):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml", STUDY)
    assert expected in str(error.value) and str(error.value).startswith("space.yaml")
    assert "\n" not in str(error.value)


def test_rules_that_can_hold_are_accepted():
    params = {
        "schedule.epochs": {"type": "int", "low": 1, "high": 9, "step": 2},
        "distill.teachers": {"type": "teacher_subset"},
        "distill.kind": {"type": "categorical", "choices": ["kl", "dkd"]},
        "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"schedule.epochs": [3, 5.0]}},
        "distill.w_feat": {"type": "float", "low": 0, "high": 1, "when": {"distill.teachers": ["a+b", "c"]}},
        "distill.dkd_beta": {"type": "float", "low": 1, "high": 8, "log": True, "when": {"distill.kind": ["dkd"]}},
    }
    space = parse_space({"params": params}, "space.yaml", STUDY)
    for trial in sample(space):
        assert ("distill.w_kd" in trial) == (trial["schedule.epochs"] in (3, 5))
        assert ("distill.w_feat" in trial) == (trial["distill.teachers"] in ("a+b", "c"))


def test_an_error_echoes_a_bounded_part_of_a_huge_input():
    with pytest.raises(ConfigError) as error:
        parse_space({"params": {"distill.kind": {"type": "categorical", "choices": ["kl"]},
                                "distill.w_kd": {"type": "float", "low": 0, "high": 1,
                                                 "when": {"distill.kind": ["x" * 100_000]}}}}, "space.yaml", STUDY)
    assert len(str(error.value)) < 300 and "chars)" in str(error.value)


def test_shipped_spaces_load(tmp_path):
    from pathlib import Path

    from autokd.config_files import load_study
    from autokd.space import load_space

    for study_file in sorted(Path("studies").glob("*.yaml")):
        spec = load_study(study_file)
        space = load_space(spec)
        assert len(space.params) >= 3
        config = space.apply(spec.train_config(), sample(space, 1)[0])
        assert config.student["family"] in {"mlp", "cnn", "custom"}


LOG_SPACE = {"params": {
    "schedule.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "schedule.weight_decay": {"type": "float", "low": 0.0, "high": 1.0},
    "schedule.batch_size": {"type": "int", "low": 1, "high": 10_000, "log": True},
    "schedule.epochs": {"type": "int", "low": 2, "high": 20, "step": 2},
}}


def test_log_params_are_suggested_on_a_log_scale_and_linear_ones_on_a_linear_scale():
    """Random sampling of [1e-4, 1] on a log scale puts half the draws below 1e-2 (the geometric
    middle); a linear scale puts about 1 % there. Same for the integers in [1, 10000] and 100."""
    space = parse_space(LOG_SPACE, "space.yaml", STUDY)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    draws = []
    for _ in range(400):
        trial = study.ask()
        space.suggest(trial)
        draws.append(trial.params)
        study.tell(trial, [0.5, 1.0])
    share = {name: sum(d[name] < middle for d in draws) / len(draws)
             for name, middle in (("schedule.lr", 1e-2), ("schedule.weight_decay", 0.5),
                                  ("schedule.batch_size", 100))}
    assert 0.4 < share["schedule.lr"] < 0.6, share
    assert 0.4 < share["schedule.batch_size"] < 0.6, share
    assert 0.4 < share["schedule.weight_decay"] < 0.6, share  # linear: half below the arithmetic middle
    assert {d["schedule.epochs"] for d in draws} == set(range(2, 21, 2))  # every step, nothing between
    # what Optuna recorded: the scale (and step) the sampler was told
    distributions = study.trials[0].distributions
    assert distributions["schedule.lr"] == optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    assert distributions["schedule.weight_decay"] == optuna.distributions.FloatDistribution(0.0, 1.0)
    assert distributions["schedule.batch_size"] == optuna.distributions.IntDistribution(1, 10_000, log=True)
    assert distributions["schedule.epochs"] == optuna.distributions.IntDistribution(2, 20, step=2)


def test_suggest_fills_only_the_sections_asked_for():
    space = parse_space(FULL, "space.yaml", STUDY)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space.suggest(trial, ("distill",))
    assert {name.partition(".")[0] for name in trial.params} == {"distill"}
    assert {"distill.kind", "distill.teachers", "distill.temperature"} <= set(trial.params)


def test_an_int_param_takes_exactly_its_steps_bounds_included():
    from autokd.space import IntParam

    param = IntParam(type="int", low=1, high=7, step=3)
    takes = set(range(1, 8, 3))  # what Optuna samples: 1, 4, 7
    assert [value for value in range(-3, 12) if param.can_take(value)] == sorted(takes)
    assert param.can_take(4.0) and not param.can_take(4.5) and not param.can_take(True) and not param.can_take("4")


def test_load_space_reads_an_inline_space_or_a_file_relative_to_the_study(tmp_path):
    import yaml

    from autokd.config_files import load_study
    from autokd.space import load_space

    (tmp_path / "spaces").mkdir()
    good = {"params": {"distill.temperature": {"type": "float", "low": 1, "high": 4}}}
    bad = {"params": {"distill.temperature": {"type": "float", "low": 0, "high": 4}}}  # temperature must be > 0
    (tmp_path / "spaces" / "good.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "spaces" / "bad.yaml").write_text(yaml.safe_dump(bad))

    def study(search_space) -> StudySpec:
        path = tmp_path / "study.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "student": {"family": "mlp"}, "search_space": search_space,
                                        "distill": {"w_ce": 1.0, "w_kd": 0.0}}))
        return load_study(path)

    for search_space in ("spaces/good.yaml", good):
        spec = study(search_space)
        space = load_space(spec)
        assert list(space.params) == ["distill.temperature"] and space.params["distill.temperature"].high == 4
        assert space.teacher_names == []
    assert load_space(study("spaces/good.yaml")).source == str(tmp_path / "spaces" / "good.yaml")
    assert load_space(study(good)).source == f"{tmp_path / 'study.yaml'}: search_space"
    for search_space, where in (("spaces/bad.yaml", f"{tmp_path / 'spaces' / 'bad.yaml'}: "),
                                (bad, f"{tmp_path / 'study.yaml'}: search_space: ")):
        with pytest.raises(ConfigError) as error:
            load_space(study(search_space))
        assert str(error.value).startswith(where + "params.distill.temperature.low:")
    with pytest.raises(ConfigError) as error:
        load_space(study("spaces/missing.yaml"))
    assert str(error.value) == (f"{tmp_path / 'study.yaml'}: search_space: file not found: "
                                f"{tmp_path / 'spaces' / 'missing.yaml'}")


# --------------------------------------------------------------------------- attention transfer (distill.w_at)
# Teachers: c (cnn) and r (resnet) have spatial attention maps, m (mlp) has none.
AT_TEACHERS = [{"name": "c", "arch": {"family": "cnn"}}, {"name": "r", "arch": {"family": "resnet"}},
               {"name": "m", "arch": {"family": "mlp", "width": 16}}]
MLP_NO_MAPS = ("attention transfer (w_at > 0) needs a cnn or resnet student (spatial attention maps), "
               "got family 'mlp'; use w_at 0")
WHEN_HINT = " (add when: {student.family: [cnn, resnet]} to distill.w_at)"
TEACHER_M_NO_MAPS = ("attention transfer (w_at > 0) needs cnn or resnet teachers (spatial attention maps), "
                     "teacher 'm' is 'mlp'; use w_at 0 or leave it out (distill.teachers)")
W_AT_01 = {"type": "categorical", "choices": [0.0, 1.0]}
MLP_OR_CNN = {"type": "categorical", "choices": ["mlp", "cnn"]}


def at_study(family="mlp", w_at=0.0, teachers=("c",), names=("c", "r", "m")) -> StudySpec:
    """A study with the teachers `names`, `teachers` selected, a `family` student and the study's own w_at."""
    return StudySpec.model_validate({
        "name": "s", "search_space": "unused.yaml", "teachers": [t for t in AT_TEACHERS if t["name"] in names],
        "student": {"family": family}, "distill": {"teachers": list(teachers), "w_at": w_at}})


def bare_space(params, teacher_names=()):
    """A SearchSpace as parse_space builds it, without its checks (for the helpers the checks use)."""
    from autokd.space import _PARAMS, SearchSpace

    return SearchSpace(_PARAMS.validate_python(params), list(teacher_names), "space.yaml")


@pytest.mark.parametrize("param, study_value, expected", [
    (None, 0.0, False),  # not searched: the study's value counts
    (None, 0.5, True),
    ({"type": "categorical", "choices": [0.0, 0.5]}, 0.0, True),
    ({"type": "categorical", "choices": [0.0]}, 0.0, False),
    ({"type": "categorical", "choices": [0]}, 0.0, False),
    ({"type": "categorical", "choices": [0.0]}, 0.5, False),  # searched in every trial: the study's value is unused
    ({"type": "categorical", "choices": [0.0], "when": {"distill.kind": ["kl"]}}, 0.5, True),  # not in every trial
    ({"type": "categorical", "choices": [0.0], "when": {"distill.kind": ["kl"]}}, 0.0, False),
    ({"type": "fixed", "value": 0}, 0.0, False),
    ({"type": "fixed", "value": 0.5}, 0.0, True),
    ({"type": "fixed", "value": 0.0}, 0.5, False),
    ({"type": "float", "low": 0.0, "high": 0.0}, 0.0, False),
    ({"type": "float", "low": 0.0, "high": 0.5}, 0.0, True),
    ({"type": "int", "low": 0, "high": 0}, 0.0, False),
    ({"type": "int", "low": 0, "high": 1}, 0.0, True),
    # values the config turns into numbers count as those numbers (pydantic's lax float: true is 1.0)
    ({"type": "categorical", "choices": [0.0, True]}, 0.0, True),
    ({"type": "categorical", "choices": ["1.0"]}, 0.0, True),
    ({"type": "fixed", "value": "0.5"}, 0.0, True),
    ({"type": "categorical", "choices": [False, "0", 0]}, 0.0, False),
    ({"type": "categorical", "choices": ["x", None]}, 0.0, False),  # not numbers: _check_values refuses them
])
def test_may_be_positive_reads_the_searched_values_or_else_the_study_value(param, study_value, expected):
    from autokd.space import may_be_positive

    params = {"distill.kind": {"type": "categorical", "choices": ["kl", "dkd"]}}
    if param is not None:
        params["distill.w_at"] = param
    assert may_be_positive(bare_space(params), "distill.w_at", study_value) is expected
    assert may_be_positive(bare_space(params), "distill.w_feat", 0.0) is False  # another key: its own value


def test_attention_scope_is_the_families_and_teachers_w_at_may_run_with():
    from autokd.space import attention_scope

    def scope(params, study):
        result = attention_scope(parse_space({"params": params}, "space.yaml", study), study)
        return result and (result[0], [t.name for t in result[1]])

    at_only_for_cnn = {**W_AT_01, "when": {"student.family": ["cnn"]}}
    # w_at 0 in every trial: no scope
    assert scope({"distill.temperature": {"type": "float", "low": 1, "high": 2}}, at_study()) is None
    assert scope({"distill.w_at": {"type": "categorical", "choices": [0.0]}}, at_study(w_at=0.0)) is None
    # a searched w_at: the families its when names; else those of student.family; else the study's
    assert scope({"student.family": MLP_OR_CNN, "distill.w_at": at_only_for_cnn}, at_study()) == (["cnn"], ["c"])
    assert scope({"student.family": {"type": "categorical", "choices": ["cnn", "resnet"]}, "distill.w_at": W_AT_01},
                 at_study("cnn")) == (["cnn", "resnet"], ["c"])
    assert scope({"student.family": {"type": "fixed", "value": "resnet"}, "distill.w_at": W_AT_01},
                 at_study("cnn", teachers=("c", "r"))) == (["resnet"], ["c", "r"])
    assert scope({"distill.w_at": W_AT_01}, at_study("resnet")) == (["resnet"], ["c"])
    # the study's own w_at > 0, not searched: every family of the space
    assert scope({"student.family": {"type": "categorical", "choices": ["cnn", "resnet"]}},
                 at_study("cnn", w_at=0.5)) == (["cnn", "resnet"], ["c"])
    assert scope({"distill.temperature": {"type": "float", "low": 1, "high": 2}},
                 at_study("resnet", w_at=0.5)) == (["resnet"], ["c"])
    # the teachers: the study's selection, or all of them when the space searches distill.teachers
    two = {"names": ("c", "r")}
    assert scope({"distill.w_at": W_AT_01}, at_study("cnn", **two)) == (["cnn"], ["c"])
    assert scope({"distill.teachers": {"type": "teacher_subset"}, "distill.w_at": W_AT_01},
                 at_study("cnn", **two)) == (["cnn"], ["c", "r"])
    assert scope({"distill.teachers": {"type": "teacher_subset"}}, at_study("cnn", w_at=0.5, **two)) == (["cnn"],
                                                                                                       ["c", "r"])


@pytest.mark.parametrize("params, study, expected", [
    # w_at searched with student.family: refused at w_at, with the hint to condition it
    ({"student.family": MLP_OR_CNN, "distill.w_at": W_AT_01}, at_study(),
     f"space.yaml: params.distill.w_at: {MLP_NO_MAPS}{WHEN_HINT}"),
    ({"student.family": MLP_OR_CNN, "distill.w_at": {"type": "float", "low": 0, "high": 1}}, at_study("cnn"),
     f"space.yaml: params.distill.w_at: {MLP_NO_MAPS}{WHEN_HINT}"),
    # w_at searched, the family not: no hint (there is no family to condition on)
    ({"distill.w_at": W_AT_01}, at_study(), f"space.yaml: params.distill.w_at: {MLP_NO_MAPS}"),
    # a weight given as `true` or "0.5" is a positive weight in the config, so it is refused the same way
    ({"distill.w_at": {"type": "categorical", "choices": [0.0, True]}}, at_study(),
     f"space.yaml: params.distill.w_at: {MLP_NO_MAPS}"),
    ({"distill.w_at": {"type": "fixed", "value": "0.5"}}, at_study(),
     f"space.yaml: params.distill.w_at: {MLP_NO_MAPS}"),
    ({"distill.teachers": {"type": "teacher_subset"}, "distill.w_at": {"type": "float", "low": 0, "high": 1}},
     at_study("cnn"), f"space.yaml: params.distill.w_at: {TEACHER_M_NO_MAPS}"),
    # the study's w_at > 0, not searched: refused at what the space varies, no hint
    ({"student.family": MLP_OR_CNN}, at_study("cnn", w_at=1.0), f"space.yaml: params.student.family: {MLP_NO_MAPS}"),
    ({"distill.teachers": {"type": "teacher_subset"}}, at_study("cnn", w_at=1.0),
     f"space.yaml: params.student.family: {TEACHER_M_NO_MAPS}"),
    ({"student.family": MLP_OR_CNN, "distill.teachers": {"type": "teacher_subset"}}, at_study("cnn", w_at=1.0),
     f"space.yaml: params.student.family: {MLP_NO_MAPS}"),
])
def test_attention_transfer_a_space_may_not_run_is_refused_in_one_exact_line(params, study, expected):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml", study)
    assert str(error.value) == expected


@pytest.mark.parametrize("params, study", [
    ({"student.family": MLP_OR_CNN, "distill.w_at": {**W_AT_01, "when": {"student.family": ["cnn"]}}}, at_study()),
    ({"student.family": {"type": "categorical", "choices": ["cnn", "resnet"]}}, at_study("cnn", w_at=1.0)),
    ({"distill.w_at": {"type": "float", "low": 0, "high": 1}}, at_study("resnet", teachers=("c", "r"))),
    ({"distill.teachers": {"type": "teacher_subset"}, "distill.w_at": W_AT_01}, at_study("cnn", names=("c", "r"))),
    ({"distill.teachers": {"type": "teacher_subset"}}, at_study("cnn", w_at=1.0, names=("c", "r"))),
    ({"student.family": {"type": "fixed", "value": "cnn"}, "distill.w_at": W_AT_01}, at_study()),
    # every trial's family is cnn although the study's own is mlp: its values are checked with cnn
    ({"student.family": {"type": "categorical", "choices": ["cnn"]}, "distill.w_at": W_AT_01}, at_study()),
    ({"student.family": {"type": "categorical", "choices": ["cnn", "resnet"]},
      "distill.w_at": {"type": "fixed", "value": 0.5}}, at_study(names=("c", "r"))),
])
def test_attention_transfer_a_space_can_run_is_accepted(params, study):
    space = parse_space({"params": params}, "space.yaml", study)
    assert list(space.params) == list(params)


# --------------------------------------------------------------------------- every value checked against its config key


@pytest.mark.parametrize("params, expected", [
    ({"distill.temperature": {"type": "fixed", "value": 0}}, "space.yaml: params.distill.temperature.value: "
                                                              "must be > 0, got 0"),
    ({"distill.temperature": {"type": "float", "low": 0, "high": 1}}, "space.yaml: params.distill.temperature.low: "
                                                                       "must be > 0, got 0.0"),
    ({"distill.w_ce": {"type": "categorical", "choices": [0.5, -1]}}, "space.yaml: params.distill.w_ce.choices: "
                                                                       "must be >= 0, got -1"),
    # a teacher subset is not a value to check, and the parameters after it still are
    ({"distill.teachers": {"type": "teacher_subset"}, "distill.temperature": {"type": "float", "low": 0, "high": 1}},
     "space.yaml: params.distill.temperature.low: must be > 0, got 0.0"),
    # not a number where the config wants one: refused as a value, whether or not it is the attention weight
    ({"distill.w_at": {"type": "categorical", "choices": ["x"]}},
     "space.yaml: params.distill.w_at.choices: must be a valid number, unable to parse string as a number, got 'x'"),
    ({"distill.w_at": {"type": "fixed", "value": "x"}},
     "space.yaml: params.distill.w_at.value: must be a valid number, unable to parse string as a number, got 'x'"),
    # a fixed value is set in every trial, its when notwithstanding: here an mlp student would get w_at 1
    ({"student.family": {"type": "categorical", "choices": ["cnn", "mlp"]},
      "distill.w_at": {"type": "fixed", "value": 1.0, "when": {"student.family": ["cnn"]}}},
     f"space.yaml: params.student.family.choices: {MLP_NO_MAPS}"),
])
def test_each_bound_choice_and_fixed_value_is_checked_in_a_config(params, expected):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml", at_study())
    assert str(error.value) == expected


def test_a_student_parameter_is_checked_with_a_family_that_has_it():
    """The study's student is an mlp; a cnn parameter is checked in a cnn (the space's family or the one
    its when names), not in the study's mlp, which has no channels."""
    study = at_study("mlp")
    for params in ({"student.family": {"type": "categorical", "choices": ["cnn"]},
                    "student.channels": {"type": "int", "low": 2, "high": 8}},
                   {"student.family": {"type": "fixed", "value": "cnn"},
                    "student.channels": {"type": "fixed", "value": 4}},
                   {"student.family": {"type": "categorical", "choices": ["resnet", "cnn"]},
                    "student.channels": {"type": "int", "low": 2, "high": 8, "when": {"student.family": ["cnn"]}}}):
        assert list(parse_space({"params": params}, "space.yaml", study).params) == list(params)
    with pytest.raises(ConfigError) as error:  # and checked there: a cnn's channels are >= 1
        parse_space({"params": {"student.family": {"type": "categorical", "choices": ["cnn"]},
                                "student.channels": {"type": "int", "low": 0, "high": 8}}}, "space.yaml", study)
    assert str(error.value).startswith("space.yaml: params.student.channels.low: ")


# --------------------------------------------------------------------------- names and conditions, word for word


@pytest.mark.parametrize("params, expected", [
    ({"student.family": {"type": "categorical", "choices": ["mlp", "vit"]}},
     "space.yaml: params.student.family.choices: must be among ['cnn', 'mlp', 'resnet'], got 'vit'"),
    ({"student.family": {"type": "fixed", "value": 3}},
     "space.yaml: params.student.family.value: must be among ['cnn', 'mlp', 'resnet'], got 3"),
    ({"schedule.foo": {"type": "fixed", "value": 1}},
     "space.yaml: params.schedule.foo: unknown key; allowed: ['batch_size', 'epochs', 'lr', 'lr_schedule', "
     "'momentum', 'optimizer', 'weight_decay']"),
    ({"distill.w_ce": {"type": "float", "low": 0, "high": 1},
      "distill.w_kd": {"type": "float", "low": 0, "high": 1, "when": {"distill.w_ce": [0.5]}}},
     "space.yaml: params.distill.w_kd: when: 'distill.w_ce' is a float: it takes any given value with probability "
     "zero (make it categorical)"),
])
def test_name_and_condition_errors_word_for_word(params, expected):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml", STUDY)
    assert str(error.value) == expected


def test_a_condition_error_lists_the_choices_cut_at_120_characters():
    choices = list(range(100, 140))  # repr: 40 * 3 + 39 * 2 (", ") + 2 ("[]") = 200 characters
    listed = repr(choices)
    assert len(listed) == 200
    with pytest.raises(ConfigError) as error:
        parse_space({"params": {"schedule.batch_size": {"type": "categorical", "choices": choices},
                                "distill.w_kd": {"type": "float", "low": 0, "high": 1,
                                                 "when": {"schedule.batch_size": [64]}}}},
                    "space.yaml", STUDY)
    assert str(error.value) == ("space.yaml: params.distill.w_kd: when: 'schedule.batch_size' never takes 64; "
                                f"it takes {listed[:120]}...(200 chars)")


# --------------------------------------------------------------------------- custom students, inactive conditions

CUSTOM_STUDY = StudySpec.model_validate({
    "name": "s", "search_space": "unused.yaml", "distill": {"w_ce": 1.0, "w_kd": 0.0},
    "student": {"family": "custom", "factory": "my_students:make", "args": {"width": 8, "act": "relu"}}})


def test_a_custom_students_arguments_are_suggested_and_applied_beside_its_other_arguments():
    space = parse_space({"params": {"student.args.width": {"type": "int", "low": 4, "high": 6},
                                    "distill.temperature": {"type": "float", "low": 1, "high": 3}}},
                        "space.yaml", CUSTOM_STUDY)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    space.suggest(trial, ("student",))
    assert list(trial.params) == ["student.args.width"] and 4 <= trial.params["student.args.width"] <= 6
    config = space.apply(CUSTOM_STUDY.train_config(), {"student.args.width": 5, "distill.temperature": 2.5})
    assert config.student["args"] == {"width": 5, "act": "relu"}  # the other argument stays
    assert config.student["factory"] == "my_students:make"
    assert config.distill.temperature == 2.5  # and what comes after the argument is applied too


def test_a_parameter_whose_condition_is_inactive_is_not_suggested_even_if_the_condition_lists_null():
    """distill.teachers is only sampled for cnn students; w_kd only when it sampled null (all teachers).
    An mlp trial has no distill.teachers at all, which is not the value null."""
    space = parse_space({"params": {
        "student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
        "distill.teachers": {"type": "categorical", "choices": [None, "a"], "when": {"student.family": ["cnn"]}},
        "distill.w_kd": {"type": "float", "low": 0.1, "high": 1, "when": {"distill.teachers": [None]}},
    }}, "space.yaml", STUDY)
    trials = sample(space)
    assert {t["student.family"] for t in trials} == {"mlp", "cnn"}
    assert {t.get("distill.teachers", "absent") for t in trials} == {"absent", None, "a"}
    for params in trials:
        assert ("distill.w_kd" in params) == ("distill.teachers" in params and params["distill.teachers"] is None)


NOT_PARAMS = "space.yaml: params: expected a non-empty mapping of dotted keys to parameters"


@pytest.mark.parametrize("document, expected", [
    ({"description": "d", "params": {"distill.temperature": {"type": "float", "low": 1, "high": 2}}, "zeta": 1},
     "space.yaml: 'zeta': unknown key (allowed: params, description)"),
    ({"params": {"distill.temperature": {"type": "float", "low": 1, "high": 2}}, "zeta": 1, 3: 2},
     "space.yaml: '3': unknown key (allowed: params, description)"),  # the first, as text
    ({"description": "d"}, NOT_PARAMS),
    ({"params": {}}, NOT_PARAMS),
    ({"params": ["distill.temperature"]}, NOT_PARAMS),
])
def test_a_space_document_is_a_params_mapping_and_an_optional_description(document, expected):
    with pytest.raises(ConfigError) as error:
        parse_space(document, "space.yaml", STUDY)
    assert str(error.value) == expected


@pytest.mark.parametrize("params, study, expected", [
    ({"student.family": {"type": "categorical", "choices": ["mlp", "cnn"]},
      "student.width": {"type": "int", "low": 2, "high": 8}}, STUDY,
     "space.yaml: params.student.width: family 'cnn' has no parameter 'width'; add when: {student.family: [...]} "
     "with families that have it"),
    ({"student.width": {"type": "int", "low": 2, "high": 8}}, CUSTOM_STUDY,
     "space.yaml: params.student.width: family 'custom' has no parameter 'width'; a custom student varies its "
     "factory's arguments as student.args.<name>"),
    ({"distill.teachers": {"type": "teacher_subset"}}, CUSTOM_STUDY,
     "space.yaml: params.distill.teachers: the study has no teachers to choose a subset from"),
])
def test_student_and_teacher_parameters_the_study_cannot_take_word_for_word(params, study, expected):
    with pytest.raises(ConfigError) as error:
        parse_space({"params": params}, "space.yaml", study)
    assert str(error.value) == expected


def test_a_range_may_be_a_single_value():
    space = parse_space({"params": {"distill.temperature": {"type": "float", "low": 2, "high": 2},
                                    "schedule.epochs": {"type": "int", "low": 3, "high": 3}}}, "space.yaml", STUDY)
    assert sample(space, 2) == [{"distill.temperature": 2.0, "schedule.epochs": 3}] * 2


def test_varies_says_whether_a_section_has_a_searched_parameter():
    space = parse_space(FULL, "space.yaml", STUDY)  # schedule.epochs is only fixed
    assert [space.varies(s) for s in ("student", "distill", "schedule")] == [True, True, False]
    custom = parse_space({"params": {"student.args.width": {"type": "int", "low": 4, "high": 6},
                                     "schedule.epochs": {"type": "fixed", "value": 2}}}, "space.yaml", CUSTOM_STUDY)
    assert [custom.varies(s) for s in ("student", "distill", "schedule")] == [True, False, False]

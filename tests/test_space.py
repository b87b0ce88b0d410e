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

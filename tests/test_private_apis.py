"""The private Optuna and Ray attributes autokd relies on still exist (fails loudly on an upgrade).

Optuna has no public way to finish a trial another process asked for, or to read a trial's storage
id; `study_store` keeps that access in one place. `searcher.AutokdSearcher` extends Ray's
OptunaSearch where it records results and reads its study and open trials from private fields.
"""

from __future__ import annotations

import inspect

import optuna


def test_optuna_storage_access_used_by_study_store():
    from optuna.storages._rdb.models import TrialIntermediateValueModel, TrialModel, TrialUserAttributeModel
    from optuna.storages._rdb.storage import _create_scoped_session

    from autokd.study_store import record_running, storage_of, trial_id_of

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    assert isinstance(storage_of(study), optuna.storages.BaseStorage)
    assert trial_id_of(trial) == trial_id_of(study.get_trials()[0])
    record_running(study, trial, {}, [0.5])  # Trial.report refuses multi-objective studies
    assert study.get_trials()[0].intermediate_values == {1: 0.5}
    # record_running's one transaction on a SQL storage, and the trial's own copy of its attrs.
    assert isinstance(trial._cached_frozen_trial.user_attrs, dict)
    assert callable(_create_scoped_session) and TrialUserAttributeModel.__tablename__ == "trial_user_attributes"
    # _write_running's few statements: the trial checked once, one upsert on (trial_id, key), steps replaced.
    assert TrialIntermediateValueModel.__tablename__ == "trial_intermediate_values"
    assert {"trial_id", "key", "value_json"} <= set(TrialUserAttributeModel.__table__.columns.keys())
    assert {"trial_id", "step", "intermediate_value", "intermediate_value_type"} <= \
        set(TrialIntermediateValueModel.__table__.columns.keys())
    assert TrialIntermediateValueModel.intermediate_value_to_stored_repr(float("nan"))[0] is None
    assert callable(TrialModel.find_or_raise_by_id) and callable(optuna.storages.RDBStorage.check_trial_is_updatable)
    for name in ("_set_trial_attr_without_commit", "_set_trial_intermediate_value_without_commit"):
        assert list(inspect.signature(getattr(optuna.storages.RDBStorage, name)).parameters)[:3] == \
            ["self", "session", "model_cls" if "attr" in name else "trial_id"], name
    storage_of(study).set_trial_state_values(trial_id_of(trial), optuna.trial.TrialState.FAIL)
    assert study.get_trials()[0].state == optuna.trial.TrialState.FAIL


def test_ray_optuna_search_fields_used_by_the_searcher():
    from ray.tune.search.optuna import OptunaSearch

    def space(trial: optuna.Trial) -> None:
        trial.suggest_float("x", 0, 1)

    searcher = OptunaSearch(space=space, metric=["a", "b"],
                            mode=["max", "min"], sampler=optuna.samplers.RandomSampler(seed=0))
    assert isinstance(searcher._ot_study, optuna.Study)
    assert isinstance(searcher._ot_trials, dict)
    assert callable(searcher._space)
    parameters = inspect.signature(searcher._suggest_from_define_by_run_func).parameters
    assert list(parameters) == ["func", "ot_trial"]
    trial = searcher._ot_study.ask()
    assert set(searcher._suggest_from_define_by_run_func(searcher._space, trial)) == {"x"}

"""The search summary (mlops_ray/train/tune.py): picking the best trial, and a search that
produced nothing to pick. Fake result grids, no Ray."""
from types import SimpleNamespace

import pytest

from mlops_ray.errors import DataValidationError, ExitCode, ResourceError


def result(auc=None, error=None):
    return SimpleNamespace(metrics={"auc": auc, "rounds": 10, "final": True} if auc is not None else {},
                           config={"eta": 0.1}, error=error)


def summarise(results):
    from mlops_ray.train.tune import _summarise
    return _summarise(results, "auc", "max", "single", 1.0, False)


def test_the_best_finite_trial_wins():
    s = summarise([result(0.7), result(float("nan")), result(0.9), result(error=RuntimeError("x"))])
    assert s.best_score == 0.9 and len(s.trials) == 4


@pytest.mark.parametrize("results, cls, code, needle", [
    ([result(error=RuntimeError("trial lost with its node\nmore")), result(error=RuntimeError("oom"))],
     ResourceError, ExitCode.RESOURCES, r"every trial failed \(.*\); first error: trial lost with its node$"),
    ([result(float("nan")), result(float("nan"))],
     DataValidationError, ExitCode.DATA, "no trial produced a finite 'auc' on the validation split"),
])
def test_a_search_without_a_scored_trial_exits_with_its_own_code(results, cls, code, needle):
    with pytest.raises(cls, match=needle) as e:
        summarise(results)
    assert e.value.exit_code == code


def test_the_cli_prints_the_message_of_a_data_validation_error_without_a_report(capsys):
    """Only a validation report replaces the message (it is printed above); other data errors, such
    as "no trial produced a finite 'auc'", must reach the user."""
    import pytest
    import typer
    from mlops_ray import cli
    from mlops_ray.errors import DataValidationError
    with pytest.raises(typer.Exit) as e:
        cli._fail(DataValidationError("no trial produced a finite 'auc' on the validation split"), False)
    assert e.value.exit_code == DataValidationError("x").exit_code
    assert "no trial produced a finite 'auc'" in capsys.readouterr().err.replace("\n", " ")

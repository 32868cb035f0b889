"""One result schema (attnlab/results.py): metrics, result.json fields, run-folder files."""

import typing

import pytest
import yaml

from attnlab.results import METRICS, MetricName, RunResult, result_keys
from attnlab.sweep.spec import load_study


def test_the_metrics_a_study_may_name_are_the_declared_ones():
    assert set(typing.get_args(MetricName)) == set(METRICS)
    assert {m.name: m.direction for m in METRICS.values()} == {
        "bleu": "maximize", "chrf": "maximize", "val_loss": "minimize", "val_ppl": "minimize"}
    assert all(m.logged.startswith("val/") for m in METRICS.values())


@pytest.mark.parametrize("metric, direction", [("val_loss", "minimize"), ("chrf", "maximize")])
def test_a_study_optimises_its_metric_in_the_metrics_direction(tmp_path, metric, direction):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"study": "s", "metric": metric, "base": {"train": {"max_steps": 1}}, "rows": []}))
    assert load_study(path).direction == direction


def test_result_json_keeps_every_declared_field_and_the_extras_after_them():
    result = RunResult.from_dict({"name": "r", "bleu": 1.5, "row": "A1", "seed": 2})
    out = result.as_dict()
    assert list(out)[:2] == ["name", "bleu"] and list(out)[-2:] == ["row", "seed"]
    assert "weights_max_rank_difference" not in out  # measured by multi-process runs only
    assert RunResult.from_dict(out).as_dict() == out
    assert {"bleu", "val_loss", "run_dir", "fixed_seconds"} <= set(result_keys("trial"))
    assert set(result_keys("column")) <= set(result_keys("trial"))  # a report column comes from the trial
    assert set(result_keys("shown")) - set(result_keys("trial")) == {"name"}

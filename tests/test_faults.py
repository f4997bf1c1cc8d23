"""The driver's rule for non-finite steps: stop after too many in a row, naming the checkpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from eopd_ray.config import load_config
from eopd_ray.faults import NonFiniteTrainingError, check_finite

REPO = Path(__file__).resolve().parents[1]


def _roles(skipped: int) -> SimpleNamespace:
    return SimpleNamespace(learner=SimpleNamespace(consecutive_skipped=skipped))


def test_skipped_steps_below_the_limit_go_on_and_at_it_stop(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "tiny.yaml", ["optim.max_nonfinite_steps=2"])
    check_finite(config, _roles(1), tmp_path, iteration=4)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteTrainingError, match="no checkpoint was written"):
        check_finite(config, _roles(2), tmp_path, iteration=4)  # type: ignore[arg-type]
    step = tmp_path / "checkpoints" / "step_3"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    with pytest.raises(NonFiniteTrainingError, match=r"the last finite checkpoint is .*step_3"):
        check_finite(config, _roles(5), tmp_path, iteration=4)  # type: ignore[arg-type]

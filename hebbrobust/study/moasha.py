"""MOASHA: multi-objective asynchronous successive halving, as a Ray Tune scheduler.

After Schmucker et al. 2021 ("Multi-objective multi-fidelity hyperparameter optimization with
application to fairness"), who ship it in Syne Tune: asynchronous successive halving (ASHA, Li et
al. 2020) whose comparisons at a rung rank trials by non-dominated sorting instead of one metric.

A trial reports at each rung (hebbrobust.trial.RungPlan: a result carrying `RUNG_KEY`, its
objectives measured on the validation split). The scheduler records the report among those of every
trial of the same model kind (`model.kind` in the trial's config; a study that does not search the
kind has one) that reached that rung before, ranks them all best first
(`hypervolume.rank_for_promotion`: non-dominated rank, then crowding distance within a rank, then
arrival order) and lets the trial go on iff it is among the best ceil(n / reduction) of the n
recorded there (so the first trial of a kind at a rung always goes on, as in ASHA); otherwise it
returns STOP. Kinds are ranked apart because their rung scores do not compare: a local trial's (a
probe head on part-trained filters) sit below backprop's, and a pooled rung stopped every local trial
in a reduced bench run (docs/fidelity.md). Results without `RUNG_KEY` (the final report) pass
untouched. A report with a missing objective counts as worst in that objective.

The scheduler holds plain data only (Tune pickles it into its experiment state). A resumed study
starts a fresh scheduler: rungs fill again from the trials of the new session.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from hebbrobust.hypervolume import rank_for_promotion

RUNG_KEY = "hebbrobust_rung"  # the rung index in a rung report (absent from the final report)
FRACTION_KEY = "hebbrobust_fidelity"  # the fraction of the trial's epochs done at that rung
KIND_PARAM = "model.kind"  # the searched parameter whose values a rung ranks apart


class MOASHA(FIFOScheduler):
    """Stops a trial at a rung unless it is in the best 1/reduction there by non-dominated sorting."""

    _supports_buffered_results = False  # decide at each rung, before the trial trains on

    def __init__(self, objectives: Sequence[tuple[str, str]], reduction: float = 3.0) -> None:
        super().__init__()
        if reduction <= 1:
            raise ValueError(f"moasha: reduction must be > 1, got {reduction}")
        self.objectives = [(str(m), str(mode)) for m, mode in objectives]
        self.reduction = float(reduction)
        self.rungs: dict[int, dict[str, list[float]]] = {}  # rung -> trial id -> objective values
        self.stopped: dict[str, int] = {}  # trial id -> the rung it was stopped at
        self.kinds: dict[str, str] = {}  # trial id -> its model kind ("" where the study does not search it)

    def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
        return True  # the objectives are ours; Tune's single metric/mode is not used

    def _values(self, result: dict[str, Any]) -> list[float]:
        out = []
        for name, mode in self.objectives:
            value = result.get(name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            out.append(float(value) if ok else (-math.inf if mode == "max" else math.inf))  # type: ignore[arg-type]
        return out

    def decide(self, trial_id: str, rung: int, values: Sequence[float], kind: str = "") -> bool:
        """Records `values` at `rung` for `trial_id` of model kind `kind` (a retried trial's report
        replaces its earlier one) and says whether it goes on, ranked among the trials of its kind."""
        recorded = self.rungs.setdefault(rung, {})
        recorded.pop(trial_id, None)
        recorded[trial_id] = [float(v) for v in values]
        self.kinds[trial_id] = kind
        ids = [i for i in recorded if self.kinds.get(i, "") == kind]
        points = np.asarray([recorded[i] for i in ids], dtype=float)
        finite = np.where(np.isfinite(points), points, np.nan)
        for j, (_, mode) in enumerate(self.objectives):  # +-inf (missing) -> just past the worst seen
            col = finite[:, j]
            low, high = (np.nanmin(col), np.nanmax(col)) if np.isfinite(col).any() else (0.0, 0.0)
            worst = low - 1.0 if mode == "max" else high + 1.0
            points[~np.isfinite(points[:, j]), j] = worst
        order = rank_for_promotion(points, self.objectives)
        keep = math.ceil(len(ids) / self.reduction)
        goes_on = trial_id in {ids[i] for i in order[:keep]}
        if not goes_on:
            self.stopped[trial_id] = rung
        return goes_on

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if RUNG_KEY not in result:
            return str(TrialScheduler.CONTINUE)
        kind = str((getattr(trial, "config", None) or {}).get(KIND_PARAM) or "")
        goes_on = self.decide(str(trial.trial_id), int(result[RUNG_KEY]), self._values(result), kind)
        return str(TrialScheduler.CONTINUE if goes_on else TrialScheduler.STOP)

    def debug_string(self) -> str:
        sizes = ", ".join(f"rung {r}: {len(v)}" for r, v in sorted(self.rungs.items()))
        return f"MOASHA(reduction {self.reduction:g}; {sizes or 'no reports yet'}; stopped {len(self.stopped)})"


def promoted(points: np.ndarray, objectives: Sequence[tuple[str, str]], reduction: float) -> np.ndarray:
    """Mask of the rows of `points` a rung holding all of them (synchronously) promotes: the best
    ceil(n / reduction) by `rank_for_promotion`."""
    order = rank_for_promotion(points, objectives)
    mask = np.zeros(len(points), dtype=bool)
    mask[order[: math.ceil(len(points) / reduction)]] = True
    return mask

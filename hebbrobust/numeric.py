"""The bottom numeric layer: helpers that several layers share and that import nothing of the
package (numpy, pandas, torch and numba only), so no import runs back up.

- `int_power_`: x**n in place by repeated squaring (models' activation, the Krotov rule's norm);
- `available_memory`: bytes free for a new allocation (the head decides whether σⁿ fits);
- `set_threads`: numba's thread count for the calling thread (the rule's kernel, the max-pool);
- `jit_pair`: a parallel and a serial numba build of one function, each with its own disk cache;
- `dominated_by`: which points of one set another set dominates (both already maximised);
- `pareto_front` / `pareto_rank`: take a DataFrame with one row per trial and a list of
  `(column, "max" | "min")` objectives. A row dominates another when it is at least as good in every
  objective and strictly better in one; equal rows do not dominate each other, so ties share a front.
  Rows with a missing (NaN/None) objective value are never on a front and get no rank.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

numba: Any
try:
    import numba
except ImportError:  # pragma: no cover - numba is a dependency
    numba = None

Objectives = Sequence[tuple[str, Literal["max", "min"] | str]]

_CHUNK = 1024  # rows compared at once: keeps the (chunk, n, m) comparison cube small


def int_power_(x: torch.Tensor, n: int) -> torch.Tensor:
    """x**n for an integer n >= 1 by repeated squaring, overwriting x (which is returned for n a power of
    two). Vectorised multiplies: several times faster than a general pow on CPU."""
    result: torch.Tensor | None = None
    while n:
        if n & 1:
            result = (x if n == 1 else x.clone()) if result is None else result.mul_(x)
        n >>= 1
        if n:
            x.mul_(x)
    assert result is not None
    return result


def available_memory() -> int:
    """Bytes of memory available to a new allocation now: Linux's MemAvailable (free plus reclaimable
    page cache), else free pages by sysconf, else 0."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def set_threads(n: int) -> None:
    """Use at most n threads (and at most numba's pool) in the calling thread; nothing without numba."""
    if numba is not None:
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def jit_pair(fn: Callable[..., Any], **options: Any) -> tuple[Any, Any]:
    """(parallel, serial) numba builds of fn, compiled on first use and cached on disk.

    Each is compiled from its own copy of fn, named fn_parallel and fn_serial: numba's disk cache keys an
    entry by the function's qualified name, signature and bytecode, not by its compile flags, so two builds
    of one function load each other's machine code. A one-thread trial's serial build then ran the parallel
    one from the cache, which started numba's OpenMP pool and set the process's OpenMP thread count (torch's
    too) to all cores."""

    def renamed(suffix: str) -> Callable[..., Any]:
        copy = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_{suffix}", fn.__defaults__)
        copy.__qualname__ = f"{fn.__qualname__}_{suffix}"
        copy.__module__ = fn.__module__
        return copy

    return (
        numba.njit(parallel=True, cache=True, **options)(renamed("parallel")),
        numba.njit(cache=True, **options)(renamed("serial")),
    )


def _oriented(df: pd.DataFrame, objectives: Objectives) -> tuple[np.ndarray, np.ndarray]:
    """(values to maximise (n, m), rows that have every objective) from `df`."""
    if not objectives:
        raise ValueError("pareto: need at least one objective")
    cols = []
    for name, mode in objectives:
        if mode not in ("max", "min"):
            raise ValueError(f"pareto: mode of {name!r} must be 'max' or 'min', got {mode!r}")
        if name not in df.columns:
            raise KeyError(f"pareto: no column {name!r}; columns: {', '.join(map(str, df.columns))}")
        col = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        cols.append(col if mode == "max" else -col)
    values: np.ndarray = np.stack(cols, axis=1) if len(df) else np.zeros((0, len(cols)))
    valid: np.ndarray = ~np.isnan(values).any(axis=1)
    return values, valid


def dominated_by(values: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Mask of the rows of `values` (n, m; maximised, no NaN) that some row of `others` (k, m) dominates."""
    out = np.zeros(len(values), dtype=bool)
    for start in range(0, len(values), _CHUNK):
        block = values[start : start + _CHUNK]  # (c, m)
        # others[j] dominates block[i]: all(others >= block) and any(others > block)
        ge = np.all(others[None, :, :] >= block[:, None, :], axis=2)  # (c, k)
        gt = np.any(others[None, :, :] > block[:, None, :], axis=2)
        out[start : start + len(block)] = np.any(ge & gt, axis=1)
    return out


def _non_dominated(values: np.ndarray) -> np.ndarray:
    """Mask of the rows of `values` (n, m; maximised, no NaN) that no other row dominates."""
    return ~dominated_by(values, values)


def pareto_front(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """True for the rows of `df` on the Pareto front of `objectives` (bool Series on df.index)."""
    values, valid = _oriented(df, objectives)
    mask = np.zeros(len(df), dtype=bool)
    idx = np.flatnonzero(valid)
    mask[idx] = _non_dominated(values[idx])
    return pd.Series(mask, index=df.index, name="on_front")


def pareto_rank(df: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """Non-dominated sorting: 0 for the front, 1 for the front once the front is removed, ...;
    <NA> for rows with a missing objective (nullable Int64 Series on df.index)."""
    values, valid = _oriented(df, objectives)
    rank = np.full(len(df), -1, dtype=np.int64)
    remaining = np.flatnonzero(valid)
    level = 0
    while remaining.size:
        front = _non_dominated(values[remaining])
        rank[remaining[front]] = level
        remaining = remaining[~front]
        level += 1
    out = pd.Series(rank, index=df.index, name="pareto_rank").astype("Int64")
    out[~valid] = pd.NA
    return out


def with_front(trials: pd.DataFrame, objectives: Objectives, *, finished_only: bool = True) -> pd.DataFrame:
    """`trials` with `on_front` and `pareto_rank` columns. With `finished_only`, only rows whose
    `status` is FINISHED (when there is a status column) compete for the front."""
    out = trials.copy()
    eligible = out
    if finished_only and "status" in out.columns:
        eligible = out[out["status"] == "FINISHED"]
    if any(name not in out.columns for name, _ in objectives):  # nothing reported them yet
        out["on_front"] = False
        out["pareto_rank"] = pd.Series(pd.NA, index=out.index, dtype="Int64")
        return out
    out["on_front"] = pareto_front(eligible, objectives).reindex(out.index, fill_value=False).astype(bool)
    out["pareto_rank"] = pareto_rank(eligible, objectives).reindex(out.index).astype("Int64")
    return out


def front_table(trials: pd.DataFrame, objectives: Objectives) -> pd.DataFrame:
    """The rows of `trials` (with `on_front`, see `with_front`) on the front, best first objective first."""
    if "on_front" not in trials.columns:
        trials = with_front(trials, objectives)
    front = trials[trials["on_front"]]
    name, mode = objectives[0]
    return front.sort_values(name, ascending=(mode == "min"), kind="stable")

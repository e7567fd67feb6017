"""Transfer of adversarial examples between models (Krotov & Hopfield 2018: examples made on low-n,
ReLU-like models fail to fool high-n ones). PGD examples are crafted on each source model with our
pgd() and every target model is evaluated on them; the diagonal is each model's white-box PGD accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd
import torch
from torch import Tensor

from hebbrobust.attacks import Model, pgd
from hebbrobust.evaluate import predict


def transfer_matrix(
    models: dict[str, Model],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    alpha: float = 0.25,
    steps: int = 20,
    restarts: int = 1,
    seed: int | Mapping[str, int] = 0,
    batch_size: int = 500,
    tick: Callable[[], None] = lambda: None,
) -> pd.DataFrame:
    """Accuracy of every target model (columns) on L∞ PGD examples crafted on every source (rows).

    eps in units of 1/255; PGD as on the per-trial grid: random start, `restarts`, step alpha·ε,
    `steps` iterations, the starts seeded by `seed` (one int: the same starts for every source; a
    mapping: each source's own seed). A fresh generator per source, advanced batch by batch as
    `evaluate.robust_accuracy_grid` advances its generator for this ε: with each source's own attack
    seed and the grid's batch_size, n_images and PGD settings, the diagonal equals each model's
    white-box pgd_acc@ε image for image. Images are absolute accuracy over all of x (a clean mistake
    counts as broken). All models live on x's device. `tick` is called once per source."""
    labels = list(models)
    rows = []
    for src in labels:
        gen = torch.Generator(device=x.device).manual_seed(seed if isinstance(seed, int) else seed[src])
        correct = dict.fromkeys(labels, 0)
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            x_adv = pgd(models[src], xb, yb, eps=eps / 255, alpha=alpha * eps / 255, steps=steps,
                        random_start=True, restarts=restarts, generator=gen)
            for tgt in labels:
                correct[tgt] += int((predict(models[tgt], x_adv, batch_size=batch_size)[0] == yb).sum())
        rows.append([correct[t] / max(x.shape[0], 1) for t in labels])
        tick()
    return pd.DataFrame(rows, index=pd.Index(labels, name="source"), columns=pd.Index(labels, name="target"))

"""PGD throughput (images x steps per second) on CIFAR-10-sized inputs with a thesis-shaped model.

Model: conv 100 filters 4x4 (no bias) -> maxpool(9, stride 2) -> relu -> linear(100*11*11, 10).
Prints the PGD rate next to a bare forward+backward loop on the same batch (the attack's floor),
measured in the same run.

    python scripts/bench_attacks.py [--device cpu|cuda] [--batch 500] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hebbrobust.attacks import fgsm, pgd


def thesis_shaped_model(filters: int = 100) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, filters, 4, bias=False),  # (B, F, 29, 29)
        nn.MaxPool2d(9, stride=2),  # (B, F, 11, 11)
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(filters * 11 * 11, 10),
    )


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = thesis_shaped_model().to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps = 8 / 255

    def bare() -> None:
        for _ in range(args.steps):
            xg = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    fgsm(model, x, y, eps=eps)  # warm-up
    t_pgd = best_of(args.repeats, lambda: pgd(model, x, y, eps=eps, alpha=eps / 4, steps=args.steps,
                                              random_start=True))
    t_bare = best_of(args.repeats, bare)
    t_fgsm = best_of(args.repeats, lambda: fgsm(model, x, y, eps=eps))
    work = args.batch * args.steps
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}, steps {args.steps}, input 3x32x32")
    print(f"pgd                : {t_pgd:7.3f} s  {work / t_pgd:9.0f} image-steps/s")
    print(f"bare fwd+bwd loop  : {t_bare:7.3f} s  {work / t_bare:9.0f} image-steps/s  "
          f"(pgd overhead {t_pgd / t_bare - 1:+.1%})")
    print(f"fgsm (1 step)      : {t_fgsm:7.3f} s  {args.batch / t_fgsm:9.0f} images/s")


if __name__ == "__main__":
    main()

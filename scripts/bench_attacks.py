"""PGD throughput (images x steps per second) on CIFAR-10-sized inputs with hebbrobust's own model.

Model: HebbCNN, thesis-shaped: conv F filters 4x4 (local currents, p=4, or plain for --kind backprop)
-> maxpool(9, stride 2) -> ELU^n -> linear(F*11*11, 10). Prints the PGD rate next to a bare
forward+backward loop on the same batch (the attack's floor). Then HebbCNN's block-wise CPU conv+pool
(features(), with its hand-written backward) against the dense conv -> max_pool2d composition under
autograd: pool features (dense channels-last and NCHW, the slow CPU max-pool layout), the max-pool alone
(hebbrobust's compiled one against torch's, on one block), one input gradient (an attack step) and, for
--kind backprop, one training step; all measured in the same run.

    python scripts/bench_attacks.py [--device cpu|cuda] [--filters 100] [--kind local|backprop]
                                    [--batch 500] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hebbrobust import _maxpool
from hebbrobust.attacks import eval_mode, fgsm, pgd
from hebbrobust.config import ModelConfig
from hebbrobust.models import CPU_BLOCK_CURRENTS, HebbCNN, local_currents

P = 4.0  # the thesis-best rule power


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
    parser.add_argument("--filters", type=int, default=100)
    parser.add_argument("--kind", choices=["local", "backprop"], default="local")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    power = 16 if args.kind == "local" else 1
    cfg = ModelConfig(kind=args.kind, filters=args.filters, kernel=4, pool=9, activation="elu", power=power)
    model = HebbCNN(cfg, (3, 32, 32), 10, P).to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps = 8 / 255

    def bare() -> None:
        with eval_mode(model):  # frozen parameters, as in the attacks
            for _ in range(args.steps):
                xg = x.clone().requires_grad_(True)
                torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)

    fgsm(model, x, y, eps=eps)  # warm-up
    t_pgd = best_of(args.repeats, lambda: pgd(model, x, y, eps=eps, alpha=eps / 4, steps=args.steps,
                                              random_start=True))
    t_bare = best_of(args.repeats, bare)
    t_fgsm = best_of(args.repeats, lambda: fgsm(model, x, y, eps=eps))
    w = model.conv_weight

    def dense(xb: torch.Tensor, layout: torch.memory_format = torch.channels_last) -> torch.Tensor:
        xb = xb.contiguous(memory_format=layout)
        h = local_currents(xb, w, P) if args.kind == "local" else F.conv2d(xb, w)
        return F.max_pool2d(h.contiguous(memory_format=layout), 9, 2)

    def input_grad(features: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        with eval_mode(model):
            xg = x.clone().requires_grad_(True)
            return torch.autograd.grad(F.cross_entropy(model.classify(features(xg)), y), xg)[0]

    def train_step(features: Callable[[torch.Tensor], torch.Tensor]) -> None:
        model.zero_grad()
        F.nll_loss(model.classify(features(x)), y).backward()

    with torch.no_grad():
        t_feat = best_of(args.repeats, lambda: model.features(x))
        t_cl = best_of(args.repeats, lambda: dense(x))
        t_nchw = best_of(args.repeats, lambda: dense(x, torch.contiguous_format))
        want = dense(x)
        feat_err = ((model.features(x) - want).abs().max() / want.abs().max()).item()
        # the pool alone, on one of HebbCNN's blocks of conv output (compiled on CPU, torch's elsewhere)
        xb = x[: max(1, CPU_BLOCK_CURRENTS // (args.filters * 29 * 29))].contiguous(memory_format=torch.channels_last)
        hb = local_currents(xb, w, P) if args.kind == "local" else F.conv2d(xb, w)
        t_pool = best_of(args.repeats * 3, lambda: _maxpool.max_pool2d_with_indices(hb, 9, 2))
        t_pool_torch = best_of(args.repeats * 3, lambda: F.max_pool2d_with_indices(hb, 9, 2))
    t_grad = best_of(args.repeats, lambda: input_grad(model.features))
    t_grad_dense = best_of(args.repeats, lambda: input_grad(dense))
    want = input_grad(dense)
    grad_err = ((input_grad(model.features) - want).abs().max() / want.abs().max()).item()
    work = args.batch * args.steps
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.kind} model F={args.filters}, batch {args.batch}, steps {args.steps}, input 3x32x32")
    print(f"pgd                : {t_pgd:7.3f} s  {work / t_pgd:9.0f} image-steps/s")
    print(f"bare fwd+bwd loop  : {t_bare:7.3f} s  {work / t_bare:9.0f} image-steps/s  "
          f"(pgd overhead {t_pgd / t_bare - 1:+.1%})")
    print(f"fgsm (1 step)      : {t_fgsm:7.3f} s  {args.batch / t_fgsm:9.0f} images/s")
    print(f"features (no grad) : {t_feat:7.3f} s HebbCNN vs dense {t_cl:.3f} s channels-last "
          f"({t_cl / t_feat:.1f}x), {t_nchw:.3f} s NCHW ({t_nchw / t_feat:.1f}x); max rel diff {feat_err:.1e}")
    if device.type == "cpu":  # elsewhere HebbCNN pools with torch's own
        print(f"max-pool + argmax  : {t_pool * 1e3:7.2f} ms ours vs torch's {t_pool_torch * 1e3:.2f} ms "
              f"({t_pool_torch / t_pool:.1f}x), on one block of conv output ({len(xb)} images)")
    print(f"input gradient     : {t_grad:7.3f} s HebbCNN vs dense {t_grad_dense:.3f} s "
          f"({t_grad_dense / t_grad:.1f}x); max rel diff {grad_err:.1e}")
    if args.kind == "backprop":
        t_train = best_of(args.repeats, lambda: train_step(model.features))
        t_train_dense = best_of(args.repeats, lambda: train_step(dense))
        print(f"train step         : {t_train:7.3f} s HebbCNN vs dense {t_train_dense:.3f} s "
              f"({t_train_dense / t_train:.1f}x)")

if __name__ == "__main__":
    main()

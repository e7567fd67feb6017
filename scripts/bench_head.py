"""Head training on frozen filters: seconds per epoch with sigma^n applied once to all pool outputs
(hebbrobust.train.activated_features) against sigma^n applied to every batch (the path taken when the fp32
activations do not fit memory), on pool outputs of the thesis-best shape (F=400, 11x11 after pool 9 stride 2,
ELU^16, batch 1000), held in fp16 as a 50,000-image trial holds them. Both runs train the same head from the
same start; the script checks that their weights are equal bit for bit. Prints both rates, the one-off cost
of the activations and the 100-epoch, 50,000-image figures they imply (the thesis-best trial's head).

    python scripts/bench_head.py [--images 10000] [--epochs 3] [--filters 400] [--power 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from hebbrobust import train
from hebbrobust.config import ModelConfig, OptimConfig
from hebbrobust.models import HebbCNN


def run(n: int, filters: int, power: int, epochs: int, *, once: bool) -> tuple[torch.Tensor, list[float], float]:
    """Head weights, per-epoch seconds (the first without the activations) and the activations' seconds."""
    torch.manual_seed(0)
    model = HebbCNN(ModelConfig(filters=filters, kernel=4, pool=9, activation="elu", power=power), (3, 32, 32), 10, 4.0)
    f, h, w = model.feature_shape
    gen = torch.Generator().manual_seed(1)
    raw = (torch.rand(n, f, h, w, generator=gen) * 1.2).to(torch.float16)  # currents after the pool: mostly > 0
    y = torch.randint(0, 10, (n,), generator=gen)
    x = torch.empty(n, 3, 32, 32)  # only its length and device are read: the features come from `raw`
    t_act = 0.0
    if once:
        start = time.perf_counter()
        train.activated_features(model, raw)  # what the first batch does; timed alone (then freed)
        t_act = time.perf_counter() - start
    budget = train.ACTIVATED_BYTES
    train.ACTIVATED_BYTES = budget if once else 0
    marks = [time.perf_counter()]
    try:
        train.fit_head(
            model, x, y, OptimConfig(lr=2e-3, epochs=epochs, batch_size=1000), seed=0,
            on_epoch=lambda *_: marks.append(time.perf_counter()), features=lambda: raw,
        )
    finally:
        train.ACTIVATED_BYTES = budget
    per_epoch = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    per_epoch[0] -= t_act
    return model.head.weight.detach().clone(), per_epoch, t_act


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--filters", type=int, default=400)
    parser.add_argument("--power", type=int, default=16)
    args = parser.parse_args()
    w_batch, t_batch, _ = run(args.images, args.filters, args.power, args.epochs, once=False)
    w_once, t_once, t_act = run(args.images, args.filters, args.power, args.epochs, once=True)
    per_batch, once = min(t_batch), min(t_once)
    scale = 50_000 / args.images
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.images} images x "
          f"{args.filters}x11x11 fp16 pool outputs, ELU^{args.power}, batch 1000, best of {args.epochs} epochs")
    print(f"sigma^n per batch : {per_batch:7.3f} s/epoch")
    print(f"sigma^n once      : {once:7.3f} s/epoch ({per_batch / once:.2f}x), plus {t_act:.2f} s once")
    print(f"thesis-best head (50,000 images, 100 epochs): {100 * per_batch * scale:.0f} s per batch vs "
          f"{(100 * once + t_act) * scale:.0f} s once")
    print(f"same head weights bit for bit: {torch.equal(w_batch, w_once)}")


if __name__ == "__main__":
    main()

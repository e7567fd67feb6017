"""The interface every local learning rule implements, documented once.

A rule trains the F conv filters of the local model without backprop. Its state is only the weight
matrix W (F, N), one filter per row, N = C·w·w ordered like a conv weight (F, C, w, w).reshape(F, -1)
(= the row order of torch.nn.functional.unfold). The rule sees image patches v scaled to unit p-norm.

When it is called: train.fit_filters_local() calls `train_step` once per minibatch of images, with the
learning rate of the current epoch (from the rule's schedule). What one train_step does depends on
RuleConfig.semantics:

- "batch": one update from all B·P patches of the minibatch;
- "position": one update per patch position (P updates, each from the B patches at that position).

`delta` is the pure core both use: the raw update direction for one update,

    weights (F, N), patches (B, N) -> delta (F, N),

before the learning rate and the max-normalisation (RuleConfig.normalize) are applied. Plasticity is
off everywhere else: evaluation, attacks and the classifier head never call a rule.

A rule is a module of pure functions (hebbrobust.rules.krotov is one); `LocalRule` is satisfied by
such a module, so callers can hold "the rule" as a value and tests can run one suite over every rule.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from hebbrobust.config import RuleConfig


@runtime_checkable
class LocalRule(Protocol):
    """A local learning rule: see the module docstring for when each function is called."""

    def init_weights(self, filters: int, n_inputs: int, *, seed: int, std: float = 1.0) -> Tensor:
        """Initial weights (F, N) float32 on the CPU, a function of the seed only."""
        ...

    def delta(self, weights: Tensor, patches: Tensor, cfg: RuleConfig) -> Tensor:
        """The update direction ΔW (F, N) from weights (F, N) and normalised patches (B, N); pure."""
        ...

    def train_step(self, weights: Tensor, images: Tensor, cfg: RuleConfig, lr: float) -> None:
        """Train weights (F, N) in place on one minibatch of images (B, C, H, W) at learning rate lr."""
        ...

    def lr_at(self, epoch: int, epochs: int, cfg: RuleConfig) -> float:
        """The learning rate of `epoch` (0-based) out of `epochs`, from cfg's schedule."""
        ...

"""hebbrobust: hyperparameter studies of a local (Krotov-Hopfield) learning rule against backprop,
judged on clean accuracy and adversarial robustness."""

__version__ = "0.1.0"

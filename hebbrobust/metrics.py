"""Metric names, in one place: what a trial reports (evaluate and trial write them; the study,
the report and the spec checks read them). Bottom layer: imports nothing."""

CLEAN_ACC = "clean_acc"
TRAIN_SECONDS = "train_seconds"
UNCONVERGED_FRAC = "unconverged_frac"
UNCONVERGED_FRAC_NORM_ONLY = "unconverged_frac_norm_only"
GRID_CLEAN_ACC = "grid_clean_acc"
GRID_IMAGES = "grid_images"
RADIUS_IMAGES = "radius_images"
CONFIDENT_IMAGES = "confident_images"  # correct test images with softmax > attack.confidence
ATTACK_SECONDS = "attack_seconds"
MASK_PGD_LE_FGSM = "mask_pgd_le_fgsm"
MASK_PGD_MINUS_FGSM_MAX = "mask_pgd_minus_fgsm_max"
MASK_LARGE_EPS_OK = "mask_large_eps_ok"
MASK_LARGE_EPS_ACC = "mask_large_eps_acc"
MASK_ZERO_GRAD_OK = "mask_zero_grad_ok"
MASK_ZERO_GRAD_FRAC = "mask_zero_grad_frac"
MASK_ALL_OK = "mask_all_ok"
# the audit (hebbrobust.audit): worst_acc@<e> is grid_metric(WORST, e)
WORST = "worst"
AUDIT_IMAGES = "audit_images"
AUDIT_SECONDS = "audit_seconds"
MASK_PGD_LE_SQUARE = "mask_pgd_le_square"
MASK_PGD_MINUS_SQUARE_MAX = "mask_pgd_minus_square_max"
MASK_PGD_WORST_OK = "mask_pgd_worst_ok"
MASK_PGD_MINUS_WORST_MAX = "mask_pgd_minus_worst_max"
FILTER_SECONDS = "filter_seconds"
FILTERS_CACHE_HIT = "filters_cache_hit"
FEATURES_CACHE_HIT = "features_cache_hit"
FEATURE_SECONDS = "feature_seconds"  # the head's pool outputs: computed, or loaded from the feature cache
FILTER_SECONDS_SAVED = "filter_seconds_saved"
N_TRAIN = "n_train"
N_TEST = "n_test"
GATED = "gated"  # 1: the filters ended below rule.min_converged and got no head (0: passed the gate)
GATED_REASON = "gated_reason"  # why, in words (also the MLflow tag hebbrobust.gated; read back as this column)

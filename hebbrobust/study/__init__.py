"""Studies on Ray Tune + Optuna + MLflow: the only package that imports ray."""

from hebbrobust.study.tuner import (
    StudyOutcome,
    StudyProgress,
    find_study_dir,
    list_studies,
    resume_study,
    run_study,
    show_study,
)

__all__ = [
    "StudyOutcome",
    "StudyProgress",
    "find_study_dir",
    "list_studies",
    "resume_study",
    "run_study",
    "show_study",
]

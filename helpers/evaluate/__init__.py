"""Evaluating a classifier (lesson 06): predictions, metrics, calibration and their figures.
Everything public is importable from `helpers.evaluate`.
"""
from helpers._moved import forwarder
from helpers.evaluate.calibration import (  # noqa: F401
    ReliabilityBins,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from helpers.evaluate.figures import (  # noqa: F401
    plot_confusion_matrix,
    plot_error_gallery,
    plot_reliability,
)
from helpers.evaluate.metrics import (  # noqa: F401
    ClassReport,
    ClassScores,
    ConfusedPair,
    PairedComparison,
    accuracy,
    accuracy_standard_error,
    bootstrap_ci,
    confusion_matrix,
    most_confident_mistakes,
    most_confused_pairs,
    noise_threshold,
    paired_comparison,
    per_class_report,
    top_k_accuracy,
)
from helpers.evaluate.predict import (  # noqa: F401
    TTA_MODES,
    TTA_VIEWS,
    Predictions,
    predict,
)

__getattr__ = forwarder(__name__)  # names that moved to a lesson companion or another module

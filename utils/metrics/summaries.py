"""AUROC, average precision, F1-max and AUPRO from a ``ThresholdCurve`` (all exact, vectorised).

Each returns NaN when the curve lacks positives or negatives; the caller decides what to log.
"""
import numpy as np

from utils.metrics.curves import ThresholdCurve


def _defined(curve: ThresholdCurve) -> bool:
    return curve.positives > 0 and curve.negatives > 0


def auroc(curve: ThresholdCurve) -> float:
    """Area under the ROC curve, trapezoids from (0,0) (= sklearn roc_curve + auc).

    Integer arithmetic until the last division: sum of dFP * (TP_prev + TP) / (2 P N).
    """
    if not _defined(curve):
        return float("nan")
    d_fp = np.diff(curve.fps, prepend=0)
    tp_pairs = curve.tps + np.concatenate(([0], curve.tps[:-1]))
    twice_area = int(np.dot(d_fp, tp_pairs))
    return twice_area / (2.0 * curve.positives * curve.negatives)


def average_precision(curve: ThresholdCurve) -> float:
    """sklearn ``average_precision_score``: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    if not _defined(curve):
        return float("nan")
    d_tp = np.diff(curve.tps, prepend=0)
    gains = d_tp > 0  # only points that add positives weigh (and these never divide by 0)
    precision = curve.tps[gains] / (curve.tps[gains] + curve.fps[gains])
    return float(np.dot(d_tp[gains], precision) / curve.positives)


def f1_max(curve: ThresholdCurve) -> float:
    """Max over thresholds of F1 = 2PR/(P+R) = 2 TP / (TP + FP + #positives) (0 where TP = 0)."""
    if not _defined(curve):
        return float("nan")
    return float(np.max(2.0 * curve.tps / (curve.tps + curve.fps + curve.positives)))


def area_up_to(x: np.ndarray, y: np.ndarray, x_limit: float) -> float:
    """Trapezoid area under y(x) for x in [x[0], x_limit], x non-decreasing.

    When x_limit falls between two points, y is interpolated linearly there.
    """
    inside = int(np.searchsorted(x, x_limit, side="right"))  # points with x <= x_limit
    xs, ys = x[:inside], y[:inside]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1])) / 2.0)
    if inside < len(x) and xs[-1] < x_limit:
        x0, y0, x1, y1 = xs[-1], ys[-1], x[inside], y[inside]
        y_at = y0 + (y1 - y0) * (x_limit - x0) / (x1 - x0)
        area += float((x_limit - x0) * (y0 + y_at) / 2.0)
    return area


def aupro(curve: ThresholdCurve, fpr_limit: float = 0.3) -> float:
    """Normalised area under PRO(FPR) for FPR in [0, fpr_limit] (MVTec AD definition).

    FPR over normal pixels (outside every GT region); PRO = mean over regions of the covered share.
    The curve starts at (0, 0) (threshold above every score); values are clipped to 1 against
    round-off of the cumulative sums.
    """
    if curve.overlap is None:
        raise ValueError("aupro needs a curve built with GT region weights (threshold_curve(..., weights))")
    if not _defined(curve) or curve.n_regions == 0:
        return float("nan")
    fpr = np.concatenate(([0.0], curve.fps / curve.negatives))
    pro = np.minimum(np.concatenate(([0.0], curve.overlap / curve.n_regions)), 1.0)
    return float(area_up_to(fpr, pro, fpr_limit) / fpr_limit)

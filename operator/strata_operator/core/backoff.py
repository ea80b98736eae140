"""The one doubling delay every wait of the operator grows by: a gang's restarts, a reconcile that keeps failing,
an API call retried, a served model the replicas refuse. Pure."""

from __future__ import annotations

MAX_DOUBLINGS = 64
"""The exponent stops here: past it the float would overflow long before any ceiling a setting gives."""
FAILED_PASS_BASE_S = 0.5
"""The first wait after a reconcile pass that failed."""


def doubling_s(base_s: float, most_s: float, count: int) -> float:
    """The wait before the ``count``-th repeat: ``base_s`` x 2^(count - 1), at most ``most_s`` (``count`` 0 or less:
    ``base_s``)."""
    return float(min(most_s, base_s * 2.0 ** min(MAX_DOUBLINGS, max(0, count - 1))))


def failure_backoff_s(failures: int, most_s: float) -> float:
    """Wait after the ``failures``-th failed pass in a row: :data:`FAILED_PASS_BASE_S` doubling, at most ``most_s``
    (the resync interval). A pass that fails again at once (a call the API server keeps refusing) is not a hot
    loop."""
    return doubling_s(FAILED_PASS_BASE_S, most_s, failures)

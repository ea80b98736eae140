"""The latest demand forecasts, published by the background forecaster and read by requests without waiting.

The forecaster replaces the whole table at once under a lock; requests copy a reference. Nothing here fits a
model, so reading a forecast on the request path costs a dictionary lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from strata_scheduler.filtering import HoldBack

HIGH = "high"
LOW = "low"


@dataclass(frozen=True)
class Forecast:
    """GPU demand of one series (GPU type x priority class) ``horizon_min`` after ``made_at``."""

    gpu_type: str
    priority: str
    made_at: datetime
    horizon_min: int
    mean: float
    lower: float
    upper: float
    band: float
    """Nominal coverage of [lower, upper], e.g. 0.8."""
    method: str
    weights: Mapping[str, float] = field(default_factory=dict)
    """The mix of candidate forecasts the forecaster chose for this series (name -> weight)."""
    dropped: Mapping[str, str] = field(default_factory=dict)
    """Candidates that failed in this round and were left out of the mix (name -> reason, e.g. ``raised``)."""

    def to_json(self) -> dict[str, object]:
        return {
            "gpuType": self.gpu_type,
            "priority": self.priority,
            "madeAt": self.made_at.isoformat(),
            "horizonMinutes": self.horizon_min,
            "mean": round(self.mean, 3),
            "lower": round(self.lower, 3),
            "upper": round(self.upper, 3),
            "band": self.band,
            "method": self.method,
            "blend": dict(self.weights),
            "dropped": dict(self.dropped),
        }


class ForecastBoard:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forecasts: dict[tuple[str, str], Forecast] = {}
        self.last_error: str | None = None

    def publish(self, forecasts: dict[tuple[str, str], Forecast]) -> None:
        with self._lock:
            self._forecasts = dict(forecasts)

    def latest(self) -> dict[tuple[str, str], Forecast]:
        with self._lock:
            return self._forecasts

    def hold_back(self) -> HoldBack:
        """The reserved-capacity hold: the upper band edge of high-priority demand, by GPU type."""
        latest = self.latest()
        upper = {gpu: f.upper for (gpu, priority), f in latest.items() if priority == HIGH}
        any_forecast = next(iter(latest.values()), None)
        if any_forecast is None:
            return HoldBack(upper_by_gpu_type={})
        return HoldBack(upper_by_gpu_type=upper, minutes=any_forecast.horizon_min, band=f"{any_forecast.band:.0%}")

"""The live controller's background refits: Prophet and the LSTM are fitted off the decision path.

A decision reads the forecasters' latest fits (:func:`strata_serving.forecasters.forecast_now`) and never waits
for one; this thread refits them every ``interval_s`` on the series the controller has recorded by then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import numpy as np

from strata_serving.forecasters import Candidate, FittedCandidate, refit_all

log = logging.getLogger(__name__)


class RefitWorker(threading.Thread):
    """Refits every fitted candidate every ``interval_s`` until :meth:`stop` (a daemon thread)."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        series: Callable[[], np.ndarray],
        horizon_bins: int,
        interval_s: float,
    ) -> None:
        super().__init__(name="strata-forecast-refit", daemon=True)
        self.candidates = candidates
        self.series = series
        self.horizon_bins = horizon_bins
        self.interval_s = interval_s
        self.rounds = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                took = refit_all(self.candidates, self.series(), self.horizon_bins)
            except Exception:  # reading the series failed: try again next round, the old fits still serve
                log.exception("forecast refit round failed")
            else:
                self.rounds += 1
                failed = [
                    f"{c.name}: {c.fits[-1].error}"
                    for c in self.candidates
                    if isinstance(c, FittedCandidate) and c.fits and c.fits[-1].model is None
                ]
                log.info("refitted in %.1f s%s", took, f"; failed: {'; '.join(failed)}" if failed else "")
            self._stopping.wait(self.interval_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self.join(timeout_s)

"""One Prophet fit with its files where the caller says, shared by the extender's demand forecaster and the serving
autoscaler's (both fit Prophet's mean and take their band from measured errors).

A fit goes through files: cmdstanpy writes Stan's data and initial values as JSON into its scratch directory, and
the optimiser (a child process) writes its output CSV and console log. All of them go under ``tmp_dir`` (None:
Python's temp dir, ``TMPDIR`` or else /tmp), which must be writable; in a pod whose root filesystem is read-only
that is a mounted volume. Each fit's output goes to a directory of its own there, removed when the fit ends
(cmdstanpy's default keeps every fit's output until the process exits, which in a long-running process fills the
volume). cmdstanpy picks its scratch directory once, from Python's temp dir, when it is first imported, and offers
no other way to choose it, so the first fit imports it with Python's temp dir pointed at ``tmp_dir`` and switches
it back at once.

pandas and Prophet are imported when a fit first runs, never when strata_api is imported: the contract itself needs
neither, and only the components whose extras carry them (the extender, the serving plane) call this. It is the one
module of strata_api allowed those imports (import-linter's leaf contract names it).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

_IMPORT = threading.Lock()


def fit_prophet_mean(
    history: Any,
    future: Any,
    *,
    daily: bool,
    weekly: bool,
    tmp_dir: Path | None,
    timeout_s: float | None,
) -> Any:
    """Prophet's mean (a numpy array) at every timestamp of ``future`` (a DataFrame with ``ds``), fitted on ``history``
    (``ds``, ``y``): no yearly terms and no uncertainty simulation. ``timeout_s`` bounds the Stan optimiser
    (cmdstanpy stops it and the fit raises ``TimeoutError``); None: no limit."""
    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    prophet = _import_prophet(tmp_dir)
    model = prophet(daily_seasonality=daily, weekly_seasonality=weekly, yearly_seasonality=False, uncertainty_samples=0)
    with tempfile.TemporaryDirectory(prefix="prophet-fit-", dir=tmp_dir) as fit_dir, warnings.catch_warnings():
        # Prophet 1.5 still passes inplace= to pandas 3.1, which deprecates it; nothing here can change that.
        warnings.filterwarnings("ignore", message="The inplace keyword", module="prophet")
        model.fit(history, output_dir=fit_dir, timeout=timeout_s)  # both go to cmdstanpy's optimize()
        return model.predict(future)["yhat"].to_numpy()


def _import_prophet(tmp_dir: Path | None) -> Any:
    """The Prophet class; the first call imports cmdstanpy with Python's temp dir set to ``tmp_dir``."""
    with _IMPORT:
        quiet_prophet_logs()
        if tmp_dir is not None and "cmdstanpy" not in sys.modules:
            import pandas  # noqa: F401  (imported before the switch, so the switch lasts only cmdstanpy's own import)

            saved, tempfile.tempdir = tempfile.tempdir, str(tmp_dir)
            try:
                import cmdstanpy  # noqa: F401
            finally:
                tempfile.tempdir = saved
        from prophet import Prophet

        quiet_prophet_logs()  # again: cmdstanpy sets its own level when first imported
        return Prophet


def quiet_prophet_logs() -> None:
    """cmdstanpy logs every optimiser start and stop at INFO, and a failed run at ERROR just before it raises the
    same news as an exception, which the forecasters log as one line; prophet.plot complains that plotly is absent.
    cmdstanpy, the first time it logs, adds a console handler and lowers its level to DEBUG unless some handler is
    already in place; the NullHandler is one (records still reach the application's handlers)."""
    cmdstanpy_log = logging.getLogger("cmdstanpy")
    if not cmdstanpy_log.handlers:
        cmdstanpy_log.addHandler(logging.NullHandler())
    cmdstanpy_log.setLevel(logging.CRITICAL)
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    logging.getLogger("prophet").setLevel(logging.WARNING)

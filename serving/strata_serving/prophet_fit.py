"""One Prophet fit with its files where the caller says (a pod's root filesystem may be read-only).

cmdstanpy picks its scratch directory once, from Python's temp dir, when it is first imported, so the first fit
imports it with Python's temp dir pointed at ``tmp_dir`` and switches it back at once; each fit's own files go to
a directory of their own under ``tmp_dir``, removed when the fit ends.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

_IMPORT = threading.Lock()


def fit_curve(stamps: Any, y: np.ndarray, observed: int, tmp_dir: Path | None, timeout_s: float | None) -> np.ndarray:
    """Prophet's mean at every one of ``stamps`` (pandas datetimes), fitted on the first ``observed`` of them.

    Daily seasonality once the data spans two days; no yearly or weekly terms (the slices are too short) and
    no uncertainty simulation (the band comes from measured errors).
    """
    import pandas as pd

    if tmp_dir is not None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
    prophet = _import_prophet(tmp_dir)
    frame = pd.DataFrame({"ds": stamps[:observed], "y": y[:observed]})
    days = (stamps[observed - 1] - stamps[0]).total_seconds() / 86400
    model = prophet(
        daily_seasonality=days >= 2, weekly_seasonality=False, yearly_seasonality=False, uncertainty_samples=0
    )
    with tempfile.TemporaryDirectory(prefix="prophet-fit-", dir=tmp_dir) as fit_dir, warnings.catch_warnings():
        # Prophet 1.5 still passes inplace= to pandas, which deprecates it; nothing here can change that.
        warnings.filterwarnings("ignore", message="The inplace keyword", module="prophet")
        model.fit(frame, output_dir=fit_dir, timeout=timeout_s)
        curve: np.ndarray = model.predict(pd.DataFrame({"ds": stamps}))["yhat"].to_numpy()
    return curve


def _import_prophet(tmp_dir: Path | None) -> Any:
    with _IMPORT:
        _quiet()
        if tmp_dir is not None and "cmdstanpy" not in sys.modules:
            import pandas  # noqa: F401  (imported before the switch, so the switch lasts only cmdstanpy's import)

            saved, tempfile.tempdir = tempfile.tempdir, str(tmp_dir)
            try:
                import cmdstanpy  # noqa: F401
            finally:
                tempfile.tempdir = saved
        from prophet import Prophet

        _quiet()  # again: cmdstanpy sets its own level when first imported
        return Prophet


def _quiet() -> None:
    # cmdstanpy logs every optimiser start and stop at INFO and adds a console handler unless one is present.
    cmdstanpy_log = logging.getLogger("cmdstanpy")
    if not cmdstanpy_log.handlers:
        cmdstanpy_log.addHandler(logging.NullHandler())
    cmdstanpy_log.setLevel(logging.CRITICAL)
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    logging.getLogger("prophet").setLevel(logging.WARNING)

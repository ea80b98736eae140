"""``python -m strata_scheduler``: the extender service (watch cache, demand recorder, forecaster, HTTP)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from strata_api.catalog import CatalogError, load_catalog
from strata_scheduler.service import ExtenderService
from strata_scheduler.settings import parse_settings


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    sys.setswitchinterval(settings.gil_switch_interval_s)  # process-wide, so here rather than in the service
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        catalog = load_catalog(settings.catalog)
    except CatalogError as error:
        print(f"strata-scheduler: {error}", file=sys.stderr)
        return 2
    try:
        service = ExtenderService(settings, catalog).start()
    except OSError as error:  # the port is taken, or the store's folder is not writable
        print(f"strata-scheduler: cannot start: {error}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

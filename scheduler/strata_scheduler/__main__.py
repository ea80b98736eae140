"""``python -m strata_scheduler``: the extender service (watch cache, demand recorder, forecaster, HTTP)."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Sequence

from aiohttp import web

from strata_scheduler.catalog import Catalog, CatalogError, load_catalog
from strata_scheduler.demand import DemandRecorder, DemandStore, HistorySource, PrometheusSource
from strata_scheduler.extender import Extender
from strata_scheduler.forecaster import ForecastConfig, ForecastWorker
from strata_scheduler.forecasts import ForecastBoard
from strata_scheduler.metrics import ExtenderMetrics
from strata_scheduler.scoring import Defaults
from strata_scheduler.server import build_app
from strata_scheduler.settings import Settings, parse_settings
from strata_scheduler.state import ClusterState
from strata_scheduler.watchers import api_client, start_watchers

log = logging.getLogger("strata_scheduler")


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        catalog = load_catalog(settings.catalog)
    except CatalogError as error:
        print(f"strata-scheduler: {error}", file=sys.stderr)
        return 2
    serve(settings, catalog)
    return 0


def serve(settings: Settings, catalog: Catalog) -> None:
    stop = threading.Event()
    state = ClusterState(high_priority=settings.high_priority)
    board = ForecastBoard()
    metrics = ExtenderMetrics(state.size)
    extender = Extender(
        state, catalog, board, metrics, Defaults(expected_runtime_s=settings.default_runtime_s), settings.pin_ttl_s
    )
    start_watchers(api_client(settings.kubeconfig), state, stop, settings.watch_crds)
    store = DemandStore(settings.store)
    DemandRecorder(state, store, metrics.registry, stop, settings.record_interval_s).start()
    source: HistorySource = PrometheusSource(settings.prometheus_url) if settings.prometheus_url else store
    ForecastWorker(
        source,
        board,
        metrics,
        stop,
        ForecastConfig(horizon_min=settings.horizon_min),
        interval_s=settings.forecast_interval_s,
        history_days=settings.history_days,
    ).start()
    log.info("serving the extender on http://%s:%d", settings.host, settings.port)
    try:
        web.run_app(
            build_app(extender, settings.max_body_bytes),
            host=settings.host,
            port=settings.port,
            print=None,
            access_log=None,
        )
    finally:
        stop.set()
        store.close()


if __name__ == "__main__":
    sys.exit(main())

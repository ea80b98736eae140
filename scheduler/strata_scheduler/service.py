"""The whole extender as one object: watch cache, demand recorder, forecaster and HTTP server, each in a thread.

``python -m strata_scheduler`` runs one; cluster tests and benchmarks run one in-process, which lets them stop
and restart the HTTP side alone (the "extender goes away" scenario) while the cache stays warm.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from strata_api.catalog import Catalog
from strata_scheduler.demand import DemandRecorder, DemandStore, HistorySource, PrometheusSource
from strata_scheduler.extender import Extender
from strata_scheduler.forecast_board import ForecastBoard
from strata_scheduler.forecasting import ForecastConfig, ForecastWorker, ProphetCurve
from strata_scheduler.metrics import ExtenderMetrics
from strata_scheduler.scoring import Defaults
from strata_scheduler.server import ExtenderServer
from strata_scheduler.settings import Settings
from strata_scheduler.state import ClusterState
from strata_scheduler.watchers import api_client, start_watchers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """Which background parts to run; tests switch off what they drive themselves."""

    watch: bool = True
    record: bool = True
    forecast: bool = True


class ExtenderService:
    def __init__(self, settings: Settings, catalog: Catalog, parts: Parts = Parts()):
        self.settings = settings
        self.parts = parts
        self.stop_event = threading.Event()
        self.state = ClusterState(high_priority=settings.high_priority)
        self.board = ForecastBoard()
        self.metrics = ExtenderMetrics(self.state.size)
        self.extender = Extender(
            self.state,
            catalog,
            self.board,
            self.metrics,
            Defaults(expected_runtime_s=settings.default_runtime_s),
            settings.pin_ttl_s,
            byte_fast_path=settings.byte_fast_path,
        )
        self.store: DemandStore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._server: ExtenderServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def start(self) -> ExtenderService:
        settings = self.settings
        if self.parts.watch:
            start_watchers(api_client(settings.kubeconfig), self.state, self.stop_event, settings.watch_crds)
        if self.parts.record or self.parts.forecast:
            self.store = DemandStore(settings.store)
        if self.parts.record and self.store is not None:
            recorder = DemandRecorder(
                self.state, self.store, self.metrics.registry, self.stop_event, settings.record_interval_s
            )
            recorder.start()
        if self.parts.forecast and self.store is not None:
            source: HistorySource = PrometheusSource(settings.prometheus_url) if settings.prometheus_url else self.store
            ForecastWorker(
                source,
                self.board,
                self.metrics,
                self.stop_event,
                ForecastConfig(horizon_min=settings.horizon_min),
                interval_s=settings.forecast_interval_s,
                history_days=settings.history_days,
                curve=ProphetCurve(tmp_dir=settings.forecast_tmp_dir, fit_timeout_s=settings.forecast_fit_timeout_s),
            ).start()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="extender-http", daemon=True)
        self._loop_thread.start()
        self.serve_http()
        return self

    def serve_http(self) -> None:
        """Start answering HTTP (again); blocks until the port is bound."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        log.info("serving the extender on %s", self.url)

    def stop_http(self) -> None:
        """Stop answering HTTP; caches, recorder and forecaster keep running."""
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(timeout=30)
            self._server = None

    async def _serve(self) -> None:
        server = ExtenderServer(self.extender, self.settings)
        self._server = await server.start(self.settings.host, self.settings.port)

    def stop(self) -> None:
        self.stop_http()
        self.stop_event.set()
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=10)
            self._loop.close()
        if self.store is not None:
            self.store.close()

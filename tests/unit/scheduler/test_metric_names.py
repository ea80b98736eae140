"""The extender's error counters exist at zero for every verb it serves, so a dashboard's rate() and the
StrataExtenderErrors alert read a series from the start, not only after the first error."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest

from strata_scheduler import server
from strata_scheduler.metrics import VERBS, ExtenderMetrics


def test_every_verb_the_server_routes_has_error_counters_at_zero() -> None:
    assert {f"/{verb}".encode() for verb in VERBS} == server.VERBS
    text = generate_latest(ExtenderMetrics(lambda: {}).registry).decode()
    for verb in VERBS:
        assert f'strata_extender_bad_requests_total{{verb="{verb}"}} 0.0' in text
        assert f'strata_extender_internal_errors_total{{verb="{verb}"}} 0.0' in text

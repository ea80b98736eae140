"""The operator's own API client (runtime.kube) when the API server throttles, fails or is away: how long it
waits, that it gives up within its bounds, and where its credentials come from.

A 401 after a token rotation and a 429 from API Priority and Fairness need a real API server: those are in
``tests/cluster/operator/test_credentials.py``.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import kopf
import pytest
import yaml

from strata_operator.runtime.kube import (
    Kube,
    RetryPolicy,
    RetryReason,
    parse_retry_after,
    retry_delay,
    with_kubeconfig_token_file,
)


def test_backoff_doubles_with_jitter_within_half_and_whole_and_stops_at_the_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.2, backoff_max_s=10.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 6.4), (7, 10.0), (30, 10.0)]:
        delays = [retry_delay(policy, attempt, None, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        assert len({round(d, 6) for d in delays}) > 100  # jittered: callers that failed together spread out


def test_a_servers_retry_after_is_waited_at_least_and_capped() -> None:
    policy = RetryPolicy(backoff_max_s=10.0)
    rng = random.Random(3)
    delays = [retry_delay(policy, 1, 2.0, rng) for _ in range(200)]
    assert all(2.0 <= d <= 2.5 for d in delays)
    assert retry_delay(policy, 1, 3600.0, rng) == 10.0  # a huge Retry-After must not park a reconcile
    assert retry_delay(policy, 1, 0.0, rng) == 0.0


def test_retry_after_is_read_as_seconds_or_as_an_http_date() -> None:
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now=now.timestamp()) == 0.0


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once, as when the API server restarts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_server_is_retried_a_bounded_number_of_times_and_counted() -> None:
    retries: Counter[str] = Counter()
    policy = RetryPolicy(attempts=4, budget_s=30.0, backoff_base_s=0.05, backoff_max_s=0.2)
    kube = Kube(
        kopf.ConnectionInfo(server=f"http://127.0.0.1:{closed_port()}"),
        policy=policy,
        on_retry=lambda reason: retries.update([reason]),
    )
    try:
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectionError):
            await kube.request("GET", "/api/v1/nodes")
        assert time.monotonic() - started < 5
        assert retries == {RetryReason.CONNECTION: 3}  # 4 tries: 3 retries, then the caller hears of it
    finally:
        await kube.close()


async def test_the_time_budget_ends_the_retries_before_the_tries_run_out() -> None:
    retries: list[str] = []
    policy = RetryPolicy(attempts=1000, budget_s=0.6, backoff_base_s=0.1, backoff_max_s=0.2)
    kube = Kube(kopf.ConnectionInfo(server=f"http://127.0.0.1:{closed_port()}"), policy=policy, on_retry=retries.append)
    try:
        started = time.monotonic()
        with pytest.raises(aiohttp.ClientConnectionError):
            await kube.request("GET", "/api/v1/nodes")
        assert time.monotonic() - started < 0.6 + 1.0  # no wait begins that would pass the budget
        assert 2 <= len(retries) < 20
    finally:
        await kube.close()


async def test_a_watch_that_cannot_be_opened_gives_up_within_the_same_bounds() -> None:
    retries: list[str] = []
    policy = RetryPolicy(attempts=3, budget_s=5.0, backoff_base_s=0.05, backoff_max_s=0.1)
    kube = Kube(kopf.ConnectionInfo(server=f"http://127.0.0.1:{closed_port()}"), policy=policy, on_retry=retries.append)
    try:
        with pytest.raises(aiohttp.ClientConnectionError):
            async for _ in kube.watch_lines("/api/v1/pods", "1", 5):
                pass
        assert retries == [RetryReason.CONNECTION] * 2
    finally:
        await kube.close()


def kubeconfig_with_token_file(folder: Path, token_file: Path) -> Path:
    path = folder / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "operator", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_kubeconfig_token_file_is_read_at_each_login(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    env = {"KUBECONFIG": str(kubeconfig_with_token_file(tmp_path, token_file))}
    login = kopf.ConnectionInfo(server="https://127.0.0.1:6443")  # what kopf's kubeconfig login finds: no token

    assert with_kubeconfig_token_file(login, env).token == "first-token"
    token_file.write_text("rotated-token\n")
    assert with_kubeconfig_token_file(login, env).as_http_headers() == {"Authorization": "Bearer rotated-token"}


def test_a_token_or_certificate_given_in_the_kubeconfig_wins_over_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    env = {"KUBECONFIG": str(kubeconfig_with_token_file(tmp_path, token_file))}
    inline = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="inline")
    assert with_kubeconfig_token_file(inline, env).token == "inline"
    no_config = {"KUBECONFIG": str(tmp_path / "absent")}
    assert with_kubeconfig_token_file(kopf.ConnectionInfo(server="https://x"), no_config).token is None


def test_the_retry_bounds_are_operator_settings() -> None:
    from strata_operator.settings import OperatorSettings

    settings = OperatorSettings.from_args(["--api-attempts", "3", "--api-retry-budget-s", "5"], env={})
    assert (settings.api_attempts, settings.api_retry_budget_s) == (3, 5.0)

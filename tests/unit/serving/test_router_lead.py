"""The autoscaler's lead while the router runs: the operator publishes the replicas' measured start-up in a file
(its ConfigMap, mounted), and the router takes each new value at its next decision, without a restart; a file that
is absent or malformed keeps the last good lead and never stops the decisions."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from strata_serving.autoscale import ScalingDecision, ScalingPolicy
from strata_serving.discovery import StaticSource
from strata_serving.forecasters import ForecastSettings
from strata_serving.router import Router
from strata_serving.router_settings import load_router_settings
from strata_serving.scaler import LeadFile, LiveScaler, usable_candidates

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

BIN_S = 15
MARGIN_S = 30.0  # ScalingPolicy's default margin past the lead


def write(path: Path, text: str) -> None:
    """Replace the file the way the kubelet updates a mounted ConfigMap: a new file swapped in."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


class Load:
    """A predictive scaler fed a load that grows by one request per bin, one decision per bin."""

    def __init__(self, lead: LeadFile) -> None:
        policy = ScalingPolicy(target=1.0, startup_s=lead.value_s, max_replicas=100, stabilisation_s=0)
        settings = ForecastSettings(bin_s=BIN_S, eval_origins=40)
        candidates = usable_candidates(settings, importable=frozenset()).usable  # no fits: persistence, seasonal
        self.scaler = LiveScaler(policy, BIN_S, candidates=candidates, forecast_settings=settings, lead=lead)
        self.bins = 0
        self.replicas = 1

    def decide(self, bins: int = 1) -> ScalingDecision:
        for _ in range(bins):
            self.bins += 1
            start = 1_000_000 + (self.bins - 1) * BIN_S
            for second in range(start, start + BIN_S):
                self.scaler.observe(second, requests=self.bins)
            decision = self.scaler.tick(start + float(BIN_S), ready=self.replicas, starting=0)
            self.replicas = decision.replicas
        return decision


def test_a_new_lead_in_the_file_is_the_next_decisions_and_a_malformed_one_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "autoscale-startup-s"
    write(path, "60")
    load = Load(LeadFile(path, default_s=60.0))
    decision = load.decide(60)  # enough history for a forecast
    assert decision.forecast is not None
    assert (load.scaler.policy.startup_s, decision.forecast.horizon_s) == (60.0, 60.0 + MARGIN_S)

    write(path, "90\n")  # the operator measured a slower start-up
    decision = load.decide()
    assert load.scaler.policy.startup_s == 90.0
    assert decision.forecast is not None
    assert decision.forecast.horizon_s == 90.0 + MARGIN_S

    with caplog.at_level(logging.WARNING, logger="strata_serving.scaler"):
        for bad in ("ninety", "-15", "nan", ""):
            write(path, bad)
            decision = load.decide(2)  # logged once per content, decided on each tick
            assert load.scaler.policy.startup_s == 90.0, bad
            assert decision.forecast is not None
            assert decision.forecast.horizon_s == 90.0 + MARGIN_S
    assert len([r for r in caplog.records if "lead file" in r.getMessage()]) == 4

    path.unlink()  # gone (the ConfigMap deleted, before the operator makes it again): the last good lead stays
    assert load.decide().forecast is not None
    assert load.scaler.policy.startup_s == 90.0
    write(path, "45")
    load.decide()
    assert load.scaler.policy.startup_s == 45.0


def test_until_the_file_appears_the_lead_is_the_configured_one(tmp_path: Path) -> None:
    lead = LeadFile(tmp_path / "missing", default_s=120.0)
    assert lead.read() == 120.0
    assert lead.read() == 120.0
    (tmp_path / "missing").write_text("30")
    assert lead.read() == 30.0


def test_the_refits_follow_the_lead(tmp_path: Path) -> None:
    path = tmp_path / "lead"
    write(path, "60")
    policy = ScalingPolicy(target=1.0, startup_s=60.0)
    settings = ForecastSettings(bin_s=BIN_S)
    candidates = usable_candidates(settings, importable=frozenset({"prophet"})).usable
    scaler = LiveScaler(policy, BIN_S, candidates=candidates, forecast_settings=settings, lead=LeadFile(path, 60.0))
    refits = scaler.refit_worker(600.0)
    assert refits is not None
    assert refits.horizon_bins == 6  # (60 + 30) s in 15 s bins
    write(path, "150")
    scaler.tick(1_000_000.0, ready=1, starting=0)
    assert refits.horizon_bins == 12  # (150 + 30) s: the next refit fits for the new horizon


def test_the_router_reads_the_lead_file_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "lead"
    write(path, "75")
    env = {
        "STRATA_ROUTER_AUTOSCALE_MODE": "reactive",
        "STRATA_ROUTER_AUTOSCALE_STARTUP_FILE": str(path),
    }
    router = Router(load_router_settings([], env=env), StaticSource(("127.0.0.1:1",)))
    assert router.scaler is not None
    assert router.scaler.policy.startup_s == 60.0  # the default, until the first decision reads the file
    router.scaler.tick(1_000_000.0, ready=1, starting=0)
    assert router.scaler.policy.startup_s == 75.0
    without = Router(load_router_settings([], env={"STRATA_ROUTER_AUTOSCALE_MODE": "reactive"}), StaticSource(()))
    assert without.scaler is not None
    assert without.scaler.lead is None

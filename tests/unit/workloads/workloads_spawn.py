"""Helpers for workload tests: spawn a gloo process group on CPU and collect per-rank results."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp


def spawn(fn: Callable[..., None], world: int, tmp_path: Path, *args: Any) -> list[dict[str, Any]]:
    """Run fn(rank, world, init_file, *args, out_dir) in `world` spawned processes; return each rank's JSON."""
    out_dir = tmp_path / "results"
    out_dir.mkdir(exist_ok=True)
    init_file = tmp_path / "pg_init"
    mp.start_processes(fn, args=(world, str(init_file), *args, str(out_dir)), nprocs=world, start_method="spawn")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]

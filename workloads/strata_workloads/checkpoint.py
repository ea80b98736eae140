"""Distributed checkpoints with torch.distributed.checkpoint (DCP).

Layout on disk: `<root>/step-00000100/` holds one complete checkpoint. A save writes into
`<root>/step-00000100.tmp/`; only after every rank's data and DCP's metadata are written does rank 0 add the
`COMPLETE` marker (the sha256 of every file) and rename the folder. A crash mid-write
leaves a `.tmp` folder (or a folder without the marker) that `latest()` never returns. `load_newest` verifies
the checksums before loading and falls back to the previous complete checkpoint when the newest is corrupt or
fails to load, moving the bad one aside (`step-00000100.bad`) so that keep-K retention never counts it.
Model and optimizer go through `get_state_dict`/`set_state_dict`, so parameters are saved by fully-qualified
name as DTensor shards and load into any other parallel layout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import async_save as dcp_async_save
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torch.optim.lr_scheduler import LRScheduler

from strata_workloads.progress import report_checkpoint

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_PREFIX = "step-"
QUARANTINE_SUFFIX = ".bad"
_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
# DCP warns on every single-process save/load even when asked for one explicitly (no_dist=True).
_SINGLE_PROCESS_WARNING = "torch.distributed is disabled, unavailable or uninitialized"


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS_WARNING, category=UserWarning)
        yield


def merged_view(parts: list[nn.Module]) -> nn.Module:
    """One module over this rank's pipeline stages whose parameter names equal the unsplit model's."""
    if len(parts) == 1:
        return parts[0]
    view = nn.Module()
    view.layers = nn.ModuleDict()
    for part in parts:
        for name in ("tok_embeddings", "norm", "output"):
            if getattr(part, name, None) is not None:
                view.add_module(name, getattr(part, name))
        layers: nn.ModuleDict = part.layers  # type: ignore[assignment]
        for key, layer in layers.items():
            view.layers[key] = layer
    return view


# Checksums. The marker holds `{"sha256": {file name: digest}}` over every file DCP wrote (shards and
# `.metadata`), so a flipped bit, overwritten bytes or a truncated file is found before any of it reaches a
# model. A marker from before checksums ("ok") reads as "no checksums": such a checkpoint loads with a warning.
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(folder: Path, share: slice = slice(None)) -> dict[str, str]:
    """Digest of every file in `folder` but the marker, by name; `share`: of the names in sorted order, the ones
    this process hashes (ranks split the reading)."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MARKER)[share]
    return {name: file_sha256(folder / name) for name in names}


def marker_text(table: dict[str, str]) -> str:
    """The marker's content for a checkpoint whose files have these digests."""
    return json.dumps({"sha256": table}, indent=1, sort_keys=True) + "\n"


def recorded_checksums(folder: Path) -> dict[str, str] | None:
    """What the marker recorded; None for a marker written before checksums. Raises OSError or ValueError
    when the marker is unreadable or not what a save writes."""
    text = (folder / MARKER).read_text()
    try:
        data = json.loads(text)
    except ValueError:
        if text.strip() == "ok":  # the marker's content before checksums
            return None
        raise ValueError(f"{MARKER} is neither a checksum manifest nor a legacy marker") from None
    sums = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(sums, dict) or not sums:
        raise ValueError(f"{MARKER} has no sha256 table")
    return {str(k): str(v) for k, v in sums.items()}


def integrity_problem(folder: Path, share: slice = slice(None)) -> str | None:
    """Why `folder` must not be loaded (a missing, changed or unreadable file), or None if every recorded file
    is intact; `share`: of the recorded names in sorted order, the ones this process reads. A legacy checkpoint
    without checksums returns None; `has_checksums` tells it apart."""
    try:
        recorded = recorded_checksums(folder)
    except (OSError, ValueError) as err:
        return f"unreadable {MARKER} marker: {err}"
    if recorded is None:
        return None
    for name in sorted(recorded)[share]:
        want, path = recorded[name], folder / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            got = file_sha256(path)
        except OSError as err:
            return f"{name} is unreadable: {err}"
        if got != want:
            return f"{name} fails its checksum (sha256 {got[:12]}..., recorded {want[:12]}...)"
    return None


def has_checksums(folder: Path) -> bool:
    try:
        return recorded_checksums(folder) is not None
    except (OSError, ValueError):
        return False


def step_dir(root: Path, step: int) -> Path:
    return root / f"{_PREFIX}{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first. Folders being written (.tmp) or without the marker are not."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX) :].isdigit() and (p / MARKER).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


class CorruptCheckpoint(Exception):
    """A checkpoint's files do not match the checksums recorded when it was committed."""


class NoUsableCheckpoint(Exception):
    """Checkpoints exist but none of them loads: a restart would fail the same way."""


Loaded = TypeVar("Loaded")


def newest_loadable(
    root: Path, try_load: Callable[[Path], Loaded | str], set_aside: Callable[[Path], None] | None = None
) -> tuple[Path, Loaded] | None:
    """The newest complete checkpoint under `root` that `try_load` loads (it returns what it loaded, or a string:
    why it could not), with what it loaded. Each newer one that failed is logged as a warning with its reason
    (the line an Event is made of) and handed to `set_aside`. None when there is no complete checkpoint; raises
    NoUsableCheckpoint naming each one when none loads. The one fallback rule of training (which moves a failed
    checkpoint aside) and serving (which only reads)."""
    failures: list[str] = []
    for path in reversed(complete_checkpoints(root)):
        result = try_load(path)
        if not isinstance(result, str):
            return path, result
        failures.append(f"{path.name}: {result}")
        moved = {"moved_to": path.name + QUARANTINE_SUFFIX} if set_aside is not None else {}
        log.warning(
            "checkpoint unusable, falling back to the previous one",
            extra={"checkpoint": str(path), "reason": result, **moved},
        )
        if set_aside is not None:
            set_aside(path)
    if failures:
        raise NoUsableCheckpoint(f"no loadable checkpoint under {root}: " + "; ".join(failures))
    return None


@dataclass
class TrainState:
    """What a checkpoint holds besides model and optimizer."""

    step: int = 0
    data: dict[str, torch.Tensor] = field(default_factory=dict)  # loader position, same on every rank
    rng: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.uint8))  # every rank's CPU RNG


class Checkpointer:
    def __init__(self, root: Path, keep: int = 3, async_save: bool = True) -> None:
        self.root = root
        self.keep = keep
        self.async_save = async_save and dist.is_initialized()
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        # Async saves run collectives from a background thread: give them their own group so they never
        # interleave with the training step's collectives.
        self._pg: dist.ProcessGroup | None = None
        if self.async_save:
            group = dist.new_group(backend="gloo")
            assert isinstance(group, dist.ProcessGroup)
            self._pg = group
        self._pending: tuple[Future[Any], Path, Path] | None = None
        # The newest checkpoint this run loaded or committed: retention never deletes it.
        self.known_good: Path | None = None
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            for stale in root.glob(f"{_PREFIX}*.tmp"):
                shutil.rmtree(stale, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier()

    def _state(
        self, parts: list[nn.Module], optimizer: torch.optim.Optimizer, scheduler: LRScheduler, train: TrainState
    ) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(merged_view(parts), optimizer, options=_OPTIONS)
        return {
            "model": model_sd,
            "optim": optim_sd,
            "scheduler": {"last_epoch": scheduler.last_epoch},
            # A copy: a load drops the entries it cannot restore from this dict, never from the caller's state.
            "train": {"step": train.step, "data": dict(train.data), "rng": train.rng},
        }

    def save(
        self,
        parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        train: TrainState,
        *,
        blocking: bool = False,
    ) -> Path:
        self.wait()
        final = step_dir(self.root, train.step)
        tmp = final.with_name(final.name + ".tmp")
        state = self._state(parts, optimizer, scheduler, train)
        started = time.monotonic()
        if self.async_save and not blocking:
            future = dcp_async_save(state, checkpoint_id=str(tmp), process_group=self._pg)
            self._pending = (future, tmp, final)  # type: ignore[assignment]
        else:
            with _quiet_single_process():
                dcp_save(state, checkpoint_id=str(tmp), no_dist=not dist.is_initialized())
            self._finalize(tmp, final)
            log.info("checkpoint saved", extra={"path": str(final), "seconds": round(time.monotonic() - started, 3)})
        return final

    def wait(self) -> None:
        """Block until a pending async save is durable and marked complete."""
        if self._pending is None:
            return
        future, tmp, final = self._pending
        self._pending = None
        future.result()
        if self._pg is not None:
            dist.barrier(group=self._pg)  # every rank's shard is written before the marker
        self._finalize(tmp, final)
        log.info("checkpoint saved", extra={"path": str(final), "async": True})

    def _my_share(self) -> slice:
        """Which of a checkpoint's files (in sorted order) this rank reads for checksums: every world-th one."""
        return slice(self.rank, None, dist.get_world_size() if dist.is_initialized() else 1)

    def _finalize(self, tmp: Path, final: Path) -> None:
        # Every rank's files are written (barrier before): the ranks hash a share each, rank 0 writes them all.
        table = checksums(tmp, self._my_share())
        if dist.is_initialized():
            shares: list[dict[str, str] | None] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, table, group=self._pg)
            table = {name: digest for share in shares if share for name, digest in share.items()}
        if self.rank == 0:
            marker = tmp / MARKER
            text = marker_text(table)
            with open(marker, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            report_checkpoint(int(final.name[len(_PREFIX) :]))  # committed: tell the operator (never raises)
            self.known_good = final
            for old in complete_checkpoints(self.root)[: -self.keep] if self.keep > 0 else []:
                if old != self.known_good:
                    shutil.rmtree(old, ignore_errors=True)
        if dist.is_initialized():
            dist.barrier(group=self._pg)

    def load(
        self,
        path: Path,
        parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        train: TrainState,
    ) -> TrainState:
        """Loads in place (resharding to this layout); returns the saved TrainState. `train` gives the shapes
        of its tensors (data position, RNG) as this run would save them."""
        if not (path / MARKER).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
        problem = self._agreed_integrity_problem(path)
        if problem is not None:
            raise CorruptCheckpoint(f"{path}: {problem}")
        if not has_checksums(path):
            log.warning(
                "checkpoint has no checksums (saved before they were recorded): loading unverified",
                extra={"checkpoint": str(path)},
            )
        state = self._state(parts, optimizer, scheduler, train)
        self._drop_mismatched_extras(path, state["train"])
        with _quiet_single_process():
            dcp_load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        set_state_dict(
            merged_view(parts),
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=_OPTIONS,
        )
        sched = scheduler.state_dict()
        sched["last_epoch"] = int(state["scheduler"]["last_epoch"])
        sched["_step_count"] = sched["last_epoch"] + 1
        scheduler.load_state_dict(sched)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        saved = state["train"]
        self.known_good = path
        return TrainState(step=int(saved["step"]), data=saved["data"], rng=saved.get("rng", train.rng))

    def load_newest(
        self,
        parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        train: TrainState,
    ) -> tuple[Path, TrainState] | None:
        """Load the newest complete checkpoint that verifies and loads, newest first; None when there is none.
        Each one that fails is logged with its reason and moved aside; raises NoUsableCheckpoint when
        checkpoints exist but none loads (retrying cannot repair them). Every rank takes the same decisions."""
        return newest_loadable(
            self.root, lambda path: self._try_load(path, parts, optimizer, scheduler, train), self._quarantine
        )

    def _try_load(
        self,
        path: Path,
        parts: list[nn.Module],
        optimizer: torch.optim.Optimizer,
        scheduler: LRScheduler,
        train: TrainState,
    ) -> TrainState | str:
        """The loaded state, or why `path` could not be loaded (the same answer on every rank)."""
        result: TrainState | str
        try:
            result = self.load(path, parts, optimizer, scheduler, train)
        except Exception as err:  # a corrupt checkpoint fails in many ways (pickle, DCP, shapes): all fall back
            result = f"{type(err).__name__}: {err}"
        if dist.is_initialized():
            failed = torch.tensor(1 if isinstance(result, str) else 0)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and not isinstance(result, str):
                result = "failed to load on another rank"
        return result

    def _agreed_integrity_problem(self, path: Path) -> str | None:
        """Each rank reads its share of the files against their checksums; all ranks get the first problem."""
        mine = integrity_problem(path, self._my_share())
        verdicts: list[str | None] = [mine]
        if dist.is_initialized():
            verdicts = [None] * dist.get_world_size()
            dist.all_gather_object(verdicts, mine)
        return next((v for v in verdicts if v is not None), None)

    def _quarantine(self, path: Path) -> None:
        if self.rank == 0:
            target = path.with_name(path.name + QUARANTINE_SUFFIX)
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.rename(path, target)
        if dist.is_initialized():
            dist.barrier()

    @staticmethod
    def _drop_mismatched_extras(path: Path, train_state: dict[str, Any]) -> None:
        """Per-rank extras (the RNG of each rank) cannot map onto a different world size, and a checkpoint of an
        older format lacks today's data position entry: those are left out (restore_train_state keeps the fresh
        RNG and derives the position from the step) when missing or shaped otherwise (model/optimizer reshard)."""
        saved = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        for key, value in list(train_state["data"].items()):
            meta = saved.get(f"train.data.{key}")
            if meta is None or getattr(meta, "size", None) != value.shape:
                log.warning("not restoring data position entry", extra={"key": key})
                del train_state["data"][key]
        meta = saved.get("train.rng")
        if meta is None or getattr(meta, "size", None) != train_state["rng"].shape:
            log.warning("not restoring RNG state: saved by a different world size")
            del train_state["rng"]

"""``python -m strata_workloads.launch``: the worker pod's entry point, one training process per local GPU.

The operator gives each pod the node-level torch.distributed environment: ``WORLD_SIZE`` (all processes of
the job), ``RANK`` (the global rank of the pod's first process), ``LOCAL_WORLD_SIZE`` (processes on this pod,
one per GPU), ``MASTER_ADDR`` and ``MASTER_PORT``. This starts ``LOCAL_WORLD_SIZE`` copies of
``strata_workloads.train`` with ``RANK + i`` and ``LOCAL_RANK = i``, forwards SIGTERM to them, and exits with
one code the operator understands (docs/workloads.md):

- 0 when every process finished; 85 when every process that stopped early saved its checkpoint on SIGTERM;
- 2 when any process found the configuration invalid (retrying cannot help);
- otherwise the first other failure's code (1 if it died by a signal), after stopping the rest, which would
  otherwise wait forever in a collective for the dead rank.

torchrun would start the processes too, but it turns every worker failure into its own exit code 1 and so
hides the difference between "preempted, checkpoint saved" and "configuration invalid" that the operator acts
on. With ``LOCAL_RANK`` already set (torchrun) or one process per pod, this simply runs the training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType

from strata_api.workload import ExitCode, WorkerEnv

TRAIN = ("-m", "strata_workloads.train")


def combine(codes: Sequence[int]) -> int:
    """One exit code for the pod from its processes' codes (negative: killed by that signal)."""
    if all(code == ExitCode.SUCCEEDED for code in codes):
        return ExitCode.SUCCEEDED
    permanent = [code for code in codes if code in ExitCode.PERMANENT]
    if permanent:
        return permanent[0]
    if all(code in (ExitCode.SUCCEEDED, ExitCode.CHECKPOINTED) for code in codes):
        return ExitCode.CHECKPOINTED
    first = next(code for code in codes if code not in (ExitCode.SUCCEEDED, ExitCode.CHECKPOINTED))
    return first if first > 0 else ExitCode.ERROR


def local_envs(env: Mapping[str, str]) -> list[dict[str, str]]:
    """The environment of each local process."""
    local = int(env.get(WorkerEnv.LOCAL_WORLD_SIZE, "1"))
    base = int(env.get(WorkerEnv.RANK, "0"))
    return [{**env, WorkerEnv.RANK: str(base + i), "LOCAL_RANK": str(i)} for i in range(local)]


def run(argv: Sequence[str], env: Mapping[str, str], poll_s: float = 0.2) -> int:
    children = [subprocess.Popen([sys.executable, *TRAIN, *argv], env=child_env) for child_env in local_envs(env)]

    def forward(signum: int, _: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    codes: list[int | None] = [None] * len(children)
    while any(code is None for code in codes):
        for i, child in enumerate(children):
            codes[i] = child.poll()
        failed = [c for c in codes if c not in (None, ExitCode.SUCCEEDED, ExitCode.CHECKPOINTED)]
        if failed:
            forward(signal.SIGTERM, None)
            for i, child in enumerate(children):
                try:
                    codes[i] = child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    codes[i] = child.wait()
            break
        time.sleep(poll_s)
    return combine([code if code is not None else ExitCode.ERROR for code in codes])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    if "LOCAL_RANK" in env or int(env.get(WorkerEnv.LOCAL_WORLD_SIZE, "1")) <= 1:
        os.execve(sys.executable, [sys.executable, *TRAIN, *args], {**env, "LOCAL_RANK": env.get("LOCAL_RANK", "0")})
    return run(args, env)


if __name__ == "__main__":
    sys.exit(main())

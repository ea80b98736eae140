"""Build the pinned control-plane binaries from Go modules into a cache outside the repository.

Each binary comes from a small wrapper Go module under ``hack/gomod/<name>`` whose ``go.mod`` and ``go.sum``
pin the exact upstream version. The cache folder is keyed by every pinned version, the Go toolchain and a hash
of the wrapper modules, so a version bump builds into a fresh folder and a warm machine builds nothing.

Only the standard library is used here: this module runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from strata_dev.paths import GOMOD

KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
COREDNS_VERSION = "v1.15.0"


class BuildError(RuntimeError):
    """A binary could not be built; the message says what failed and what to do."""


def _kube_ldflags() -> list[str]:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return flags


@dataclass(frozen=True)
class Binary:
    """One command built from one wrapper module."""

    name: str
    module: str  # folder under hack/gomod
    package: str  # Go package path of the main package
    version: str
    ldflags: list[str] = field(default_factory=list)
    version_args: tuple[str, ...] = ("--version",)


BINARIES: tuple[Binary, ...] = (
    Binary(
        "etcd",
        "etcd",
        "go.etcd.io/etcd/server/v3",
        ETCD_VERSION,
        [f"-X go.etcd.io/etcd/api/v3/version.GitSHA={ETCD_VERSION}"],
    ),
    Binary("kube-apiserver", "kubernetes", "k8s.io/kubernetes/cmd/kube-apiserver", KUBERNETES_VERSION, _kube_ldflags()),
    Binary(
        "kube-controller-manager",
        "kubernetes",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        KUBERNETES_VERSION,
        _kube_ldflags(),
    ),
    Binary("kube-scheduler", "kubernetes", "k8s.io/kubernetes/cmd/kube-scheduler", KUBERNETES_VERSION, _kube_ldflags()),
    Binary("kubelet", "kubernetes", "k8s.io/kubernetes/cmd/kubelet", KUBERNETES_VERSION, _kube_ldflags()),
    Binary("kube-proxy", "kubernetes", "k8s.io/kubernetes/cmd/kube-proxy", KUBERNETES_VERSION, _kube_ldflags()),
    Binary(
        "kubectl",
        "kubernetes",
        "k8s.io/kubernetes/cmd/kubectl",
        KUBERNETES_VERSION,
        _kube_ldflags(),
        ("version", "--client"),
    ),
    Binary(
        "kwok",
        "kwok",
        "sigs.k8s.io/kwok/cmd/kwok",
        KWOK_VERSION,
        [f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION.lstrip('v')}"],
    ),
    Binary(
        "helm",
        "helm",
        "helm.sh/helm/v3/cmd/helm",
        HELM_VERSION,
        [
            f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
            "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        ],
        ("version", "--short"),
    ),
    Binary(
        "coredns",
        "coredns",
        "strata.dev/hack/coredns",  # CoreDNS's coremain with the plugins the node uses (hack/gomod/coredns/main.go)
        COREDNS_VERSION,
        [f"-X github.com/coredns/coredns/coremain.GitCommit={COREDNS_VERSION}"],
        ("-version",),
    ),
)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go toolchain not found on PATH: install Go >= 1.26 (https://go.dev/dl) or put the cached binaries "
            "in STRATA_BIN_DIR"
        )
    return go


def _go_version(go: str) -> str:
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def cache_key(go_version: str) -> str:
    """A folder name that changes whenever a pinned version, the toolchain or a wrapper module changes."""
    digest = hashlib.sha256()
    for path in sorted(GOMOD.rglob("*")):
        if path.is_file() and (path.name in {"go.mod", "go.sum"} or path.suffix == ".go"):
            digest.update(path.relative_to(GOMOD).as_posix().encode())
            digest.update(path.read_bytes())
    digest.update(json.dumps([(b.name, b.package, b.version, b.ldflags) for b in BINARIES]).encode())
    versions = f"k8s-{KUBERNETES_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}_helm-{HELM_VERSION}"
    versions += f"_coredns-{COREDNS_VERSION}"
    return f"{versions}_{go_version}_{digest.hexdigest()[:12]}"


def cache_root() -> Path:
    base = os.environ.get("STRATA_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "strata"
    )
    return Path(base)


def bin_dir() -> Path:
    """Where the binaries are (or will be): STRATA_BIN_DIR if set, else the versioned cache folder."""
    explicit = os.environ.get("STRATA_BIN_DIR")
    if explicit:
        return Path(explicit)
    return cache_root() / cache_key(_go_version(_go())) / "bin"


def missing(directory: Path) -> list[Binary]:
    return [b for b in BINARIES if not (directory / b.name).is_file()]


@contextlib.contextmanager
def _ticker(label: str, every: float = 30.0) -> Iterator[None]:
    """Print how long a silent step has run, so a long cold build never looks hung."""
    start = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            print(f"  ... still building {label} ({time.monotonic() - start:.0f}s)", flush=True)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _build_one(go: str, binary: Binary, dest: Path, log_dir: Path) -> float:
    env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
    tmp = dest.with_name(f".{binary.name}.tmp")
    log = log_dir / f"build-{binary.name}.log"
    cmd = [go, "build", "-trimpath", "-p", "2", "-o", str(tmp), "-ldflags", " ".join(["-s", "-w", *binary.ldflags])]
    cmd.append(binary.package)
    start = time.monotonic()
    with _ticker(binary.name), log.open("w") as out:
        proc = subprocess.run(cmd, cwd=GOMOD / binary.module, env=env, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise BuildError(
            f"building {binary.name} {binary.version} failed (exit {proc.returncode}); log: {log}\n  "
            + "\n  ".join(tail)
        )
    tmp.replace(dest)
    return time.monotonic() - start


def ensure(quiet: bool = False) -> Path:
    """Return the folder holding every binary, building the missing ones one at a time."""
    explicit = os.environ.get("STRATA_BIN_DIR")
    if explicit:
        absent = missing(Path(explicit))
        if absent:
            raise BuildError(f"STRATA_BIN_DIR={explicit} lacks {', '.join(b.name for b in absent)}")
        return Path(explicit)
    go = _go()
    directory = bin_dir()
    if not missing(directory):
        if not quiet:
            print(f"binaries: cached in {directory}", flush=True)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    log_dir = directory.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    with (directory.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make` waits for the first build instead of racing it
        todo = missing(directory)
        total = time.monotonic()
        for i, binary in enumerate(todo, 1):
            print(f"binaries: [{i}/{len(todo)}] building {binary.name} {binary.version} ...", flush=True)
            took = _build_one(go, binary, directory / binary.name, log_dir)
            print(f"binaries: [{i}/{len(todo)}] {binary.name} built in {took:.0f}s", flush=True)
        if todo:
            size = sum(p.stat().st_size for p in directory.iterdir()) / 2**20
            print(f"binaries: built {len(todo)} in {time.monotonic() - total:.0f}s, cache {size:.0f} MiB: {directory}")
            (directory.parent / "build.json").write_text(
                json.dumps({"seconds": round(time.monotonic() - total), "mib": round(size)}, indent=1)
            )
    return directory


def versions(directory: Path) -> dict[str, str]:
    """What each built binary says its version is."""
    result = {}
    for binary in BINARIES:
        out = subprocess.run(
            [str(directory / binary.name), *binary.version_args], capture_output=True, text=True, timeout=30
        )
        result[binary.name] = (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_dev.binaries", description=__doc__)
    parser.add_argument("command", choices=["ensure", "path", "versions"], nargs="?", default="ensure")
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            print(bin_dir())
        elif args.command == "versions":
            for name, version in versions(ensure(quiet=True)).items():
                print(f"{name:24} {version}")
        else:
            ensure()
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

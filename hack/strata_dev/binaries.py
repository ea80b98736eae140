"""Build the pinned control-plane binaries from Go modules into a cache outside the repository.

Each binary comes from a small wrapper Go module under ``hack/gomod/<name>`` whose ``go.mod`` and ``go.sum``
pin the exact upstream version. The cache folder is keyed by every pinned version, the Go toolchain and a hash
of the wrapper modules, so a version bump builds into a fresh folder and a warm machine builds nothing.

Dev tools (:data:`TOOLS`, e.g. actionlint) are built the same way from ``hack/gotools/<name>``, each into its own
small folder keyed by its own version (``<cache>/tools/<name>-<version>/``): bumping a tool rebuilds that tool
only, and adding one does not change the control-plane binaries' key.

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
ACTIONLINT_VERSION = "v1.7.12"
PROMETHEUS_VERSION = "v0.316.0"  # the Go module's version of Prometheus 3.16.0

GOTOOLS = GOMOD.parent / "gotools"
"""One wrapper Go module per dev tool; outside ``hack/gomod`` so that it is not part of :func:`cache_key`."""


def _prometheus_release() -> str:
    """Prometheus v3.x.y is tagged as Go module version v0.3xx.y: v0.316.0 is 3.16.0."""
    minor, patch = PROMETHEUS_VERSION.lstrip("v").split(".")[1:]
    return f"{minor[0]}.{int(minor[1:])}.{patch}"


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
    modules: Path = GOMOD  # the folder holding ``module``
    tags: tuple[str, ...] = ()  # Go build tags (part of a tool's cache folder name)


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


TOOLS: tuple[Binary, ...] = (
    Binary(
        "actionlint",  # lints .github/workflows (make actionlint, part of make lint)
        "actionlint",
        "github.com/rhysd/actionlint/cmd/actionlint",
        ACTIONLINT_VERSION,
        [f"-X github.com/rhysd/actionlint.version={ACTIONLINT_VERSION}"],
        ("-version",),
        GOTOOLS,
    ),
    # the control-plane helm (same wrapper module and flags), on its own for the unit tier's chart rendering: with
    # the control-plane binaries built, Go's build cache makes this a link
    next(binary for binary in BINARIES if binary.name == "helm"),
    # the monitoring tests (make test-prometheus, the last tier of make test; cold build figures in
    # docs/benchmarks.md); the second one built reuses the first one's packages
    *(
        Binary(
            name,
            "prometheus",
            f"github.com/prometheus/prometheus/cmd/{name}",
            PROMETHEUS_VERSION,
            [f"-X github.com/prometheus/common/version.Version={_prometheus_release()}"],
            ("--version",),
            GOTOOLS,
            # no service discovery but static targets, which is all the tests configure: without the cloud SDKs
            # the module builds in a fraction of the time (Prometheus's own plugins/ build tags)
            ("remove_all_sd",),
        )
        for name in ("prometheus", "promtool")
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
    if binary.tags:
        cmd += ["-tags", ",".join(binary.tags)]
    cmd.append(binary.package)
    start = time.monotonic()
    with _ticker(binary.name), log.open("w") as out:
        proc = subprocess.run(cmd, cwd=binary.modules / binary.module, env=env, stdout=out, stderr=subprocess.STDOUT)
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


def tool_path(tool: Binary) -> Path:
    """Where a dev tool is (or will be): its own folder, keyed by its version alone."""
    tags = "".join(f"+{tag}" for tag in tool.tags)
    return cache_root() / "tools" / f"{tool.name}-{tool.version}{tags}" / tool.name


def ensure_tool(name: str) -> Path:
    """The path of the dev tool ``name``, built from its wrapper module on first use (progress on stderr)."""
    known = {tool.name: tool for tool in TOOLS}
    if name not in known:
        raise BuildError(f"unknown tool {name!r}: the tools are {', '.join(known)}")
    tool = known[name]
    dest = tool_path(tool)
    if dest.is_file():
        return dest
    go = _go()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (dest.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not dest.is_file():
            print(f"binaries: building {tool.name} {tool.version} into {dest.parent} ...", file=sys.stderr, flush=True)
            with contextlib.redirect_stdout(sys.stderr):  # stdout stays the tool's own
                took = _build_one(go, tool, dest, dest.parent)
            print(f"binaries: {tool.name} built in {took:.0f}s", file=sys.stderr, flush=True)
    return dest


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
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("ensure", help="build the missing binaries (the default)")
    commands.add_parser("path", help="print the folder that holds (or will hold) the binaries")
    commands.add_parser("versions", help="print what each binary says its version is")
    tool = commands.add_parser("tool", help="run a dev tool (built into its own cache folder on first use)")
    tool.add_argument("name", choices=[t.name for t in TOOLS])
    tool.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
    args = parser.parse_args(argv)
    try:
        if args.command == "tool":
            path = ensure_tool(args.name)
            os.execv(path, [str(path), *args.args])
        elif args.command == "path":
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

"""Build the container images from ``images/``, here without a Docker engine, cached by content hash.

``make images`` (``python -m strata_dev images``) builds one image per deployable with buildah, a daemonless OCI
builder: vfs storage and chroot isolation, so it needs neither overlay mounts nor user namespaces. No container
registry is reachable here, so the Python images' base is made here too: a Debian bookworm root filesystem with
Python 3.11 from Debian's own packages (debootstrap), imported as ``localhost/strata-base:<hash>``.

The Python images share ``images/python/Dockerfile``, one final stage (``--target``) each, with the build
argument ``COMPONENT`` naming the extra and the package it copies; kube-scheduler has ``images/kube-scheduler``.
Each image is written as a docker-archive (``ctr images import`` and ``docker load`` accept it) to
``~/.cache/strata/images/<name>-<hash>.tar``. The hash covers the instructions of the stages the image is built
from (its build arguments filled in), every file those stages copy and the base, and nothing else: a change to
one component's code or final stage does not rebuild another's image. An image whose archive exists is not
built again. buildah's own storage keeps only the base
between runs: each built image is removed from it once archived (vfs stores every layer as a full copy).

With ``IMAGE_BUILDER=docker`` the same Dockerfiles go to ``docker build`` on their default base (the official
Python image, pinned by digest) and the images stay in Docker's store, tagged with ``IMAGE_TAG`` when it is set
(``make images IMAGE_BUILDER=docker IMAGE_TAG=e2e``: what CI loads into kind), else by content hash.

Standard library only, like :mod:`strata_dev.binaries`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from strata_dev import binaries
from strata_dev.paths import REPO

IMAGES_DIR = REPO / "images"
"""``python/Dockerfile`` (the Python deployables, one target each) and ``kube-scheduler/Dockerfile``."""
PYTHON_IMAGES = ("operator", "scheduler", "serving", "workloads")
"""The deployables built from ``images/python/Dockerfile``: each is its target's name and its ``COMPONENT``."""

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv")
"""What every Python image's ``BASE`` must provide: python3 (3.11 on bookworm) with the venv module."""
BASE_TRIM = ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "usr/share/doc", "usr/share/man")
"""Folders emptied in the base's root filesystem: package indexes, caches and documentation no image reads."""


HASH_LENGTH = 12
"""Hex digits of the content hash in an image's tag and archive name."""


class ImageError(RuntimeError):
    """An image could not be built; the message names the image, the step and the log."""


@dataclass(frozen=True)
class Image:
    """One deployable: its Dockerfile, the folder sent as the build context, the stage to build (``--target``;
    None: the last one) and the build arguments that select what it installs and copies."""

    name: str
    context: Path
    dockerfile: Path
    target: str | None = None
    build_args: tuple[tuple[str, str], ...] = ()

    @property
    def repository(self) -> str:
        return f"localhost/strata-{self.name}"


@dataclass(frozen=True)
class Built:
    """An image in the cache: ``ref`` is its name inside the archive."""

    name: str
    ref: str
    archive: Path
    seconds: float | None  # None: found in the cache

    @property
    def mib(self) -> float:
        return self.archive.stat().st_size / 2**20


def images(bin_dir: Path) -> list[Image]:
    """Every deployable: the Python ones from the repository root, kube-scheduler from the binaries' folder."""
    python = IMAGES_DIR / "python" / "Dockerfile"
    kube_scheduler = Image("kube-scheduler", bin_dir, IMAGES_DIR / "kube-scheduler" / "Dockerfile")
    operator, scheduler, serving, workloads = (Image(n, REPO, python, n, (("COMPONENT", n),)) for n in PYTHON_IMAGES)
    return [operator, scheduler, serving, kube_scheduler, workloads]


def image_dir() -> Path:
    return binaries.cache_root() / "images"


# ---- content hash -----------------------------------------------------------------------------------------------

_COPY = re.compile(r"^\s*(?:COPY|ADD)\s+(.*)$", re.IGNORECASE)
_FROM = re.compile(r"^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_COPY_FROM = re.compile(r"^(?:COPY|ADD)\s.*--from=(\S+)", re.IGNORECASE)


def instructions(dockerfile_text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile_text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def copied_sources(dockerfile_text: str) -> list[str]:
    """The build-context paths the Dockerfile's ``COPY``/``ADD`` lines read (not those copied from a stage)."""
    sources: list[str] = []
    for line in instructions(dockerfile_text):
        match = _COPY.match(line)
        if not match:
            continue
        words = match.group(1).split()
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources += paths[:-1]  # the last one is the destination
    return sources


def recipe(image: Image) -> list[str]:
    """The instructions that make ``image``: those before the first ``FROM`` (the global ``ARG``s), then each stage
    its target is built from (through ``FROM <stage>`` and ``COPY --from=<stage>``) in file order, with the
    image's build arguments filled in. Docker (BuildKit) and buildah build only these stages."""
    text = image.dockerfile.read_text()
    for key, value in image.build_args:
        text = re.sub(rf"\$\{{{key}\}}|\${key}\b", value, text)
    head: list[str] = []
    stages: list[list[str]] = []
    for line in instructions(text):
        if _FROM.match(line):
            stages.append([line])
        elif stages:
            stages[-1].append(line)
        else:
            head.append(line)
    names = {}
    for index, stage in enumerate(stages):
        match = _FROM.match(stage[0])
        if match and match.group(2):
            names[match.group(2).lower()] = index
    if image.target is not None and image.target.lower() not in names:
        raise ImageError(f"{image.name}: {image.dockerfile} has no stage {image.target!r} (it has {', '.join(names)})")
    todo = [names[image.target.lower()] if image.target is not None else len(stages) - 1]
    needed: set[int] = set()
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        base = _FROM.match(stages[index][0])
        parents = [base.group(1)] if base else []
        parents += [m.group(1) for m in map(_COPY_FROM.match, stages[index]) if m]
        todo += [names[p.lower()] for p in parents if p.lower() in names]
    return head + [line for index in sorted(needed) for line in stages[index]]


def _ignored(relative: Path) -> bool:
    """What .dockerignore keeps out of the context inside copied folders: byte-code caches."""
    return "__pycache__" in relative.parts or relative.suffix == ".pyc"


def content_hash(image: Image, base_ref: str) -> str:
    """A short hash of everything that makes the image: its :func:`recipe` (not the Dockerfile's comments, nor the
    stages of other targets), each file that copies, the base it uses."""
    steps = recipe(image)
    uses_base = any(line.startswith("ARG BASE") for line in steps)
    digest = hashlib.sha256()
    recipe_text = "\n".join(steps)
    digest.update(f"dockerfile\0{recipe_text}\0base\0{base_ref if uses_base else ''}\0".encode())
    for source in copied_sources(recipe_text):
        root = image.context / source
        if not root.exists():
            raise ImageError(f"{image.name}: {image.dockerfile} copies {source!r}, which is not in {image.context}")
        files = sorted(p for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file())
        for path in files:
            relative = path.relative_to(image.context)
            if _ignored(relative):
                continue
            digest.update(f"{relative.as_posix()}\0{path.stat().st_mode & 0o111:o}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:HASH_LENGTH]


def base_recipe_hash() -> str:
    """The base image's key: the suite, the mirror, the packages, the trimmed folders and debootstrap's version."""
    version = subprocess.run(["debootstrap", "--version"], capture_output=True, text=True).stdout.strip()
    recipe = "\0".join([DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES, *BASE_TRIM, version])
    return hashlib.sha256(recipe.encode()).hexdigest()[:HASH_LENGTH]


# ---- building ---------------------------------------------------------------------------------------------------


def _require(*tools: str) -> None:
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        raise ImageError(
            f"{', '.join(absent)} not found on PATH: run `sudo hack/install-image-tools.sh` (pinned Debian packages), "
            "or build with Docker: IMAGE_BUILDER=docker make images"
        )


def _buildah(*args: str) -> list[str]:
    store = image_dir() / "buildah"
    return ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs", *args]


def _run(cmd: Sequence[str], log: Path, step: str) -> None:
    """Run one build step with its output in ``log``; a failure names the step, the log and its last lines."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.run(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=_build_env())
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-8:]
        raise ImageError(f"{step} failed (exit {proc.returncode}); log: {log}\n  " + "\n  ".join(tail))


def _build_env() -> dict[str, str]:
    """buildah's temporary files and ``RUN --mount=type=cache`` folders (uv's downloads) go under the image cache,
    not /var/tmp: one folder to measure and to remove."""
    tmp = image_dir() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return dict(os.environ, TMPDIR=str(tmp))


def _has_image(ref: str) -> bool:
    return subprocess.run(_buildah("inspect", "--type", "image", ref), capture_output=True).returncode == 0


def base_ref() -> str:
    return f"localhost/strata-base:{base_recipe_hash()}"


def ensure_base(ref: str, log_dir: Path) -> None:
    """``ref`` (the base) in buildah's storage: loaded from its archive, or made with debootstrap."""
    archive = image_dir() / f"strata-base-{ref.rsplit(':', 1)[1]}.tar"
    if _has_image(ref):
        return
    log = log_dir / "strata-base.log"
    if archive.is_file():
        _run(_buildah("pull", "--quiet", f"docker-archive:{archive}"), log, "strata-base: loading its archive")
        return
    print(f"images: making the base {ref} (debootstrap {DEBIAN_SUITE} + {', '.join(BASE_PACKAGES)}) ...", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="strata-base-", dir=image_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        packages = ",".join(BASE_PACKAGES)
        debootstrap = ["debootstrap", "--variant=minbase", f"--include={packages}", DEBIAN_SUITE, str(rootfs)]
        try:
            _run([*debootstrap, DEBIAN_MIRROR], log, "strata-base: debootstrap")
        finally:
            _unmount_below(rootfs)  # debootstrap mounts proc (and may bind /dev) inside; never delete through them
        for folder in BASE_TRIM:
            shutil.rmtree(rootfs / folder, ignore_errors=True)
            (rootfs / folder).mkdir(parents=True, exist_ok=True)
        for folder in ("dev", "proc", "sys", "run", "tmp"):  # the runtime provides these
            shutil.rmtree(rootfs / folder, ignore_errors=True)
            (rootfs / folder).mkdir(mode=0o1777 if folder == "tmp" else 0o755)
        (Path(tmp) / "Containerfile").write_text('FROM scratch\nADD rootfs.tar /\nCMD ["/bin/bash"]\n')
        tar = ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(Path(tmp) / "rootfs.tar"), "."]
        _run(tar, log, "strata-base: packing the root filesystem")
        shutil.rmtree(rootfs)
        _run(_buildah("bud", "--isolation", "chroot", "--quiet", "-t", ref, tmp), log, "strata-base: buildah bud")
    _push(ref, archive, log, "strata-base")
    print(f"images: base {ref} made in {time.monotonic() - start:.0f}s ({archive.stat().st_size / 2**20:.0f} MiB)")


def _unmount_below(root: Path) -> None:
    """Unmount whatever is mounted inside ``root``, deepest first; fail rather than leave a mount to delete through."""
    prefix = str(root.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True)
    left = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if any(m.startswith(prefix) for m in left):
        raise ImageError(f"strata-base: could not unmount what debootstrap mounted under {root}; remove it by hand")


def _push(ref: str, archive: Path, log: Path, name: str) -> None:
    partial = archive.with_name(f".{archive.name}.partial")
    partial.unlink(missing_ok=True)
    _run(_buildah("push", "--quiet", ref, f"docker-archive:{partial}:{ref}"), log, f"{name}: writing its archive")
    partial.replace(archive)
    remove_older_builds(archive)


def remove_older_builds(archive: Path) -> None:
    """Delete the archives of the same image with another hash: the workloads image alone is ~6 GiB."""
    image = archive.name.rsplit("-", 1)[0]  # strata-<name>-<hash>.tar
    for stale in archive.parent.glob(f"{image}-{'?' * HASH_LENGTH}.tar"):
        if stale != archive:
            stale.unlink()


def _build_with_buildah(image: Image, ref: str, base_ref: str, archive: Path, log: Path) -> None:
    bud = ["bud", "--isolation", "chroot", "--layers=false", "--pull-never", "-f", str(image.dockerfile)]
    bud += [*_target_args(image), "--build-arg", f"BASE={base_ref}", *_host_ca_args(), "-t", ref, str(image.context)]
    _run(_buildah(*bud), log, f"{image.name}: buildah bud")
    try:
        _push(ref, archive, log, image.name)
    finally:  # vfs keeps every layer as a full copy: the archive is the cache, the storage keeps only the base
        subprocess.run(_buildah("rmi", ref), capture_output=True)
        subprocess.run(_buildah("rmi", "--prune"), capture_output=True)


def _remove_leftovers() -> None:
    """Delete what an interrupted build left in the storage (its stage containers and their unnamed images, each a
    full copy on vfs: gigabytes for the workloads image); under the lock no other build of ours is running."""
    subprocess.run(_buildah("rm", "--all"), capture_output=True)
    subprocess.run(_buildah("rmi", "--prune"), capture_output=True)


def _target_args(image: Image) -> list[str]:
    """``--target`` and ``--build-arg`` for the image: the same flags for ``buildah bud`` and ``docker build``."""
    target = ["--target", image.target] if image.target is not None else []
    return target + [arg for key, value in image.build_args for arg in ("--build-arg", f"{key}={value}")]


BUILD_CA = "/run/strata-build-ca.crt"
"""Where the host's CA bundle is mounted during a build (read-only; not part of any layer)."""


def _host_ca_args() -> list[str]:
    """Let pip and uv in the build trust what the host trusts (SSL_CERT_FILE), e.g. a TLS-inspecting proxy's CA."""
    bundle = os.environ.get("SSL_CERT_FILE")
    if not bundle or not Path(bundle).is_file():
        return []
    mount = ["--volume", f"{Path(bundle).resolve()}:{BUILD_CA}:ro"]
    return [*mount, "--build-arg", f"PIP_CERT={BUILD_CA}", "--build-arg", f"SSL_CERT_FILE={BUILD_CA}"]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    image_dir().mkdir(parents=True, exist_ok=True)
    with (image_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second `make images` waits instead of racing on the storage
        yield


def ensure(names: Sequence[str] = ()) -> list[Built]:
    """Every image (or those named) as a cached archive, building the missing ones one at a time."""
    _require("buildah", "debootstrap")
    selected = _select(images(binaries.ensure(quiet=True)), names)
    logs = image_dir() / "logs"
    with _locked():
        logs.mkdir(parents=True, exist_ok=True)
        base = base_ref()
        built = []
        for image in selected:
            tag = content_hash(image, base)
            ref = f"{image.repository}:{tag}"
            archive = image_dir() / f"strata-{image.name}-{tag}.tar"
            if archive.is_file():
                built.append(Built(image.name, ref, archive, None))
                continue
            print(f"images: building {ref} ...", flush=True)
            log = logs / f"strata-{image.name}-{tag}.log"
            log.unlink(missing_ok=True)
            start = time.monotonic()
            ensure_base(base, logs)  # only when something is built: the cached archives need no storage
            _remove_leftovers()
            with binaries._ticker(image.name, every=60):
                _build_with_buildah(image, ref, base, archive, log)
            built.append(Built(image.name, ref, archive, time.monotonic() - start))
    return built


def build_with_docker(names: Sequence[str] = ()) -> list[str]:
    """``docker build`` each image on its Dockerfile's default base; the images stay in Docker's store, tagged
    ``IMAGE_TAG`` when it is set (a name a chart's values and ``kind load`` can know in advance), else by content."""
    _require("docker")
    refs = []
    tag = os.environ.get("IMAGE_TAG", "")
    for image in _select(images(binaries.ensure(quiet=True)), names):
        ref = docker_ref(image, tag)
        cmd = ["docker", "build", "-f", str(image.dockerfile), *_target_args(image), "-t", ref, str(image.context)]
        if subprocess.run(cmd).returncode != 0:
            raise ImageError(f"{image.name}: docker build failed (its output is above)")
        refs.append(ref)
    return refs


def docker_ref(image: Image, tag: str = "") -> str:
    """``localhost/strata-<name>:<tag>``; an empty ``tag`` is the image's content hash on the Dockerfile's base."""
    if tag and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ImageError(f"IMAGE_TAG={tag!r} is not a valid image tag (letters, digits, '_', '.', '-'; at most 128)")
    return f"{image.repository}:{tag or content_hash(image, 'dockerfile-default')}"


def _select(every: list[Image], names: Sequence[str]) -> list[Image]:
    known = {image.name: image for image in every}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ImageError(f"unknown image {', '.join(unknown)}: the images are {', '.join(known)}")
    return [known[n] for n in names] if names else every


def report(built: Sequence[Built]) -> str:
    """One line per image: name, reference, archive size, and build time or that it came from the cache."""
    lines = []
    for b in built:
        how = "cached" if b.seconds is None else f"built in {b.seconds:.0f}s"
        lines.append(f"{b.name:15} {b.ref:42} {b.mib:7.0f} MiB  {how:16} {b.archive}")
    return "\n".join(lines)


def build(names: Sequence[str] = ()) -> int:
    """``make images``: buildah here, or Docker when ``IMAGE_BUILDER=docker``."""
    builder = os.environ.get("IMAGE_BUILDER", "buildah")
    if builder == "docker":
        print("\n".join(build_with_docker(names)))
    elif builder == "buildah":
        print(report(ensure(names)))
    else:
        raise ImageError(f"IMAGE_BUILDER={builder!r}: use buildah (the default) or docker")
    return 0

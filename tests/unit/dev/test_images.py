"""What a user relies on in ``images/`` without building anything: one Dockerfile for the Python deployables (one
target each) and one for kube-scheduler, each image running as a non-root numeric user on a pinned base, each
Python image installing its own extra from the lock, the extras covering what each package imports (and the
operator's and the scheduler's pulling no torch or CUDA), and the content hash that decides whether
``make images`` builds again."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from strata_dev import images
from strata_operator.core.pods import TRAIN_COMMAND
from strata_serving.scaler import OPTIONAL_MODULES

ROOT = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = (ROOT / "requirements.lock").read_text()
PYTHON_IMAGES = {
    "operator": ("operator/strata_operator", "strata_operator"),
    "scheduler": ("scheduler/strata_scheduler", "strata_scheduler"),
    "serving": ("serving/strata_serving", "strata_serving.router"),
    "workloads": ("workloads/strata_workloads", "strata_workloads.launch"),
}
CUDA = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")


IMAGES = {image.name: image for image in images.images(Path("/bin-dir"))}


def dockerfile(name: str) -> list[str]:
    """The instructions that make the image ``name``: what the builder runs for it and what its hash covers."""
    return images.recipe(IMAGES[name])


def _name(requirement: str) -> str:
    return re.split(r"[=<>\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins(requirements: list[str]) -> dict[str, str]:
    return {_name(r): r.split("==", 1)[1] for r in requirements if "==" in r}


def lock_pins() -> dict[str, str]:
    return {m[0].lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", LOCK, re.MULTILINE)}


def lock_children() -> dict[str, set[str]]:
    """The lock's dependency graph, read from uv's ``# via`` annotations: package -> what it pulls in."""
    children: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", LOCK):
        head = re.match(r"^([A-Za-z0-9_.-]+)==", block)
        if not head:
            continue
        for parent in re.findall(r"#\s+(?:via\s+)?([A-Za-z0-9_.-]+)(?:\s|$)", block):
            children.setdefault(parent.lower(), set()).add(head.group(1).lower())
    return children


def closure(extra: str) -> set[str]:
    """Every distribution ``pip install strata[extra]`` installs with the lock as constraints."""
    graph = lock_children()
    todo = [_name(r) for r in [*PROJECT["dependencies"], *PROJECT["optional-dependencies"][extra]]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def third_party_imports(folder: str) -> set[str]:
    """Top-level modules a package's source imports, other than the standard library and Strata's own."""
    found: set[str] = set()
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and not m.startswith("strata_") and m != "__future__"}


def test_the_builder_knows_each_deployable_and_every_dockerfile_serves_one() -> None:
    assert set(IMAGES) == {"operator", "scheduler", "serving", "kube-scheduler", "workloads"}
    assert {p.relative_to(ROOT / "images").as_posix() for p in (ROOT / "images").glob("*/Dockerfile")} == {
        "python/Dockerfile",
        "kube-scheduler/Dockerfile",
    }
    assert {IMAGES[name].dockerfile for name in PYTHON_IMAGES} == {ROOT / "images" / "python" / "Dockerfile"}
    assert IMAGES["kube-scheduler"].dockerfile == ROOT / "images" / "kube-scheduler" / "Dockerfile"
    assert set(images.PYTHON_IMAGES) == set(PYTHON_IMAGES)
    for name in PYTHON_IMAGES:  # the target and the component it installs are the same one
        assert IMAGES[name].target == name
        assert dict(IMAGES[name].build_args) == {"COMPONENT": name}


def test_the_python_dockerfile_s_final_stages_are_exactly_the_python_images() -> None:
    lines = images.instructions((ROOT / "images" / "python" / "Dockerfile").read_text())
    stages = [line.split()[-1] for line in lines if line.startswith("FROM ") and " AS " in line]
    used = {line.split()[1] for line in lines if line.startswith("FROM ")}
    used |= {m for line in lines for m in re.findall(r"--from=(\S+)", line)}
    assert {s for s in stages if s not in used} == set(PYTHON_IMAGES)


@pytest.mark.parametrize("name", ["operator", "scheduler", "serving", "kube-scheduler", "workloads"])
def test_each_image_runs_as_a_numeric_non_root_user(name: str) -> None:
    users = [line.split()[1] for line in dockerfile(name) if line.startswith("USER ")]
    assert users, f"{name}: no USER (it would run as root)"
    uid, _, gid = users[-1].partition(":")
    # numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd
    assert uid.isdigit(), f"{name}: USER {users[-1]}"
    assert gid.isdigit(), f"{name}: USER {users[-1]}"
    assert int(uid) != 0, f"{name}: USER {users[-1]}"
    assert int(gid) != 0, f"{name}: USER {users[-1]}"


@pytest.mark.parametrize("name", ["operator", "scheduler", "serving", "kube-scheduler", "workloads"])
def test_each_base_is_pinned_by_digest_or_empty(name: str) -> None:
    lines = dockerfile(name)
    args = dict(line[4:].split("=", 1) for line in lines if line.startswith("ARG ") and "=" in line)
    stages = {line.split()[-1] for line in lines if line.startswith("FROM ") and " AS " in line}
    for line in (line for line in lines if line.startswith("FROM ")):
        base = line.split()[1]
        if base == "scratch" or base in stages:
            continue
        reference = args.get(base.removeprefix("${").removesuffix("}"), base)
        assert re.search(r"@sha256:[0-9a-f]{64}$", reference), f"{name}: FROM {base} is not pinned by digest"


@pytest.mark.parametrize("name", sorted(PYTHON_IMAGES))
def test_each_python_image_installs_its_own_extra_from_the_lock_on_one_base(name: str) -> None:
    lines = dockerfile(name)
    installs = [line for line in lines if "uv pip install" in line and "-r pyproject.toml" in line]
    assert len(installs) == 1, f"{name}: one dependency install step"
    assert f"--extra {name} " in installs[0] + " "
    assert "-c requirements.lock" in installs[0]
    froms = [line.split() for line in lines if line.startswith("FROM ")]
    stages = [words[-1] for words in froms if "AS" in words]
    # two stages on BASE (build, runtime), any other on an earlier stage
    assert [words[1] for words in froms if words[1] not in stages] == ["${BASE}", "${BASE}"]
    assert all(words[1] in stages[:i] for i, words in enumerate(froms) if words[1] != "${BASE}")
    assert lines.index(next(line for line in lines if line.startswith("ARG BASE="))) == 0


@pytest.mark.parametrize("name", sorted(PYTHON_IMAGES))
def test_each_python_image_starts_its_component_and_imports_it_while_building(name: str) -> None:
    lines = dockerfile(name)
    _, module = PYTHON_IMAGES[name]
    assert ast.literal_eval(next(line for line in lines if line.startswith("CMD "))[4:]) == ["python", "-m", module]
    smoke = [line for line in lines if line.startswith("RUN ") and "/opt/strata/venv/bin/python -c" in line]
    assert len(smoke) == 1, f"{name}: one import check while building"
    assert re.search(rf"import .*\b{re.escape(module)}\b", smoke[0]), f"{name}: the check does not import {module}"


@pytest.mark.parametrize("name", sorted(PYTHON_IMAGES))
def test_each_python_image_copies_the_contract_and_its_own_package_only(name: str) -> None:
    # so that a change to another component does not rebuild (or ship in) this image
    folder, _ = PYTHON_IMAGES[name]
    copied = images.copied_sources("\n".join(dockerfile(name)))
    assert sorted(copied) == sorted(["pyproject.toml", "requirements.lock", "api/strata_api", folder])


def test_the_workloads_image_starts_what_the_operator_puts_in_a_worker_pod() -> None:
    cmd = next(line for line in dockerfile("workloads") if line.startswith("CMD "))
    assert ast.literal_eval(cmd[4:]) == list(TRAIN_COMMAND)


@pytest.mark.parametrize("name", sorted(PYTHON_IMAGES))
def test_each_extra_covers_what_its_package_imports(name: str) -> None:
    folder, _ = PYTHON_IMAGES[name]
    installed = closure(name)
    distributions = packages_distributions()
    optional = OPTIONAL_IMPORTS.get(name, set())
    for module in sorted(third_party_imports(folder) - optional):
        owners = {_name(d) for d in distributions.get(module, [])}
        assert owners & installed, f"strata_{name} imports {module} ({owners}), which strata[{name}] does not install"


OPTIONAL_IMPORTS = {"serving": {"torch"}}
"""Modules a package imports only where installed: the router leaves its LSTM forecaster out without torch."""


def test_an_optional_import_is_one_the_router_leaves_out_when_missing() -> None:
    assert OPTIONAL_IMPORTS["serving"] <= set(OPTIONAL_MODULES.values())


def test_the_operator_scheduler_and_serving_extras_pull_no_torch_or_cuda_and_the_workloads_does() -> None:
    assert not {d for d in closure("operator") if CUDA.match(d) or d == "numpy"}
    assert not {d for d in closure("scheduler") if CUDA.match(d)}
    assert not {d for d in closure("serving") if CUDA.match(d)}  # the router's image: ~3 GiB lighter
    assert {"torch", "triton"} <= closure("workloads")


def test_dev_installs_every_component_extra_and_every_pin_is_the_lock_s() -> None:
    extras = PROJECT["optional-dependencies"]
    itself = next(r for r in extras["dev"] if r.startswith("strata["))
    assert set(itself.removeprefix("strata[").removesuffix("]").split(",")) == set(extras) - {"dev"}
    locked = lock_pins()
    for requirement in [*PROJECT["dependencies"], *(r for group in extras.values() for r in group)]:
        if requirement.startswith("strata["):
            continue
        name, version = next(iter(_pins([requirement]).items()))
        assert locked.get(name) == version, f"pyproject pins {requirement}, the lock has {locked.get(name)}"


def test_dockerignore_lets_through_exactly_what_the_dockerfiles_copy_from_the_repository() -> None:
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    copied = {src for name in PYTHON_IMAGES for src in images.copied_sources("\n".join(dockerfile(name)))}
    assert copied == allowed


def test_copied_sources_reads_copy_and_add_but_not_copies_from_a_stage() -> None:
    text = "FROM x AS b\nCOPY a.txt \\\n  b/ /dst/\nCOPY --from=b /opt /opt\nADD --chown=1:1 c /c\n# COPY d /d\n"
    assert images.copied_sources(text) == ["a.txt", "b/", "c"]


def test_an_image_s_recipe_is_its_target_s_stages_with_its_build_arguments(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE=b@sha256:0\nFROM ${BASE} AS build\nARG C\nCOPY $C/src /src\nFROM ${BASE} AS runtime\n"
        'COPY --from=build /src /src\nFROM runtime AS one\nCMD ["one"]\nFROM runtime AS two\nCMD ["two"]\n'
    )
    one = images.Image("one", tmp_path, tmp_path / "Dockerfile", "one", (("C", "a"),))
    assert images.recipe(one) == [
        "ARG BASE=b@sha256:0",
        "FROM ${BASE} AS build",
        "ARG C",
        "COPY a/src /src",
        "FROM ${BASE} AS runtime",
        "COPY --from=build /src /src",
        "FROM runtime AS one",
        'CMD ["one"]',
    ]
    with pytest.raises(images.ImageError, match=r"three: .* has no stage 'three' \(it has build, runtime, one, two\)"):
        images.recipe(images.Image("three", tmp_path, tmp_path / "Dockerfile", "three"))


def test_one_target_s_hash_ignores_another_target_s_stage_and_files(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "app.py").write_text("print(1)\n")
    dockerfile = tmp_path / "Dockerfile"
    head = 'ARG BASE=b@sha256:0\nFROM ${BASE} AS build\nARG C\nCOPY ${C} /src\nFROM build AS a\nCMD ["a"]\n'
    dockerfile.write_text(head + 'FROM build AS b\nCMD ["b"]\n')
    a = images.Image("a", tmp_path, dockerfile, "a", (("C", "a"),))
    b = images.Image("b", tmp_path, dockerfile, "b", (("C", "b"),))
    first_a, first_b = images.content_hash(a, "base"), images.content_hash(b, "base")
    assert first_a != first_b

    (tmp_path / "b" / "app.py").write_text("print(2)\n")
    dockerfile.write_text(head + 'FROM build AS b\nCMD ["b", "--verbose"]\n')
    assert images.content_hash(a, "base") == first_a, "b's files and b's final stage"
    assert images.content_hash(b, "base") != first_b
    (tmp_path / "a" / "app.py").write_text("print(2)\n")
    second_a = images.content_hash(a, "base")
    assert second_a != first_a, "a's own files"
    dockerfile.write_text(head.replace("ARG C", "ARG C\nENV X=1") + 'FROM build AS b\nCMD ["b"]\n')
    assert images.content_hash(b, "base") != first_b, "a shared stage"
    assert images.content_hash(a, "base") != second_a, "a shared stage"


def test_the_builder_passes_the_target_and_its_build_arguments() -> None:
    assert images._target_args(IMAGES["scheduler"]) == ["--target", "scheduler", "--build-arg", "COMPONENT=scheduler"]
    assert images._target_args(IMAGES["kube-scheduler"]) == []


def write_context(tmp_path: Path) -> images.Image:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print(1)\n")
    (tmp_path / "unrelated.txt").write_text("x\n")
    (tmp_path / "Dockerfile").write_text("ARG BASE=b@sha256:0\nFROM ${BASE}\nCOPY src src\n")
    return images.Image("app", tmp_path, tmp_path / "Dockerfile")


def test_the_content_hash_changes_with_each_input_and_with_nothing_else(tmp_path: Path) -> None:
    image = write_context(tmp_path)
    first = images.content_hash(image, "localhost/strata-base:1")
    assert images.content_hash(image, "localhost/strata-base:1") == first

    (tmp_path / "unrelated.txt").write_text("changed\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\0")
    assert images.content_hash(image, "localhost/strata-base:1") == first, "files the image does not copy"

    assert images.content_hash(image, "localhost/strata-base:2") != first, "the base"
    (tmp_path / "src" / "app.py").write_text("print(2)\n")
    second = images.content_hash(image, "localhost/strata-base:1")
    assert second != first, "a copied file"
    (tmp_path / "src" / "new.py").write_text("")
    assert images.content_hash(image, "localhost/strata-base:1") not in {first, second}, "a new copied file"
    third = images.content_hash(image, "localhost/strata-base:1")
    (tmp_path / "src" / "new.py").chmod(0o755)
    fourth = images.content_hash(image, "localhost/strata-base:1")
    assert fourth != third, "a file's executable bit"
    (tmp_path / "Dockerfile").write_text("# a comment\nARG BASE=b@sha256:0\nFROM ${BASE}\nCOPY src src\n")
    assert images.content_hash(image, "localhost/strata-base:1") == fourth, "a comment in the Dockerfile"
    (tmp_path / "Dockerfile").write_text("ARG BASE=b@sha256:0\nFROM ${BASE}\nCOPY src src\nUSER 1:1\n")
    assert images.content_hash(image, "localhost/strata-base:1") != fourth, "the Dockerfile's instructions"


def test_an_image_on_an_empty_base_does_not_change_with_the_python_base(tmp_path: Path) -> None:
    (tmp_path / "tool").write_text("binary")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY tool /tool\n")
    image = images.Image("tool", tmp_path, tmp_path / "Dockerfile")
    assert images.content_hash(image, "localhost/strata-base:1") == images.content_hash(image, "other")


def test_a_copied_path_that_is_missing_names_the_image_and_the_path(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY kube-scheduler /usr/local/bin/\n")
    image = images.Image("kube-scheduler", tmp_path, tmp_path / "Dockerfile")
    with pytest.raises(images.ImageError, match=r"kube-scheduler: .* copies 'kube-scheduler'"):
        images.content_hash(image, "")


def test_an_unknown_image_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(images.ImageError, match="unknown image operater: the images are operator, scheduler"):
        images._select(images.images(Path("/bin-dir")), ["operater"])


def test_a_new_build_removes_the_older_archives_of_that_image_only(tmp_path: Path) -> None:
    names = ["strata-scheduler-aaaaaaaaaaaa", "strata-scheduler-bbbbbbbbbbbb", "strata-kube-scheduler-cccccccccccc"]
    for name in [*names, "strata-base-dddddddddddd"]:
        (tmp_path / f"{name}.tar").write_bytes(b"")
    images.remove_older_builds(tmp_path / "strata-scheduler-bbbbbbbbbbbb.tar")
    assert sorted(p.stem for p in tmp_path.iterdir()) == sorted([*names[1:], "strata-base-dddddddddddd"])


def test_docker_builds_are_tagged_image_tag_when_set_else_by_content(tmp_path: Path) -> None:
    image = write_context(tmp_path)
    assert images.docker_ref(image, "e2e") == "localhost/strata-app:e2e"
    assert images.docker_ref(image) == f"localhost/strata-app:{images.content_hash(image, 'dockerfile-default')}"
    with pytest.raises(images.ImageError, match=r"IMAGE_TAG='e2e:1' is not a valid image tag"):
        images.docker_ref(image, "e2e:1")

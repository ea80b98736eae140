"""The CI workflows under ``.github/workflows`` cannot run here, so what they name is checked here: every
``make`` target exists in the Makefile, every repository path exists, every ``python -m strata_dev...``
subcommand is one the command accepts, and every ``helm --set`` key is a key of the chart's values.yaml. The
README's kind section runs the same commands and gets the same checks. actionlint (``make actionlint``, part
of ``make lint``) checks the workflows' syntax, expressions and shell; here it also checks each pinned action's
``with:`` inputs, which it knows by major version only (``actions/checkout@v6``, not ``@v6.0.0``)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from strata_dev import binaries
from strata_dev.paths import GOMOD

ROOT = Path(__file__).resolve().parents[3]
WORKFLOWS = ROOT / ".github" / "workflows"
VALUES = ROOT / "charts" / "strata" / "values.yaml"
REPO_ROOTS = [
    ".github",
    "api",
    "bench",
    "charts",
    "crds",
    "docs",
    "examples",
    "hack",
    "images",
    "operator",
    "scheduler",
    "tests",
    "workloads",
]
"""Top-level folders of the repository: a word starting with one of these and a slash is a path that must exist."""
_PATH = re.compile(rf"(?<![\w./~-])((?:{'|'.join(map(re.escape, REPO_ROOTS))})/[\w./*-]*)")
_MODULE = re.compile(r"\bpython3?\s+-m\s+(strata_dev(?:\.\w+)?)\s+([A-Za-z][\w-]*)")


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    rules = re.findall(r"^([A-Za-z0-9_][A-Za-z0-9_. -]*?)\s*:(?!=)", text, re.MULTILINE)
    return {target for rule in rules for target in rule.split()}


def run_scripts(workflow: dict[str, Any]) -> Iterator[str]:
    """The shell of every step of every job."""
    for job in (workflow.get("jobs") or {}).values():
        for step in job.get("steps") or []:
            if "run" in step:
                yield str(step["run"])


def commands(script: str) -> Iterator[list[str]]:
    """Each simple command of a shell script as words (comments dropped, ``&&``, ``||``, ``;``, ``|`` split)."""
    joined = re.sub(r"\\\n", " ", script)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, ";"]:
            if word in {"&&", "||", ";", "|"}:
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def make_targets(command: list[str]) -> list[str]:
    if not command or command[0] != "make":
        return []
    return [w for w in command[1:] if "=" not in w and not w.startswith("-")]


def helm_set_keys(command: list[str]) -> list[str]:
    if command[:1] != ["helm"]:
        return []
    keys = []
    for flag, value in itertools.pairwise(command):
        if flag in {"--set", "--set-string"}:
            keys += [pair.split("=", 1)[0] for pair in value.split(",")]
    return keys


def helm_charts(command: list[str]) -> list[str]:
    """The chart argument of ``helm install|upgrade|template RELEASE CHART``."""
    if command[:1] != ["helm"] or len(command) < 2 or command[1] not in {"install", "upgrade", "template"}:
        return []
    flags_with_value = {"-n", "--namespace", "--timeout", "--set", "--set-string", "-f", "--values", "--version"}
    positional = []
    skip = False
    for word in command[2:]:
        if skip:
            skip = False
        elif word in flags_with_value:
            skip = True
        elif not word.startswith("-"):
            positional.append(word)
    return positional[1:2]


def has_key(values: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True


def subcommand_exists(module: str, subcommand: str) -> bool:
    """Whether ``python -m module subcommand --help`` is accepted: argparse refuses an unknown choice first."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "hack"))
    proc = subprocess.run(
        [sys.executable, "-m", module, subcommand, "--help"], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    return proc.returncode == 0


def problems(text: str, scripts: list[str]) -> list[str]:
    """What a workflow (its whole ``text``, and the shell ``scripts`` of its steps) names that does not exist."""
    found = []
    targets = makefile_targets()
    values = yaml.safe_load(VALUES.read_text())
    for path in sorted({p.rstrip(".") for p in _PATH.findall(text)}):
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            found.append(f"path {path} does not exist")
    for module, subcommand in sorted(set(_MODULE.findall("\n".join(scripts)))):
        if not subcommand_exists(module, subcommand):
            found.append(f"python -m {module} has no subcommand {subcommand}")
    for command in (c for script in scripts for c in commands(script)):
        found += [f"make target {t} is not in the Makefile" for t in make_targets(command) if t not in targets]
        found += [f"helm value {k} is not in {VALUES.name}" for k in helm_set_keys(command) if not has_key(values, k)]
        found += [f"chart {c} does not exist" for c in helm_charts(command) if not (ROOT / c / "Chart.yaml").is_file()]
    return found


def workflow_problems(text: str) -> list[str]:
    return problems(text, list(run_scripts(yaml.safe_load(text))))


def readme_kind_section() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^#+ Run the end-to-end tier on your laptop \(kind\)\n(.*?)(?=^#+ )", readme, re.M | re.S)
    assert match, "README.md has no section 'Run the end-to-end tier on your laptop (kind)'"
    return match.group(1)


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.iterdir())


def test_every_workflow_is_a_yaml_file_actionlint_reads() -> None:
    # `make actionlint` lints .github/workflows/*.yaml; a .yml file would escape it
    assert workflow_files(), "no workflow under .github/workflows"
    assert [p.name for p in workflow_files() if p.suffix != ".yaml"] == []


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_everything_a_workflow_names_exists(path: Path) -> None:
    assert workflow_problems(path.read_text()) == []


def test_the_readme_s_kind_section_names_only_what_exists() -> None:
    section = readme_kind_section()
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", section, re.S)
    assert blocks, "the kind section has no sh block"
    assert problems(section, blocks) == []


def test_the_e2e_workflow_and_the_readme_install_the_chart_with_the_same_values() -> None:
    def set_keys(scripts: list[str]) -> list[str]:
        return sorted(k for s in scripts for c in commands(s) for k in helm_set_keys(c))

    workflow = list(run_scripts(yaml.safe_load((WORKFLOWS / "e2e.yaml").read_text())))
    readme = re.findall(r"```(?:sh|bash)\n(.*?)```", readme_kind_section(), re.S)
    assert set_keys(workflow) == set_keys(readme)
    assert "operator.image.tag" in set_keys(workflow)


def unpinned(workflow_text: str) -> list[str]:
    """Jobs without a timeout, and actions not pinned to an exact release (or a commit) with a comment beside it."""
    jobs = yaml.safe_load(workflow_text)["jobs"]
    found = [f"job {name} has no timeout-minutes" for name, job in jobs.items() if "timeout-minutes" not in job]
    for ref in re.findall(r"^\s*(?:-\s+)?uses:\s*(.*)$", workflow_text, re.MULTILINE):
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@(?:v\d+\.\d+\.\d+|[0-9a-f]{40})\s+#\s*\S.*", ref):
            found.append(f"uses: {ref}")
    return found


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_every_job_has_a_timeout_and_every_action_an_exact_pin_with_a_comment(path: Path) -> None:
    assert unpinned(path.read_text()) == []
    text = "jobs:\n  a:\n    steps:\n      - uses: actions/checkout@v6 # moving\n      - uses: x/y@v1.0.0\n"
    assert unpinned(text) == ["job a has no timeout-minutes", "uses: actions/checkout@v6 # moving", "uses: x/y@v1.0.0"]


def test_a_wrong_name_in_a_workflow_is_reported() -> None:
    text = """
name: broken
on: push
jobs:
  e2e:
    runs-on: ubuntu-latest
    steps:
      - run: make venv test-e2ee IMAGE_TAG=e2e
      - run: |
          PYTHONPATH=hack python3 -m strata_dev.binaries pathh >> "$GITHUB_PATH"
          python -m strata_dev images && python -m strata_dev imagez
      - run: >-
          helm install strata charts/strata -n strata-system --wait
          --set operator.image.tag=e2e --set operator.imag.repository=x,imagePullPolicy=Never
      - run: helm install strata charts/strta
      - uses: actions/cache@v5.0.0
        with:
          key: ${{ hashFiles('hack/gomod/**', 'hack/strata_dev/binaries.pyy') }}
"""
    assert workflow_problems(text) == [
        "path charts/strta does not exist",
        "path hack/strata_dev/binaries.pyy does not exist",
        "python -m strata_dev has no subcommand imagez",
        "python -m strata_dev.binaries has no subcommand pathh",
        "make target test-e2ee is not in the Makefile",
        "helm value operator.imag.repository is not in values.yaml",
        "chart charts/strta does not exist",
    ]


def as_major_versions(workflow_text: str) -> str:
    """``uses: owner/action@v6.0.0`` read as ``@v6``: actionlint knows popular actions' inputs by major version only."""
    return re.sub(r"(\buses:\s*[\w.-]+/[\w./-]+@v\d+)(?:\.\d+)+(?=\s|$)", r"\1", workflow_text, flags=re.MULTILINE)


def actionlint(tmp_path: Path, workflows: dict[str, str]) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in workflows.items():
        (folder / name).write_text(as_major_versions(text))
    tool = binaries.ensure_tool("actionlint")  # built by `make lint` before the unit tier runs
    files = [str(folder / name) for name in sorted(workflows)]
    return subprocess.run([str(tool), *files], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_each_pinned_action_gets_only_inputs_its_release_line_declares(tmp_path: Path) -> None:
    # `make actionlint` checks the workflows as written; with exact release pins it cannot know their inputs
    workflows = {path.name: path.read_text() for path in workflow_files()}
    assert "uses: actions/setup-python@v6\n" in as_major_versions("      - uses: actions/setup-python@v6.0.0\n")
    proc = actionlint(tmp_path, workflows)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    misspelt = workflows["e2e.yaml"].replace("python-version:", "pyton-version:")
    proc = actionlint(tmp_path, {"e2e.yaml": misspelt})
    assert proc.returncode == 1
    assert 'input "pyton-version" is not defined in action "actions/setup-python@v6"' in proc.stdout


def test_dev_tools_have_their_own_cache_folder_keyed_by_their_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRATA_CACHE_DIR", "/cache")
    (actionlint,) = [tool for tool in binaries.TOOLS if tool.name == "actionlint"]
    assert binaries.tool_path(actionlint) == Path(f"/cache/tools/actionlint-{binaries.ACTIONLINT_VERSION}/actionlint")
    # its wrapper module pins the same version, and lives outside hack/gomod (the control-plane binaries' key)
    go_mod = (binaries.GOTOOLS / "actionlint" / "go.mod").read_text()
    assert f"require github.com/rhysd/actionlint {binaries.ACTIONLINT_VERSION}\n" in go_mod
    assert GOMOD not in binaries.GOTOOLS.parents
    assert all(b.modules == GOMOD for b in binaries.BINARIES)


def test_an_unknown_tool_is_refused_with_the_known_ones() -> None:
    known = "actionlint, helm, prometheus, promtool"
    with pytest.raises(binaries.BuildError, match=f"unknown tool 'shellcheck': the tools are {known}"):
        binaries.ensure_tool("shellcheck")

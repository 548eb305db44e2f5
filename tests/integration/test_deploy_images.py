"""Each container image's command, run here as the image would run it (no Docker engine on
this box): the final stage's ENV, its ENTRYPOINT and CMD, files at the paths its COPY lines
put them, then its own HEALTHCHECK command until it passes. The control-plane commands run
with every module the control-plane image does not install made unimportable
(tests/support/block_imports.py), so a start-up import of aiortc, av, numpy, NVML, boto3 or
psutil fails here the way it would fail in the image."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import stat
import sys
from pathlib import Path

import pytest

from pixelfleet.net import free_port
from tests.conftest import StartProcess, require_binary
from tests.support.dockerfile import Stage, read_dockerfile
from tests.support.processes import Child

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
DOCKER = ROOT / "deploy" / "docker"
# What `pip install .` (no extras: the control-plane image) leaves out
NOT_IN_CONTROL_PLANE = "aiortc,av,numpy,pynvml,boto3,psutil"
# The agent process itself needs neither; its synthetic slots (children) do, in the image's streamer extra
NOT_IN_AGENT_PROCESS = "aiortc,av,numpy"
SECRET = "s" * 40


def final_stage(image: str) -> Stage:
    return read_dockerfile(DOCKER / f"{image}.Dockerfile")[-1]


def image_paths(stage: Stage) -> dict[str, str]:
    """Container path -> file in this checkout, from the stage's plain COPY lines."""
    paths = {}
    for inst, args in stage.instructions:
        if inst == "COPY" and not args.startswith("--"):
            src, dest = args.split()
            paths[dest] = str(ROOT / src)
    return paths


def image_env(stage: Stage, **overrides: str) -> dict[str, str]:
    env = {**os.environ, **{k: v for k, v in stage.env().items() if k != "PATH"}, **overrides}
    env.pop(
        "PIXELFLEET_TEST__STRICT", None
    )  # a pixelfleet command refuses no PIXELFLEET_TEST__* name, but keep it clean
    return env


def local_command(command: list[str], stage: Stage) -> list[str]:
    """An image command with its paths mapped to this checkout and python to this one."""
    paths = image_paths(stage)
    return [sys.executable if word == "python" else paths.get(word, word) for word in command]


async def run_healthcheck(stage: Stage, env: dict[str, str], *extra: str) -> tuple[int, str]:
    """One run of the image's HEALTHCHECK command, killed after its own --timeout."""
    options, command = stage.healthcheck()
    timeout_s = float(options["timeout"].removesuffix("s"))
    proc = await asyncio.create_subprocess_exec(
        *local_command(command, stage),
        *extra,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # so a timeout kills the whole pipeline (sh, stunclient, grep)
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + " (timed out)"
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def until_healthy(child: Child, stage: Stage, env: dict[str, str], *extra: str) -> str:
    """The health check's output once it passes (the child exiting first fails the test)."""
    last: list[str] = []

    async def passes() -> bool:
        code, out = await run_healthcheck(stage, env, *extra)
        last[:] = [out]
        return code == 0

    with contextlib.suppress(pytest.fail.Exception):
        await child.wait_until(passes, "a passing HEALTHCHECK", timeout_s=60, period_s=0.3)
        return last[0]
    pytest.fail(f"{child.name}: HEALTHCHECK never passed; last said {last}\n{child.output()}", pytrace=False)


async def start_image_command(
    start_process: StartProcess, stage: Stage, command: list[str], blocked: str, env: dict[str, str]
) -> Child:
    entrypoint = stage.exec_form("ENTRYPOINT")
    assert entrypoint == ["pixelfleet"]
    return await start_process(blocked, *command, module="tests.support.block_imports", env=env)


async def test_control_plane_signaling(start_process: StartProcess) -> None:
    stage = final_stage("control-plane")
    command = stage.exec_form("CMD")
    assert command == ["signaling"]
    player, streamer = free_port(), free_port()
    env = image_env(
        stage,
        PIXELFLEET_HOST="127.0.0.1",
        PIXELFLEET_PLAYER_PORT=str(player),
        PIXELFLEET_STREAMER_PORT=str(streamer),
    )
    child = await start_image_command(start_process, stage, command, NOT_IN_CONTROL_PLANE, env)
    out = await until_healthy(child, stage, env, str(child.pid))
    assert f"http://127.0.0.1:{player}/readyz" in out
    assert await child.stop() == 0


async def test_control_plane_matchmaker_and_agent(start_process: StartProcess) -> None:
    control = final_stage("control-plane")
    port = free_port()
    mm_env = image_env(
        control,
        PIXELFLEET_MATCHMAKER__HOST="127.0.0.1",
        PIXELFLEET_MATCHMAKER__PORT=str(port),
        PIXELFLEET_SESSION_TOKEN_SECRET=SECRET,
        PIXELFLEET_AGENT_TOKEN=SECRET,
    )
    # the same image, the command the CDK app's matchmaker service gives it
    matchmaker = await start_image_command(start_process, control, ["matchmaker"], NOT_IN_CONTROL_PLANE, mm_env)
    out = await until_healthy(matchmaker, control, mm_env, str(matchmaker.pid))
    assert f"http://127.0.0.1:{port}/readyz" in out

    agent_stage = final_stage("agent")
    command = agent_stage.exec_form("CMD")
    assert command == ["agent"]
    metrics = free_port()
    agent_env = image_env(
        agent_stage,
        PIXELFLEET_AGENT__METRICS_HOST="127.0.0.1",
        PIXELFLEET_AGENT__METRICS_PORT=str(metrics),
        PIXELFLEET_AGENT__MATCHMAKER_URL=f"http://127.0.0.1:{port}",
        PIXELFLEET_AGENT_TOKEN=SECRET,
        PIXELFLEET_AGENT__SLOTS="1",
        # a slot that only waits: this test is about the agent's own start, not a streamer's
        PIXELFLEET_AGENT__COMMAND="{python},-c,import time; time.sleep(300)",
    )
    agent = await start_image_command(start_process, agent_stage, command, NOT_IN_AGENT_PROCESS, agent_env)
    out = await until_healthy(agent, agent_stage, agent_env, str(agent.pid))
    assert f"http://127.0.0.1:{metrics}/readyz" in out
    assert await agent.stop() == 0
    assert await matchmaker.stop() == 0


def coturn_env(stage: Stage, tmp_path: Path, **overrides: str) -> dict[str, str]:
    from turn.coturn import relay_port_range

    low, high = relay_port_range(20)
    paths = image_paths(stage)
    settings = {
        "TEMPLATE": paths["/etc/coturn/turnserver.conf.template"],
        "CONF": str(tmp_path / "turnserver.conf"),
        "TURN_SECRET": secrets.token_urlsafe(24),
        "PRIVATE_IP": "127.0.0.1",
        "UE_PEER_RANGE": "10.0.0.0/16",
        "LISTEN_PORT": str(free_port(udp=True)),
        "MIN_PORT": str(low),
        "MAX_PORT": str(high),
    }
    return image_env(stage, **{**settings, **overrides})


async def start_coturn(stage: Stage, env: dict[str, str], log: Path) -> Child:
    with open(log, "wb") as out:  # noqa: ASYNC230 - once, before the process
        proc = await asyncio.create_subprocess_exec(
            *local_command(stage.exec_form("ENTRYPOINT"), stage),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    return Child("coturn image entrypoint", proc, log, group=True)


async def test_coturn_entrypoint_renders_and_answers_stun(tmp_path: Path) -> None:
    require_binary("turnserver")
    require_binary("turnutils_stunclient")
    require_binary("envsubst")
    stage = final_stage("coturn")
    env = coturn_env(stage, tmp_path)
    child = await start_coturn(stage, env, tmp_path / "coturn.log")
    try:
        await until_healthy(child, stage, env)
        conf = Path(env["CONF"])
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
        text = conf.read_text()
        assert "allowed-peer-ip=10.0.0.0-10.0.255.255" in text
        assert f"listening-port={env['LISTEN_PORT']}" in text
        assert f"static-auth-secret={env['TURN_SECRET']}" in text
        assert "no-tls" in text.splitlines() and "cert=" not in text and "${" not in text
    finally:
        await child.stop()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"UE_PEER_RANGE": "10.0.0.0/33"}, "bad prefix length"),
        ({"UE_PEER_RANGE": "10.0.0/16"}, "not an IPv4 CIDR"),
        ({"TLS_CERT": "/x.crt"}, "set both TLS_CERT and TLS_KEY"),
    ],
)
async def test_coturn_entrypoint_refuses_bad_settings(tmp_path: Path, overrides: dict[str, str], message: str) -> None:
    require_binary("envsubst")
    stage = final_stage("coturn")
    child = await start_coturn(stage, coturn_env(stage, tmp_path, **overrides), tmp_path / "coturn.log")
    assert await child.wait(10) == 2
    assert message in child.output()
    assert not (tmp_path / "turnserver.conf").exists() or "static-auth" not in json.dumps(child.output())


async def test_blocked_imports_do_block(tmp_path: Path) -> None:
    """The blocking above is real: a command that needs aiortc at start fails under it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.support.block_imports",
        "aiortc",
        "streamer",
        "--help",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode != 0
    assert b"aiortc is blocked" in out

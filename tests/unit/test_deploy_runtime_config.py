"""Every deployed service's environment goes through that service's own settings loader.

The CDK task definitions and GPU hosts' boot script, and the Helm chart's rendered
containers, each become (argv, environment), with placeholders for what only exists in an
account (secret values, addresses), and run through ``pixelfleet.cli.main``: the same
argument parsing and ``load_settings`` the image's ``pixelfleet signaling``/``matchmaker``/
``agent`` do, and then what each command builds before it serves (signalling's session keys
and TURN wiring, the matchmaker). A setting the service refuses (a TURN provider without
URLs, a renamed variable, a bad value) fails here instead of crash-looping a deployment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import Environment  # noqa: E402
from pixelfleet_deploy.config import StageConfig  # noqa: E402
from pixelfleet_deploy.stage import build_stage, new_app  # noqa: E402

from pixelfleet import cli  # noqa: E402
from tests.unit.test_deploy_helm import SECRETS, by_kind, helm, render  # noqa: E402, F401 - helm: fixture

ENV = Environment(account="123456789012", region="us-east-1")
ADDRESS = "198.51.100.7"  # any address or DNS name only CloudFormation knows (TEST-NET-2)
# What Secrets Manager (CDK) or the operator (Helm) puts behind each secret variable.
SECRET_VALUES = {
    "PIXELFLEET_STATE_URL": f"rediss://:placeholder-auth-token@{ADDRESS}:6390/?cluster=1",
    "PIXELFLEET_SESSION_TOKEN_SECRET": "s" * 48,
    "PIXELFLEET_REPORT_TOKEN": "r" * 48,
    "PIXELFLEET_TURN__SECRETS": "t" * 48,
    "PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET": "k" * 48,
    "PIXELFLEET_ADMIN_TOKEN": "a" * 48,
    "PIXELFLEET_AGENT_TOKEN": "placeholder-agent-token",
}


def run_loader(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, Any]:
    """``pixelfleet <argv>`` up to the point it would serve; (exit code, what it built)."""
    built: dict[str, Any] = {}

    def signaling(args: Any, settings: Any) -> int:
        from signaling.sessions import verify_keys
        from turn.wiring import wire_turn

        keys = verify_keys(settings.signaling)
        built["turn"] = wire_turn(settings.turn, base_options=settings.signaling.peer_connection_options, keys=keys)
        built["settings"] = settings
        return 0

    def matchmaker(args: Any, settings: Any) -> int:
        from matchmaker.server import build_matchmaker

        built["matchmaker"] = build_matchmaker(settings.matchmaker)
        built["settings"] = settings
        return 0

    def agent(args: Any, settings: Any) -> int:
        built["settings"] = settings
        return 0

    monkeypatch.setattr(cli, "_cmd_signaling", signaling)
    monkeypatch.setattr(cli, "_cmd_matchmaker", matchmaker)
    monkeypatch.setattr(cli, "_cmd_agent", agent)
    code = cli.main(argv, environ=env)
    return code, built


def check_loads(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    code, built = run_loader(argv, env, monkeypatch)
    assert code == 0, (argv, capsys.readouterr().err)
    return built


# --- CDK -------------------------------------------------------------------------------------


def resolve(value: Any) -> str:
    """A CloudFormation value as text: Fn::Join joined, any other intrinsic a placeholder."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return str(sep).join(resolve(p) for p in parts)
    return ADDRESS


@pytest.fixture(scope="module")
def cdk_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("cdk.out")
    app = new_app(str(out))
    build_stage(app, StageConfig(name="test", image_tag="0123456789ab"), ENV)
    app.synth()
    yield out


def cdk_template(out: Path, part: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((out / f"pixelfleet-test-{part}.template.json").read_text())
    return result


def cdk_services(out: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each Fargate container's command and environment (its secrets as placeholders)."""
    services: dict[str, tuple[list[str], dict[str, str]]] = {}
    for resource in cdk_template(out, "control")["Resources"].values():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        (container,) = resource["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: resolve(e["Value"]) for e in container.get("Environment", [])}
        for secret in container.get("Secrets", []):
            assert secret["Name"] in SECRET_VALUES, f"a placeholder for the new secret {secret['Name']}"
            env[secret["Name"]] = SECRET_VALUES[secret["Name"]]
        services[container["Command"][0]] = (container["Command"], env)
    return services


def cdk_agent(out: Path, spot: str = "true") -> tuple[list[str], dict[str, str]]:
    """The GPU hosts' ``docker run`` of the agent: its ``-e`` settings and the image's command."""
    (lt,) = [
        r for r in cdk_template(out, "gpu-default")["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    script = resolve(lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"])
    (line,) = [x for x in script.splitlines() if x.startswith("docker run -d --name pixelfleet-agent")]
    words = shlex.split(
        line.replace("$HOST_ID", "i-0123456789abcdef0").replace("$AZ", "us-east-1a").replace("$SPOT", spot)
    )
    env: dict[str, str] = {}
    for flag, value in zip(words, words[1:], strict=False):
        if flag == "-e":
            name, sep, text = value.partition("=")
            env[name] = text if sep else SECRET_VALUES[name]  # `-e NAME`: from the script's environment
    return ["agent"], env


def test_every_cdk_service_environment_loads(
    cdk_out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    services = cdk_services(cdk_out)
    assert set(services) == {"signaling", "matchmaker"}
    argv, env = services["signaling"]
    built = check_loads(argv, env, monkeypatch, capsys)
    turn = built["settings"].turn
    assert turn.provider == "rest-secret" and built["turn"] is not None
    assert len(turn.urls) == 2 * StageConfig().turn_hosts  # UDP and TCP per relay
    assert all(re.fullmatch(rf"turn:{ADDRESS}:3478\?transport=(udp|tcp)", u) for u in turn.urls), turn.urls
    argv, env = services["matchmaker"]
    built = check_loads(argv, env, monkeypatch, capsys)
    assert built["settings"].matchmaker.agent_key_secret == SECRET_VALUES["PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET"]
    # records into the session table (the name is CloudFormation's): a DynamoDB sink, made at start
    from matchmaker.records_dynamodb import DynamoDbSink

    assert built["settings"].matchmaker.records_table == ADDRESS
    assert isinstance(built["matchmaker"].sink, DynamoDbSink) and built["matchmaker"].sink.table == ADDRESS
    for spot in ("true", "false"):  # the boot script sets it from the instance's life cycle
        argv, env = cdk_agent(cdk_out, spot)
        built = check_loads(argv, env, monkeypatch, capsys)
        assert built["settings"].agent.spot is (spot == "true")
    agent = built["settings"].agent
    assert agent.host_id == "i-0123456789abcdef0" and agent.cloudwatch_namespace == "Pixelfleet"
    assert agent.streamer_url == f"ws://{ADDRESS}:8888" and agent.matchmaker_url == f"http://{ADDRESS}:9999"


def test_the_loader_refuses_what_the_services_refuse(
    cdk_out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check bites: signalling's environment without its TURN URLs (as first deployed), or
    with a misspelt variable, does not load."""
    argv, env = cdk_services(cdk_out)["signaling"]
    without_urls = {k: v for k, v in env.items() if k != "PIXELFLEET_TURN__URLS"}
    code, _ = run_loader(argv, without_urls, monkeypatch)
    assert code == 2 and "needs urls" in capsys.readouterr().err
    code, _ = run_loader(argv, {**env, "PIXELFLEET_TURN__URL": "turn:x:3478"}, monkeypatch)
    assert code == 2 and "PIXELFLEET_TURN__URL" in capsys.readouterr().err


def test_every_pools_autoscaler_starts_with_a_config_its_loader_takes(
    cdk_out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The autoscale stack's containers run as ECS would run them: the real ``sh -c`` of the
    task definition with its environment, a ``pixelfleet`` on PATH that records its argv and
    the config file it was given (the shell's here-document on fd 3), then ``pixelfleet
    autoscale`` with that argv and that config, through the autoscaler's own argument
    parsing, ``load_config`` and ``build`` (boto3 clients made, nothing called)."""
    import subprocess

    from autoscale import run as autoscale_run
    from autoscale.providers.aws_asg import AwsAsgProvider

    fake = tmp_path / "bin" / "pixelfleet"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$OUT/argv"\ncat "$5" > "$OUT/config.json"\n')
    fake.chmod(0o755)
    containers = [
        c
        for r in cdk_template(cdk_out, "autoscale")["Resources"].values()
        if r["Type"] == "AWS::ECS::TaskDefinition"
        for c in r["Properties"]["ContainerDefinitions"]
    ]
    assert [c["Name"] for c in containers] == [f"autoscale-{p.name}" for p in StageConfig().pools]
    for container in containers:
        env = {e["Name"]: resolve(e["Value"]) for e in container["Environment"]}
        assert [s["Name"] for s in container["Secrets"]] == ["PIXELFLEET_ADMIN_TOKEN"]
        # no temporary directory to write to, as on the task's read-only root
        run_env = {**env, "PATH": f"{fake.parent}:/usr/bin:/bin", "OUT": str(tmp_path), "TMPDIR": "/nonexistent"}
        subprocess.run([*container["EntryPoint"], *container["Command"]], env=run_env, check=True, timeout=30)
        argv = (tmp_path / "argv").read_text().splitlines()
        assert argv == ["autoscale", "--matchmaker", f"http://{ADDRESS}:9999", "--config", "/dev/fd/3"]
        argv[4] = str(tmp_path / "config.json")  # what the autoscaler read from fd 3
        assert json.loads((tmp_path / "config.json").read_text()) == json.loads(env["PIXELFLEET_AUTOSCALE_CONFIG"])
        config = autoscale_run.load_config(argv[4])
        assert (config.aws.on_demand_group, config.aws.spot_group) == (
            "pixelfleet-test-default-on-demand",
            "pixelfleet-test-default-spot",
        )
        assert config.aws.notice_queue_url == ADDRESS and config.aws.region == "us-east-1"
        built: list[Any] = []

        async def started(controller: Any, *, once: bool, built: list[Any] = built) -> int:
            built.append(controller)
            return 0

        monkeypatch.setattr(autoscale_run, "run", started)
        for k, v in {
            "PIXELFLEET_ADMIN_TOKEN": SECRET_VALUES["PIXELFLEET_ADMIN_TOKEN"],
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
        }.items():
            monkeypatch.setenv(k, v)
        assert cli.main(argv) == 0
        (controller,) = built
        assert isinstance(controller.provider, AwsAsgProvider) and controller.provider.sqs is not None
        assert (controller.tenant, controller.app) == ("default", "default")


# --- Helm ------------------------------------------------------------------------------------


FIELD_VALUES = {
    "spec.nodeName": "ip-10-0-1-23.ec2.internal",
    "status.podIP": "10.0.1.23",
    "metadata.name": "pixelfleet-agent-7x2kq",  # the agent's own pod, for do-not-disrupt
    "metadata.namespace": "pixelfleet",
}


def helm_workloads(docs: list[dict[str, Any]]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each pixelfleet container's argv (after ``pixelfleet``) and environment, as the kubelet
    would build it from the rendered ConfigMaps, Secret and field references."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in by_kind(docs, "Secret")}
    workloads: dict[str, tuple[list[str], dict[str, str]]] = {}
    for doc in [*by_kind(docs, "Deployment"), *by_kind(docs, "DaemonSet")]:
        for container in doc["spec"]["template"]["spec"]["containers"]:
            if "args" in container:
                argv = list(container["args"])
            elif (
                container.get("command", [])[:2] == ["/bin/sh", "-c"] and "exec pixelfleet " in container["command"][2]
            ):
                argv = container["command"][2].split("exec pixelfleet ", 1)[1].split()
            else:
                continue  # not a pixelfleet process (the warm nodes' pause pods)
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                env.update(config_maps[source["configMapRef"]["name"]])
            for item in container.get("env", []):
                if "value" in item:
                    env[item["name"]] = item["value"]
                elif "secretKeyRef" in item["valueFrom"]:
                    ref = item["valueFrom"]["secretKeyRef"]
                    values = secrets.get(ref["name"])
                    if values is None:  # secrets.existingSecret: made outside the chart
                        env[item["name"]] = SECRET_VALUES[item["name"]]
                    elif ref["key"] in values:
                        env[item["name"]] = values[ref["key"]]
                    else:
                        assert ref.get("optional"), f"{item['name']}: key {ref['key']} missing from the Secret"
                else:
                    env[item["name"]] = FIELD_VALUES[item["valueFrom"]["fieldRef"]["fieldPath"]]
            if "export PIXELFLEET_AGENT_TOKEN=" in " ".join(container.get("command", [])):
                env["PIXELFLEET_AGENT_TOKEN"] = SECRET_VALUES["PIXELFLEET_AGENT_TOKEN"]  # the per-host token file
            workloads[argv[0]] = (argv, env)
    return workloads


TURN_ON = [
    *("--set", "turn.urls={turn:turn.example.com:3478?transport=udp,turn:turn.example.com:3478?transport=tcp}"),
    *("--set", "secrets.values.turnSecrets=" + "t" * 40),
]


@pytest.mark.parametrize(
    ("values", "turn_provider"),
    [
        ([], "none"),
        (TURN_ON, "rest-secret"),
        (
            [*TURN_ON, "--set", "agent.perHostTokens.secretName=pf-agent-tokens"]
            + ["--set", "secrets.values.agentKeySecret=" + "k" * 40, "--set", "secrets.values.stateUrl=redis://r:6379"],
            "rest-secret",
        ),
        ([*TURN_ON, "--set", "secrets.existingSecret=pf-secrets"], "rest-secret"),
    ],
    ids=["defaults", "turn", "per-host-tokens", "existing-secret"],
)
def test_every_helm_workload_environment_loads(
    helm: str,  # noqa: F811 - the fixture
    values: list[str],
    turn_provider: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workloads = helm_workloads(render(helm, *values))
    assert set(workloads) == {"signaling", "matchmaker", "agent"}
    for argv, env in workloads.values():
        built = check_loads(argv, env, monkeypatch, capsys)
        if argv[0] == "signaling":
            assert built["settings"].turn.provider == turn_provider
            assert (built["turn"] is None) == (turn_provider == "none")


def test_helm_refuses_a_turn_provider_without_urls_or_secret(helm: str) -> None:  # noqa: F811 - the fixture
    from tests.unit.test_deploy_helm import CHART, run_helm

    result = run_helm(
        helm, "template", "pf", str(CHART), *SECRETS, "--set", "config.signaling.PIXELFLEET_TURN__PROVIDER=rest-secret"
    )
    assert result.returncode != 0 and "needs the relays' URLs: set turn.urls" in result.stderr
    result = run_helm(helm, "template", "pf", str(CHART), *SECRETS, "--set", "turn.urls={turn:t.example.com:3478}")
    assert result.returncode != 0 and "secrets.values.turnSecrets" in result.stderr

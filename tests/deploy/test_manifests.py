"""deploy/: the Kubernetes manifests validate offline and say what the daemon needs.

Native kinds are checked against the Kubernetes OpenAPI schemas that the
`kubernetes-validate` package ships (strict: an unknown or misspelt field fails),
for the oldest and newest Kubernetes releases still maintained upstream. The
InferenceService is a KServe CRD, which those schemas do not hold: it is checked
by `check_inference_service` below against the fields KServe's v1beta1 API
defines (pkg/apis/serving/v1beta1: PredictorSpec, ComponentExtensionSpec, the
custom predictor's PROTOCOL variable), its pod part against the Pod schema.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edgeinfer.server.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# Upstream maintains the three newest minors; these are the oldest and newest of them that the package has schemas for.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
HEALTH_SERVICE = "edgeinfer.v1.EdgeInference"
# Being added to edgeserver with TLS and tokens (issue 20's security half); until that lands the
# parser here does not know them, and the args test accepts exactly these as the only unknown flags.
TLS_FLAGS = {"--tls-cert", "--tls-key", "--tls-client-ca", "--token-file"}

Doc = dict[str, Any]


def _manifests() -> dict[str, list[Doc]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(DEPLOY.glob("*.yaml"))}


def _resources() -> list[Doc]:
    return [doc for name, docs in _manifests().items() if name != "kustomization.yaml" for doc in docs]


def _pod_specs() -> list[tuple[str, Doc]]:
    """(kind, pod spec) of every workload: a Deployment's template, an InferenceService's predictor."""
    specs = []
    for doc in _resources():
        if doc["kind"] == "Deployment":
            specs.append(("Deployment", doc["spec"]["template"]["spec"]))
        elif doc["kind"] == "InferenceService":
            specs.append(("InferenceService", doc["spec"]["predictor"]))
    return specs


def _daemon(spec: Doc) -> Doc:
    containers = spec["containers"]
    return next(c for c in containers if c["name"] in ("edgeinfer", "kserve-container"))


def _flags(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args)


# -- KServe's InferenceService, checked by hand -------------------------------------------------

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # KServe's IsvcNameFmt
DEPLOYMENT_MODES = {"Serverless", "RawDeployment", "Knative", "Standard", "ModelMesh"}  # 0.16 renamed the first two
FRAMEWORKS = {"sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface", "pmml", "lightgbm"}
FRAMEWORKS |= {"paddle", "model"}
PREDICTOR_FIELDS = {"storageUris", "workerSpec"}
COMPONENT_EXTENSION_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}
INT_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "containerConcurrency", "timeout", "canaryTrafficPercent"}


class InvalidInferenceService(ValueError):
    pass


def check_inference_service(doc: Doc, version: str) -> None:
    """Raise when KServe would refuse ``doc``: InvalidInferenceService, or ValidationError for the pod part."""

    def need(ok: bool, why: str) -> None:
        if not ok:
            raise InvalidInferenceService(why)

    need(doc.get("apiVersion") == "serving.kserve.io/v1beta1", "apiVersion must be serving.kserve.io/v1beta1")
    need(doc.get("kind") == "InferenceService", "kind must be InferenceService")
    need(set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"unknown top-level fields {set(doc)}")
    metadata = doc.get("metadata", {})
    need(bool(ISVC_NAME.match(metadata.get("name", ""))), "metadata.name must match " + ISVC_NAME.pattern)
    mode = metadata.get("annotations", {}).get("serving.kserve.io/deploymentMode")
    need(mode is None or mode in DEPLOYMENT_MODES, f"deploymentMode {mode!r} is not one of {DEPLOYMENT_MODES}")
    spec = doc.get("spec", {})
    need(set(spec) <= {"predictor", "transformer", "explainer"}, f"unknown spec fields {set(spec) - {'predictor'}}")
    predictor = spec.get("predictor")
    need(isinstance(predictor, dict), "spec.predictor is required")
    kserve_fields = FRAMEWORKS | PREDICTOR_FIELDS | COMPONENT_EXTENSION_FIELDS
    for field in INT_FIELDS & set(predictor):
        need(isinstance(predictor[field], int) and predictor[field] >= 0, f"{field} must be a non-negative integer")
    if "maxReplicas" in predictor and predictor["maxReplicas"] != 0:
        need(predictor.get("minReplicas", 1) <= predictor["maxReplicas"], "minReplicas cannot exceed maxReplicas")
    need(predictor.get("scaleMetric", "cpu") in {"cpu", "memory", "concurrency", "rps"}, "scaleMetric")
    # Exactly one implementation: a framework spec or a custom container named kserve-container.
    containers = predictor.get("containers", [])
    implementations = len(FRAMEWORKS & set(predictor)) + any(c.get("name") == "kserve-container" for c in containers)
    need(implementations == 1, "exactly one predictor implementation (a framework, or a kserve-container)")
    if containers:
        env = {e["name"]: e.get("value") for e in containers[0].get("env", [])}
        need(env.get("PROTOCOL", "v1") in {"v1", "v2"}, "a custom predictor's PROTOCOL must be v1 or v2")
    # The rest of the predictor is a PodSpec inlined: the Kubernetes schema judges it, strictly.
    pod_spec = {k: v for k, v in predictor.items() if k not in kserve_fields}
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": metadata["name"]}, "spec": pod_spec},
        version,
        strict=True,
    )


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates(version: str) -> None:
    kinds = []
    for doc in _resources():
        if doc["kind"] == "InferenceService":
            check_inference_service(doc, version)
        else:
            kubernetes_validate.validate(doc, version, strict=True)
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "InferenceService", "Service"]


@pytest.mark.parametrize(
    ("path", "value", "says"),
    [
        (("spec", "predictor", "minReplicass"), 1, "minReplicass"),  # a typo in a KServe field
        (("spec", "predictor", "containers", 0, "env", 0, "value"), "grpc-v2", "PROTOCOL"),
        (("spec", "predictor", "containers", 0, "name"), "server", "exactly one predictor"),
        (("spec", "predictor", "containers", 0, "readinessProbe", "grpc", "portt"), 1, "portt"),  # pod part
        (("spec", "predictor", "maxReplicas"), 0.5, "maxReplicas"),
        (("metadata", "name"), "EdgeInfer", "metadata.name"),
    ],
)
def test_inference_service_check_catches_mistakes(path: tuple[object, ...], value: object, says: str) -> None:
    """The hand-written check is not a rubber stamp: each of these KServe (or the API server) would refuse."""
    (doc,) = _manifests()["inferenceservice.yaml"]
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    with pytest.raises((InvalidInferenceService, kubernetes_validate.ValidationError)) as info:
        check_inference_service(broken, KUBERNETES_VERSIONS[-1])
    assert says in str(info.value)


@pytest.mark.parametrize(("kind", "spec"), _pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_probes_are_grpc_on_the_health_port(kind: str, spec: Doc) -> None:
    container = _daemon(spec)
    flags = _flags(container["args"])
    health_port, serving_port = int(flags["--health-port"]), int(flags["--port"])
    assert health_port != serving_port  # the serving port speaks TLS, which the kubelet's probes cannot
    assert {p["containerPort"] for p in container["ports"]} >= {serving_port}
    probes = {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for probe in probes.values():
        handlers = set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"}
        assert handlers == {"grpc"}
        assert probe["grpc"]["port"] == health_port
    # Ready means the inference service itself is SERVING (models loaded, not draining).
    assert probes["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE
    assert probes["startupProbe"]["grpc"]["service"] == HEALTH_SERVICE
    # 6-18 s to SERVING measured: the startup probe's budget leaves several times that.
    budget = probes["startupProbe"]["periodSeconds"] * probes["startupProbe"]["failureThreshold"]
    assert budget >= 60


@pytest.mark.parametrize(("kind", "spec"), _pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_secrets_are_mounted_read_only(kind: str, spec: Doc) -> None:
    secret_volumes = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    assert {s["secretName"] for s in secret_volumes.values()} == {"edgeinfer-tls", "edgeinfer-token"}
    for secret in secret_volumes.values():
        assert secret["defaultMode"] & 0o007 == 0  # no access for others; the pod's fsGroup reads
    container = _daemon(spec)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert set(secret_volumes) <= set(mounts)
    assert all(mounts[name].get("readOnly") is True for name in secret_volumes)
    assert "fsGroup" in spec["securityContext"] and spec["securityContext"]["runAsNonRoot"] is True
    # Every file the daemon is told to read lies in one of those read-only secret mounts.
    secret_dirs = [mounts[name]["mountPath"] for name in secret_volumes]
    for flag, value in _flags(container["args"]).items():
        if flag in TLS_FLAGS:
            assert any(value.startswith(d + "/") for d in secret_dirs), f"{flag}={value}"


@pytest.mark.parametrize(("kind", "spec"), _pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_args_name_the_flags(kind: str, spec: Doc) -> None:
    args = _daemon(spec)["args"]
    flags = _flags(args)
    required = {"--tls-cert", "--tls-key", "--token-file", "--host", "--port", "--health-port", "--model"}
    assert required <= set(flags)
    if kind == "Deployment":
        assert "--tls-client-ca" in flags  # the robot fleet: mutual TLS
    assert flags["--host"] in ("[::]", "0.0.0.0")  # beyond loopback, which is what TLS allows
    # Every other flag is edgeserver's own, with a value it accepts.
    known, unknown = build_parser().parse_known_args(args)
    assert {a.split("=", 1)[0] for a in unknown} <= TLS_FLAGS
    assert known.health_port == int(flags["--health-port"])
    assert known.threads == int(_daemon(spec)["resources"]["requests"]["cpu"])  # torch's threads = cores reserved


def _bytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]i?)?", quantity).groups()  # type: ignore[union-attr]
    scale = {None: 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(number) * scale[unit]


@pytest.mark.parametrize(("kind", "spec"), _pod_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_resources_cover_the_measured_footprint(kind: str, spec: Doc) -> None:
    resources = _daemon(spec)["resources"]
    request, limit = _bytes(resources["requests"]["memory"]), _bytes(resources["limits"]["memory"])
    assert request >= 0.8e9 * 1.2  # README footprint: RSS 0.8 GB with int8 SqueezeNet, plus headroom
    assert limit >= request
    assert "cpu" not in resources["limits"]  # throttling would show as latency spikes


def test_headless_service_selects_the_daemon() -> None:
    (service,) = [d for d in _resources() if d["kind"] == "Service"]
    (deployment,) = [d for d in _resources() if d["kind"] == "Deployment"]
    assert service["spec"]["clusterIP"] == "None"
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == int(_flags(_daemon(pod["spec"])["args"])["--port"])


def test_inference_service_is_a_v2_grpc_custom_predictor() -> None:
    (isvc,) = [d for d in _resources() if d["kind"] == "InferenceService"]
    container = _daemon(isvc["spec"]["predictor"])
    assert container["name"] == "kserve-container"
    assert {"name": "PROTOCOL", "value": "v2"} in container["env"]
    (port,) = container["ports"]  # KServe routes one port; h2c marks it as gRPC
    assert port["name"] == "h2c" and port["containerPort"] == int(_flags(container["args"])["--port"])


def test_kustomization_lists_every_file() -> None:
    (kustomization,) = _manifests()["kustomization.yaml"]
    listed = [r.split("#")[0].strip() for r in kustomization["resources"]]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert not list(DEPLOY.glob("*.yml"))  # one spelling, all listed
    generated = {g["name"]: g for g in kustomization["secretGenerator"]}
    referenced = {v["secret"]["secretName"] for _, spec in _pod_specs() for v in spec["volumes"] if "secret" in v}
    assert set(generated) == referenced
    for generator in generated.values():  # the files come from the git-ignored deploy/secrets/
        assert all(f.startswith("secrets/") for f in generator["files"])
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True  # renewals update in place
    images = {i["name"] for i in kustomization["images"]}
    assert {_daemon(spec)["image"].split(":")[0] for _, spec in _pod_specs()} == images

"""helm/llmserve rendered with the real Helm library and checked the way a cluster would.

Every manifest of every value set goes through kubernetes-validate (strict, against a current
Kubernetes); kinds it has no schema for (ServiceMonitor, KServe) are checked structurally, with the
pod KServe would create validated as a Pod. Then what users rely on: GPUs, the model volume,
probes, ports, drain, arguments, and clear errors for bad values.
"""

import base64
import copy
from typing import Any

import pytest
import yaml
from deploy_support import CHART_DIR, FULLNAME, NAMESPACE, ROOT, Rendered, args_map

KUBERNETES_VERSION = "1.33"
CRD_KINDS = {"ServiceMonitor", "ServingRuntime", "InferenceService"}
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "annotations", "labels", "model"}
EXISTING_CLAIM = {"pvc": {"existingClaim": "llama-models", "create": False}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "existing-pvc": {"model": {**EXISTING_CLAIM, "subPath": "llama"}},
    "created-pvc": {"model": {"pvc": {"create": True, "size": "40Gi", "storageClass": "fast-ssd"}}},
    "4-gpus": {"gpu": {"count": 4}},
    "cpu": {"gpu": {"count": 0}, "tolerations": [], "env": {"VLLM_CPU_KVCACHE_SPACE": "4"}},
    "tls": {
        "tls": {"enabled": True, "secretName": "llmserve-tls", "clientCA": True},
        "probes": {"type": "http"},
        "tests": {"enabled": False},
    },
    "hpa": {"autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6}},
    "kserve": {"kserve": {"enabled": True}, "gpu": {"count": 4}},
    "kserve-serverless-grpc": {
        "kserve": {"enabled": True, "deploymentMode": "Serverless", "protocol": "grpc"},
    },
    "headless": {"service": {"headless": {"enabled": True}}},
    "api-key": {"apiKey": {"enabled": True, "value": "s3cret"}},
    "conversion": {"conversion": {"enabled": True}, "model": EXISTING_CLAIM},
    "observability": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "podDisruptionBudget": {"enabled": True},
    },
    "http": {"probes": {"type": "http"}, "tests": {"protocol": "http"}},
    "service-account": {"serviceAccount": {"create": True, "annotations": {"team": "ml"}}},
    "engine-options": {
        "engine": {
            "dtype": "bfloat16",
            "maxModelLen": 4096,
            "gpuMemoryUtilization": 0.85,
            "extraArgs": ["--enforce-eager", "--max-num-seqs", "64"],
        },
        "server": {"maxQueuedRequests": 256, "maxConcurrentRpcs": 512},
        "extraEnv": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
    },
}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = copy.deepcopy(value)
    return result


def kserve_pod(rendered: Rendered) -> dict[str, Any]:
    """The predictor pod KServe builds from the ServingRuntime and the InferenceService."""
    runtime = rendered.one("ServingRuntime")["spec"]
    predictor = rendered.one("InferenceService")["spec"]["predictor"]
    container = {**runtime["containers"][0], "resources": predictor["model"]["resources"]}
    container["volumeMounts"] = [
        *container["volumeMounts"],
        {"name": "kserve-pvc-source", "mountPath": "/mnt/models", "readOnly": True},
    ]
    claim = predictor["model"]["storageUri"].removeprefix("pvc://").split("/")[0]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {
            # The rest of a predictor is inline PodSpec.
            **{k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS},
            "containers": [container],
            "volumes": [
                *runtime["volumes"],
                {
                    "name": "kserve-pvc-source",
                    "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
                },
            ],
        },
    }


def check_crd(rendered: Rendered, manifest: dict[str, Any], kubernetes_validate) -> None:
    kind = manifest["kind"]
    if kind == "ServiceMonitor":
        assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        service = rendered.one("Service", FULLNAME)
        assert (
            manifest["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        service_ports = {port["name"] for port in service["spec"]["ports"]}
        assert {e["port"] for e in manifest["spec"]["endpoints"]} <= service_ports
    elif kind == "ServingRuntime":
        assert manifest["apiVersion"] == "serving.kserve.io/v1alpha1"
        assert manifest["spec"]["containers"][0]["name"] == "kserve-container"
        assert manifest["spec"]["supportedModelFormats"][0]["name"] == "llmserve"
        kubernetes_validate.validate(kserve_pod(rendered), KUBERNETES_VERSION, strict=True)
    elif kind == "InferenceService":
        assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
        model = manifest["spec"]["predictor"]["model"]
        assert model["runtime"] == rendered.one("ServingRuntime")["metadata"]["name"]
        assert model["modelFormat"]["name"] == "llmserve"
    else:
        raise AssertionError(f"no check for {kind}")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_is_valid_for_kubernetes(render, values):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    rendered = render(values)
    assert rendered.manifests
    for manifest in rendered.manifests:
        if manifest["kind"] in CRD_KINDS:
            check_crd(rendered, manifest, kubernetes_validate)
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_finds_nothing(helm, values):
    report = helm.lint(
        CHART_DIR, values, namespace=NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}.0"
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_runs_one_gpu_with_tensor_parallel_one(render):
    container = render({}).server_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert args_map(container["args"])["--tensor-parallel-size"] == "1"
    assert container["image"] == "ghcr.io/llmserve/llmserve:0.1.0-cuda"


def test_gpu_count_sets_the_gpu_limit_and_tensor_parallel_size(render):
    container = render({"gpu": {"count": 4}}).server_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert args_map(container["args"])["--tensor-parallel-size"] == "4"


def test_zero_gpus_runs_the_cpu_image_without_gpu_resources(render):
    container = render(VALUE_SETS["cpu"]).server_container()
    assert container["image"].endswith(":0.1.0-cpu")
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert args_map(container["args"])["--tensor-parallel-size"] == "1"
    assert {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "4"} in container["env"]


def test_created_claim_is_mounted_read_only_and_kept_on_uninstall(render):
    rendered = render(VALUE_SETS["created-pvc"])
    claim = rendered.one("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{FULLNAME}-model"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "40Gi"

    volumes = {v["name"]: v for v in rendered.server_pod()["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {
        "claimName": f"{FULLNAME}-model",
        "readOnly": True,
    }
    container = rendered.server_container()
    mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert mount == {"name": "model", "mountPath": "/models", "readOnly": True}
    assert args_map(container["args"])["--model"] == "/models/llama-2-7b-hf"


def test_existing_claim_is_used_and_not_created(render):
    rendered = render(VALUE_SETS["existing-pvc"])
    assert "PersistentVolumeClaim" not in rendered.kinds()
    volumes = {v["name"]: v for v in rendered.server_pod()["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"]["claimName"] == "llama-models"
    mount = next(m for m in rendered.server_container()["volumeMounts"] if m["name"] == "model")
    assert mount["subPath"] == "llama"
    assert mount["readOnly"] is True


def test_model_path_builds_the_model_argument(render):
    container = render(
        {"model": {"path": "7B_hf", "mountPath": "/mnt/llama", "servedModelName": "llama"}}
    ).server_container()
    flags = args_map(container["args"])
    assert flags["--model"] == "/mnt/llama/7B_hf"
    assert flags["--served-model-name"] == "llama"


def test_probes_use_grpc_health_on_the_grpc_port(render):
    container = render({}).server_container()
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert grpc_port == 8001
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port, "service": ""}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60


def test_http_probes_use_the_v2_health_paths(render):
    container = render({"probes": {"type": "http"}}).server_container()
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/v2/health/ready",
        "port": 8000,
        "scheme": "HTTP",
    }
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/v2/health/live",
        "port": 8000,
        "scheme": "HTTP",
    }


def test_triton_ports_on_container_service_and_command_line(render):
    rendered = render({})
    container = rendered.server_container()
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    flags = args_map(container["args"])
    assert (flags["--http-port"], flags["--port"], flags["--metrics-port"]) == (
        "8000",
        "8001",
        "8002",
    )
    assert flags["--host"] == "0.0.0.0"
    service = rendered.one("Service", FULLNAME)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["port"] for name, p in ports.items()} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert (
        service["spec"]["selector"].items()
        <= rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_custom_ports_reach_every_place_that_names_them(render):
    rendered = render({"server": {"ports": {"http": 9000, "grpc": 9001, "metrics": 9002}}})
    container = rendered.server_container()
    flags = args_map(container["args"])
    assert (flags["--http-port"], flags["--port"], flags["--metrics-port"]) == (
        "9000",
        "9001",
        "9002",
    )
    assert container["startupProbe"]["grpc"]["port"] == 9001
    assert (
        rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/port"
        ]
        == "9002"
    )
    assert {p["port"] for p in rendered.one("Service")["spec"]["ports"]} == {9000, 9001, 9002}
    assert "localhost:9001" in rendered.notes


def test_termination_grace_outlasts_the_drain(render):
    pod = render({}).server_pod()
    flags = args_map(pod["containers"][0]["args"])
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > 5 + float(flags["--shutdown-grace-seconds"])

    pod = render({"server": {"shutdownGraceSeconds": 120}}).server_pod()
    assert args_map(pod["containers"][0]["args"])["--shutdown-grace-seconds"] == "120"
    assert pod["terminationGracePeriodSeconds"] == 5 + 120 + 30


def test_engine_and_server_options_become_flags(render):
    args = render(VALUE_SETS["engine-options"]).server_container()["args"]
    flags = args_map(args)
    assert flags["--dtype"] == "bfloat16"
    assert flags["--max-model-len"] == "4096"
    assert flags["--gpu-memory-utilization"] == "0.85"
    assert flags["--max-queued-requests"] == "256"
    assert flags["--max-concurrent-rpcs"] == "512"
    assert args[-3:] == ["--enforce-eager", "--max-num-seqs", "64"]


def test_unset_options_leave_the_server_defaults(render):
    flags = args_map(render({}).server_container()["args"])
    for flag in (
        "--dtype",
        "--max-model-len",
        "--gpu-memory-utilization",
        "--max-queued-requests",
        "--max-concurrent-rpcs",
        "--tls-cert",
        "--api-key-file",
    ):
        assert flag not in flags


def test_created_service_account_runs_the_pods(render):
    rendered = render(VALUE_SETS["service-account"])
    account = rendered.one("ServiceAccount")
    assert rendered.server_pod()["serviceAccountName"] == account["metadata"]["name"] == FULLNAME


def test_only_server_pods_match_the_server_selectors(render):
    """The conversion Job and the test pod must never receive the Service's traffic."""
    rendered = render(merged(VALUE_SETS["conversion"], VALUE_SETS["observability"]))
    selectors = [
        rendered.one("Service")["spec"]["selector"],
        rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        rendered.one("Deployment")["spec"]["selector"]["matchLabels"],
    ]
    other_pods = [
        rendered.one("Job")["spec"]["template"]["metadata"]["labels"],
        rendered.one("Pod")["metadata"]["labels"],
    ]
    for selector in selectors:
        assert (
            selector.items()
            <= rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
        )
        for labels in other_pods:
            assert not selector.items() <= labels.items()


def test_pod_is_non_root_with_memory_backed_shm(render):
    pod = render({}).server_pod()
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/dev/shm"] == "shm"
    # Writable places on a read-only root: HOME (vLLM, Triton and torch caches) and /tmp.
    assert {"/home/llmserve", "/tmp"} <= mounts.keys()
    assert {"name": "HOME", "value": "/home/llmserve"} in container["env"]


def test_tls_mounts_the_secret_and_probes_over_https(render):
    rendered = render(VALUE_SETS["tls"])
    container = rendered.server_container()
    flags = args_map(container["args"])
    assert flags["--tls-cert"] == "/etc/llmserve/tls/tls.crt"
    assert flags["--tls-key"] == "/etc/llmserve/tls/tls.key"
    assert flags["--tls-client-ca"] == "/etc/llmserve/tls/ca.crt"
    volumes = {v["name"]: v for v in rendered.server_pod()["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "llmserve-tls"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/llmserve/tls", "readOnly": True}
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "-insecure" in rendered.notes


def test_api_key_secret_is_mounted_and_used_by_the_helm_test(render):
    rendered = render(VALUE_SETS["api-key"])
    secret = rendered.one("Secret")
    assert base64.b64decode(secret["data"]["api-key"]) == b"s3cret"
    container = rendered.server_container()
    key_file = args_map(container["args"])["--api-key-file"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-key")
    assert key_file == f"{mount['mountPath']}/api-key"
    volumes = {v["name"]: v for v in rendered.server_pod()["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == secret["metadata"]["name"]
    test_script = rendered.one("Pod")["spec"]["containers"][0]["args"][0]
    assert "authorization: Bearer $(cat /etc/llmserve/api-key/key)" in test_script
    assert "authorization: Bearer $API_KEY" in rendered.notes


def test_existing_api_key_secret_is_not_recreated(render):
    rendered = render(
        {"apiKey": {"enabled": True, "existingSecret": "team-keys", "secretKey": "llm"}}
    )
    assert "Secret" not in rendered.kinds()
    volumes = {v["name"]: v for v in rendered.server_pod()["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "team-keys"
    assert (
        args_map(rendered.server_container()["args"])["--api-key-file"]
        == "/etc/llmserve/api-key/llm"
    )


def test_hpa_owns_the_replica_count(render):
    rendered = render(VALUE_SETS["hpa"])
    assert "replicas" not in rendered.one("Deployment")["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"


def test_headless_service_publishes_pod_addresses_for_grpc(render):
    rendered = render(VALUE_SETS["headless"])
    headless = rendered.one("Service", f"{FULLNAME}-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert {"name": "grpc", "port": 8001, "targetPort": "grpc", "appProtocol": "grpc"} in headless[
        "spec"
    ]["ports"]
    assert f"dns:///{FULLNAME}-headless.{NAMESPACE}.svc:8001" in rendered.notes


def test_prometheus_annotations_and_service_monitor(render):
    rendered = render(VALUE_SETS["observability"])
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8002",
        "prometheus.io/path": "/metrics",
    }
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert rendered.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_kserve_replaces_the_deployment_with_a_pvc_storage_uri(render):
    rendered = render(VALUE_SETS["kserve"])
    assert not {"Deployment", "Service", "HorizontalPodAutoscaler"} & rendered.kinds()
    isvc = rendered.one("InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"pvc://{FULLNAME}-model/llama-2-7b-hf"
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 4
    container = rendered.one("ServingRuntime")["spec"]["containers"][0]
    flags = args_map(container["args"])
    assert flags["--model"] == "/mnt/models"
    assert flags["--tensor-parallel-size"] == "4"
    assert flags["--http-port"] == "8080"
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert container["startupProbe"]["grpc"]["port"] == 8001
    test_script = rendered.one("Pod")["spec"]["containers"][0]["args"][0]
    assert f"http://{FULLNAME}-predictor.{NAMESPACE}.svc:80/generate" in test_script


def test_kserve_storage_uri_includes_the_sub_path(render):
    rendered = render(
        {
            "kserve": {"enabled": True},
            "model": {**EXISTING_CLAIM, "subPath": "team/a", "path": "7B_hf"},
        }
    )
    model = rendered.one("InferenceService")["spec"]["predictor"]["model"]
    assert model["storageUri"] == "pvc://llama-models/team/a/7B_hf"


def test_kserve_serverless_grpc_routes_h2c_without_startup_probe(render):
    rendered = render(VALUE_SETS["kserve-serverless-grpc"])
    container = rendered.one("ServingRuntime")["spec"]["containers"][0]
    assert container["ports"] == [{"name": "h2c", "containerPort": 8001, "protocol": "TCP"}]
    assert "startupProbe" not in container
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    predictor = rendered.one("InferenceService")["spec"]["predictor"]
    assert predictor["annotations"]["serving.knative.dev/progress-deadline"] == "2400s"
    assert (
        "llmserve.v1.LlmService/Generate" in rendered.one("Pod")["spec"]["containers"][0]["args"][0]
    )


def test_conversion_job_runs_before_the_server_into_the_model_path(render):
    rendered = render(VALUE_SETS["conversion"])
    job = rendered.one("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "llama-models"}
    container = pod["containers"][0]
    model_mount = next(m for m in container["volumeMounts"] if m["name"] == "model")
    assert not model_mount.get("readOnly", False)
    script = container["args"][0]
    assert 'output="/models/llama-2-7b-hf"' in script
    assert 'llmserve convert meta \\\n    --input-dir "/models/llama-2-7b"' in script
    assert '--model-size "7B"' in script
    assert '--output-dir "$output"' in script
    assert script.rstrip().endswith('llmserve model check "$output"')
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert args_map(rendered.server_container()["args"])["--model"] == "/models/llama-2-7b-hf"


def test_conversion_is_off_by_default(render):
    assert "Job" not in render({}).kinds()


def test_helm_test_checks_health_then_generates_over_grpc(render):
    pod = render({}).one("Pod", f"{FULLNAME}-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("fullstorydev/grpcurl:")
    script = container["args"][0]
    address = f"{FULLNAME}.{NAMESPACE}.svc:8001"
    assert f"grpcurl -plaintext {address} grpc.health.v1.Health/Check" in script
    assert """-d '{"max_tokens":16,"text":"My name is"}'""" in script
    assert f"{address} llmserve.v1.LlmService/Generate" in script


def test_helm_test_can_use_http(render):
    container = render(VALUE_SETS["http"]).one("Pod")["spec"]["containers"][0]
    assert container["image"].startswith("curlimages/curl:")
    script = container["args"][0]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:8000/v2/health/ready" in script
    assert """-d '{"max_tokens":16,"prompt":"My name is"}'""" in script


def test_notes_show_the_grpcurl_check(render):
    notes = render({}).notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/{FULLNAME} 8000 8001" in notes
    assert "grpcurl -plaintext localhost:8001 grpc.health.v1.Health/Check" in notes
    request = """-d '{"text":"My name is","max_tokens":16}'"""
    assert f"grpcurl -plaintext {request} localhost:8001 llmserve.v1.LlmService/Generate" in notes


INVALID_VALUES = {
    "negative GPU count": ({"gpu": {"count": -1}}, "/gpu/count"),
    "fractional GPU count": ({"gpu": {"count": 1.5}}, "/gpu/count"),
    "missing PVC name": ({"model": {"pvc": {"create": False}}}, "model.pvc.existingClaim is empty"),
    "port out of range": ({"server": {"ports": {"grpc": 70000}}}, "/server/ports/grpc"),
    "port not a number": ({"server": {"ports": {"http": "http"}}}, "/server/ports/http"),
    "same port twice": ({"server": {"ports": {"metrics": 8001}}}, "ports must differ"),
    "misspelt value": ({"gpus": 2}, "additional properties 'gpus' not allowed"),
    "absolute model path": ({"model": {"path": "/models/x"}}, "/model/path"),
    "unknown probe type": ({"probes": {"type": "tcp"}}, "/probes/type"),
    "startup probe that never fails": (
        {"probes": {"startup": {"failureThreshold": 0}}},
        "/probes/startup/failureThreshold",
    ),
    "negative drain": ({"server": {"shutdownGraceSeconds": -5}}, "/server/shutdownGraceSeconds"),
    "grace shorter than the drain": (
        {"server": {"shutdownGraceSeconds": 60, "terminationGracePeriodSeconds": 60}},
        "must exceed server.preStopSleepSeconds + server.shutdownGraceSeconds",
    ),
    "grpc probes under TLS": (
        {"tls": {"enabled": True, "secretName": "t"}},
        "Kubernetes gRPC probes cannot use TLS",
    ),
    "TLS without a secret": (
        {"tls": {"enabled": True}, "probes": {"type": "http"}},
        "tls.enabled needs tls.secretName",
    ),
    "helm test under mutual TLS": (
        {"tls": {"enabled": True, "secretName": "t", "clientCA": True}, "probes": {"type": "http"}},
        "the helm test pod has no client certificate",
    ),
    "API key without a key": ({"apiKey": {"enabled": True}}, "apiKey.enabled needs"),
    "GPUs requested in resources": (
        {"resources": {"requests": {"nvidia.com/gpu": 2}}},
        "set the GPU count with gpu.count",
    ),
    "GPUs in resources": (
        {"resources": {"limits": {"nvidia.com/gpu": 2}}},
        "set the GPU count with gpu.count",
    ),
    "conversion without an existing claim": (
        {"conversion": {"enabled": True}},
        "conversion.enabled needs model.pvc.existingClaim",
    ),
    "bad memory quantity": (
        {"resources": {"requests": {"memory": "lots"}}},
        "/resources/requests/memory",
    ),
    "unknown KServe protocol": (
        {"kserve": {"enabled": True, "protocol": "rest"}},
        "/kserve/protocol",
    ),
    "HPA minimum above maximum": (
        {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        "exceeds autoscaling.maxReplicas",
    ),
}


@pytest.mark.parametrize(("values", "message"), INVALID_VALUES.values(), ids=INVALID_VALUES.keys())
def test_invalid_values_are_rejected_with_a_clear_message(helm, render, values, message):
    with pytest.raises(helm.HelmError) as error:
        render(values)
    assert message in str(error.value)


def test_schema_describes_every_value(chart):
    """Every value in values.yaml has a described schema entry, so bad values fail at install."""
    schema = chart.schema
    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        return {**schema["$defs"][ref.rsplit("/", 1)[1]], **node} if ref else node

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        assert node.get("description"), f"{path} has no description in values.schema.json"
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, child in value.items():
                assert key in node["properties"], f"{path}/{key} is not in values.schema.json"
                walk(child, node["properties"][key], f"{path}/{key}")

    for key, value in defaults.items():
        assert key in schema["properties"], f"/{key} is not in values.schema.json"
        walk(value, schema["properties"][key], f"/{key}")


def test_chart_app_version_is_the_package_version():
    """The default image tag is <appVersion>-cuda: the version the Dockerfiles build."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    chart_yaml = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart_yaml["appVersion"] == project["version"]

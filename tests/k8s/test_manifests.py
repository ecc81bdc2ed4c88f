"""The k8s/ overlays: they render, validate against the KubeRay CRDs and Kubernetes schemas, run
commands the real CLI accepts with configs that validate, and fit the cluster they describe."""

from __future__ import annotations

import configparser
import copy
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from mmclip_dist.cli.main import build_parser
from mmclip_dist.config import Config, load_config

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.37.0"
# The image's WORKDIR (Dockerfile) holds the repo; entrypoints name configs by absolute path in it.
IMAGE_WORKDIR = "/app"
SECRET_NAME = "mmclip-s3"
MLFLOW_AUTH_SECRET = "mlflow-auth"


def parse_quantity(value: str | int | float) -> float:
    """Kubernetes quantity -> number (CPU cores, bytes, or a count)."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("16Gi") == 16 * 2**30
    assert parse_quantity("2") == 2.0
    assert parse_quantity(4) == 4.0


# --- rendering ---------------------------------------------------------------------------------


def test_overlay_renders_expected_kinds(k8s: Any, overlay: str, docs: list[dict]) -> None:
    kinds = sorted(d["kind"] for d in docs)
    expected = {
        "debug": [
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "RayJob",
            "Service",
            "Service",
        ],
        "dev": [
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "Deployment",
            "Job",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PersistentVolumeClaim",
            "RayCluster",
            "Service",
            "Service",
        ],
        "prod": [
            "ConfigMap",
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "RayJob",
            "Service",
        ],
    }[overlay]
    assert kinds == expected
    namespace = {"debug": "mmclip-debug", "dev": "mmclip-dev", "prod": "mmclip"}[overlay]
    assert {d["metadata"].get("namespace") for d in docs} == {namespace}


@pytest.mark.parametrize("overlay_name", ["debug", "dev", "prod"])
def test_fallback_renderer_matches_kustomize(k8s: Any, overlay_name: str) -> None:
    if k8s.kustomize_command() is None:
        pytest.skip("no kubectl/kustomize binary here to compare the fallback renderer with")
    path = k8s.K8S / "overlays" / overlay_name
    real = {(d["kind"], d["metadata"]["name"]): d for d in k8s.render_real(path)}
    subset = {(d["kind"], d["metadata"]["name"]): d for d in k8s.render_subset(path)}
    assert subset.keys() == real.keys()
    for key in real:
        assert subset[key] == real[key], key


def test_fallback_renderer_rejects_unsupported_keys(k8s: Any, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(ValueError, match="commonLabels"):
        k8s.render_subset(tmp_path)


def test_json6902_subset(k8s: Any) -> None:
    doc = {"a": {"b": [1, 2], "c": "x"}}
    k8s.apply_json6902(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/a/c", "value": "y"},
            {"op": "remove", "path": "/a/b/0"},
            {"op": "add", "path": "/a/d~1e", "value": {"f": 1}},
        ],
        "t",
    )
    assert doc == {"a": {"b": [2, 3], "c": "y", "d/e": {"f": 1}}}
    with pytest.raises(KeyError):
        k8s.apply_json6902(doc, [{"op": "replace", "path": "/a/missing", "value": 1}], "t")


# --- schemas -----------------------------------------------------------------------------------


def _validate_core(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_core_kinds_validate(docs: list[dict]) -> None:
    for doc in docs:
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        _validate_core(doc)


def test_core_validation_rejects_unknown_field(docs: list[dict]) -> None:
    deployment = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_core(deployment)


def _crd_validators(k8s: Any) -> dict:
    return k8s.crd_validators()


def test_vendored_crds_match_the_shared_copy(k8s: Any) -> None:
    vendored = k8s.vendored_crds()
    assert set(vendored) == {"ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml"}
    if not k8s.SHARED_CRDS.is_dir():
        pytest.skip(f"no shared copy at {k8s.SHARED_CRDS} to compare with (the vendored one is used either way)")
    shared = {p.name: p.read_text() for p in sorted(k8s.SHARED_CRDS.glob("*.yaml"))}
    assert vendored == shared, "tests/k8s/kuberay-crds is out of date: re-gzip shared/kuberay-crds into it"


def test_ray_resources_validate_against_kuberay_crds(k8s: Any, docs: list[dict]) -> None:
    validators = _crd_validators(k8s)
    ray_docs = [d for d in docs if d["apiVersion"].startswith("ray.io/")]
    assert ray_docs
    for doc in ray_docs:
        validator = validators[(doc["apiVersion"], doc["kind"])]
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}:\n" + "\n".join(errors)
        # The CRD leaves metadata and embedded pod templates loosely typed in places; check the pods
        # against the core Pod schema as well.
        for where, template in k8s.all_pod_templates(doc):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x", **template.get("metadata", {})},
                "spec": template["spec"],
            }
            try:
                _validate_core(pod)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{where}: {err}") from err


def test_crd_validation_rejects_unknown_field(k8s: Any) -> None:
    validators = _crd_validators(k8s)
    job = next(d for d in k8s.render("prod") if d["kind"] == "RayJob")
    job["spec"]["shutdownAfterJobFinish"] = True  # typo of shutdownAfterJobFinishes
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    errors = list(validators[("ray.io/v1", "RayJob")].iter_errors(job))
    assert len(errors) == 2


# --- what the entrypoints run ------------------------------------------------------------------


def _job_config(entrypoint: str) -> tuple[Any, Config]:
    """The entrypoint is ``mmclip-dist preflight --on-workers ARGS && mmclip-dist train ARGS`` (same ARGS)."""
    preflight, sep, train = entrypoint.partition("&&")
    assert sep, f"{entrypoint}: preflight must run before training"
    pre_argv, argv = shlex.split(preflight), shlex.split(train)
    assert pre_argv[:3] == ["mmclip-dist", "preflight", "--on-workers"], entrypoint
    assert argv[0] == "mmclip-dist", entrypoint
    pre_args = build_parser().parse_args(pre_argv[1:])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train", entrypoint
    assert (pre_args.config, pre_args.overrides) == (args.config, args.overrides), "preflight checks another config"
    assert args.config.startswith(IMAGE_WORKDIR + "/"), f"{args.config}: not a path inside the image"
    local = REPO / args.config[len(IMAGE_WORKDIR) + 1 :]
    assert local.is_file(), f"{args.config}: no such file in the repository ({local})"
    return args, load_config(local, args.overrides)


def test_entrypoints_parse_and_validate(docs: list[dict]) -> None:
    for job in (d for d in docs if d["kind"] == "RayJob"):
        args, cfg = _job_config(job["spec"]["entrypoint"])
        # A retry (backoffLimit) must continue from the checkpoint, in storage every pod can reach.
        assert cfg.train.resume or args.resume
        assert cfg.train.storage_path.startswith("s3://"), cfg.train.storage_path
        assert cfg.data.train_shards.startswith("s3://"), cfg.data.train_shards
        assert job["spec"]["backoffLimit"] >= 1
        assert job["spec"]["shutdownAfterJobFinishes"] is True


def _pod_resources(template: dict) -> dict[str, float]:
    container = template["spec"]["containers"][0]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    return {k: parse_quantity(v) for k, v in limits.items()} | {"_requests_equal": float(requests == limits)}


def test_training_fits_the_ray_cluster(k8s: Any, docs: list[dict]) -> None:
    """Ray Train waits forever for workers that cannot be placed: check the placement up front."""
    for job in (d for d in docs if d["kind"] == "RayJob"):
        _, cfg = _job_config(job["spec"]["entrypoint"])
        train = cfg.train
        placeable = 0
        for group in k8s.ray_cluster_spec(job)["workerGroupSpecs"]:
            res = _pod_resources(group["template"])
            by_cpu = int(res["cpu"] // train.cpus_per_worker)
            per_pod = min(by_cpu, int(res.get("nvidia.com/gpu", 0))) if train.use_gpu else by_cpu
            placeable += per_pod * group["replicas"]
        assert placeable >= train.num_workers, (
            f"{job['metadata']['name']}: {train.num_workers} workers x {train.cpus_per_worker} CPU"
            f"{' + 1 GPU' if train.use_gpu else ''} but the worker groups place only {placeable}"
        )


def test_ray_pods_follow_cluster_conventions(k8s: Any, docs: list[dict]) -> None:
    for doc in (d for d in docs if d["kind"] in ("RayJob", "RayCluster")):
        spec = k8s.ray_cluster_spec(doc)
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert spec["authOptions"]["mode"] == "token"
        for where, template in k8s.pod_templates(doc):
            pod = template["spec"]
            container = pod["containers"][0]
            volumes = {v["name"]: v for v in pod["volumes"]}
            shm = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory", where
            assert container["envFrom"] == [{"configMapRef": {"name": "mmclip-env"}}], where
            assert pod["securityContext"]["runAsNonRoot"] is True, where
            res = _pod_resources(template)
            assert res["_requests_equal"] == 1.0, f"{where}: requests must equal limits"
            if "nvidia.com/gpu" in res:
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_credentials_only_by_reference(docs: list[dict]) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"], "overlays must not ship Secrets"
    text = yaml.safe_dump_all(docs)
    assert "REPLACE_WITH" not in text
    for doc in docs:
        for containers in _all_containers(doc):
            for env in containers.get("env", []):
                if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    assert "value" not in env
                    assert env["valueFrom"]["secretKeyRef"] == {"name": SECRET_NAME, "key": env["name"]} | (
                        {"optional": True} if env["valueFrom"]["secretKeyRef"].get("optional") else {}
                    )
    for config_map in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not any("SECRET" in key or "PASSWORD" in key for key in config_map["data"])


def _all_containers(node: Any) -> list[dict]:
    found: list[dict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += _all_containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _all_containers(item)
    return found


def test_images_pinned(docs: list[dict]) -> None:
    for doc in docs:
        for container in _all_containers(doc):
            image = container["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or (tag and tag != "latest"), f"{doc['metadata']['name']}: {image} not pinned"


def _service_for(docs: list[dict], url: str) -> dict:
    parsed = urlparse(url)
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert parsed.hostname in services, f"{url}: no Service {parsed.hostname!r} in the overlay"
    service = services[parsed.hostname]
    assert parsed.port in [p["port"] for p in service["spec"]["ports"]], f"{url}: Service has no port {parsed.port}"
    # The Service must select a pod template that exposes the named target port.
    selector = service["spec"]["selector"]
    for workload in (d for d in docs if d["kind"] == "Deployment"):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if selector.items() <= labels.items():
            port_names = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
            return workload
    raise AssertionError(f"Service {parsed.hostname} selects no Deployment")


def test_urls_in_configmaps_reach_services(docs: list[dict]) -> None:
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mmclip-env")["data"]
    mlflow = _service_for(docs, env["MLFLOW_TRACKING_URI"])
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["command"] == ["mlflow", "server"]
    if "AWS_ENDPOINT_URL" in env:
        assert _service_for(docs, env["AWS_ENDPOINT_URL"])["metadata"]["name"] == "seaweedfs"
    mlflow_env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-config")["data"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"]
    if mlflow_env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://") and "MLFLOW_S3_ENDPOINT_URL" in mlflow_env:
        _service_for(docs, mlflow_env["MLFLOW_S3_ENDPOINT_URL"])


def test_rayjob_cluster_matches_raycluster(k8s: Any) -> None:
    base = k8s.K8S / "base"
    cluster = yaml.safe_load((base / "raycluster" / "raycluster.yaml").read_text())
    job = yaml.safe_load((base / "rayjob" / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]


def test_example_secret_is_not_applied(k8s: Any) -> None:
    expected = {
        "s3-credentials.secret.yaml": (SECRET_NAME, {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}),
        "mlflow-auth.secret.yaml": (MLFLOW_AUTH_SECRET, {"admin_password", "flask_secret_key"}),
    }
    for name, (secret_name, keys) in expected.items():
        secret = yaml.safe_load((k8s.K8S / "examples" / name).read_text())
        assert secret["metadata"]["name"] == secret_name
        assert set(secret["stringData"]) == keys
        assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())
        _validate_core(secret)
    for kfile in k8s.K8S.rglob("kustomization.yaml"):
        assert "examples" not in kfile.read_text(), f"{kfile} references the example Secret"


# --- security: restricted pods, deadlines, who reaches MLflow, S3 credentials ---------------------


def test_every_pod_meets_the_restricted_pod_security_standard(k8s: Any, docs: list[dict]) -> None:
    pods = [(where, t) for doc in docs for where, t in k8s.all_pod_templates(doc)]
    assert len(pods) >= 4
    for where, template in pods:
        assert k8s.restricted_violations(template) == [], where


def test_restricted_check_rejects_an_unrestricted_pod(k8s: Any) -> None:
    job = next(d for d in k8s.render("prod") if d["kind"] == "RayJob")
    template = next(t for where, t in k8s.all_pod_templates(job) if "head" in where)
    assert k8s.restricted_violations(template) == []
    bare = copy.deepcopy(template)
    del bare["spec"]["securityContext"]
    del bare["spec"]["containers"][0]["securityContext"]
    assert k8s.restricted_violations(bare) == [
        "ray-head: allowPrivilegeEscalation is not false",
        "ray-head: capabilities do not drop ALL",
        "ray-head: runAsNonRoot is not true",
        "ray-head: no non-root runAsUser (the image's user is not checked here)",
        "ray-head: seccompProfile is None, not RuntimeDefault/Localhost",
    ]
    # Each rule on its own: undo one setting of the compliant pod at a time.
    for path, value, message in [
        (("containers", 0, "securityContext", "allowPrivilegeEscalation"), True, "allowPrivilegeEscalation"),
        (("containers", 0, "securityContext", "capabilities", "drop"), ["NET_RAW"], "do not drop ALL"),
        (("containers", 0, "securityContext", "privileged"), True, "privileged"),
        (("securityContext", "runAsUser"), 0, "runAsUser is 0"),
        (("securityContext", "seccompProfile", "type"), "Unconfined", "seccompProfile is 'Unconfined'"),
        (("hostNetwork",), True, "hostNetwork"),
        (("volumes", 0), {"name": "dshm", "hostPath": {"path": "/dev/shm"}}, "hostPath"),
    ]:
        pod = copy.deepcopy(template)
        node = pod["spec"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        problems = k8s.restricted_violations(pod)
        assert any(message in p for p in problems), (path, problems)


def test_rayjobs_have_a_deadline(docs: list[dict]) -> None:
    for job in (d for d in docs if d["kind"] == "RayJob"):
        deadline = job["spec"]["activeDeadlineSeconds"]
        assert 600 <= deadline <= 14 * 86400, deadline


def _containers_of(docs: list[dict], kind: str, name: str) -> list[dict]:
    doc = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    return _all_containers(doc)


def test_mlflow_behind_basic_auth_and_reachable_only_from_ray_pods(k8s: Any, docs: list[dict]) -> None:
    mlflow = _containers_of(docs, "Deployment", "mlflow")[0]
    args = mlflow["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in mlflow["env"] if "valueFrom" in e}
    assert secret_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == {"name": MLFLOW_AUTH_SECRET, "key": "admin_password"}
    assert secret_env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == {"name": MLFLOW_AUTH_SECRET, "key": "flask_secret_key"}
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-config")["data"]
    ini = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-auth")["data"]
    mount = next(m for m in mlflow["volumeMounts"] if config["MLFLOW_AUTH_CONFIG_PATH"].startswith(m["mountPath"]))
    assert config["MLFLOW_AUTH_CONFIG_PATH"] == f"{mount['mountPath']}/basic_auth.ini" and "basic_auth.ini" in ini
    parsed = configparser.ConfigParser()
    parsed.read_string(ini["basic_auth.ini"])
    assert "admin_password" not in parsed["mlflow"]  # from the Secret only
    assert parsed["mlflow"]["database_uri"].startswith("sqlite:////mlflow/")  # on the volume: users survive restarts
    env = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mmclip-env")["data"]
    assert env["MLFLOW_TRACKING_USERNAME"] == parsed["mlflow"]["admin_username"]
    ray_docs = [d for d in docs if d["kind"] in ("RayJob", "RayCluster")]
    for doc in ray_docs:
        for where, template in k8s.pod_templates(doc):
            env_refs = {
                e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in template["spec"]["containers"][0]["env"]
            }
            assert env_refs["MLFLOW_TRACKING_PASSWORD"] == {"name": MLFLOW_AUTH_SECRET, "key": "admin_password"}, where
    # The NetworkPolicy selects the MLflow pods and admits only pods KubeRay labels as Ray head or worker.
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "mlflow")
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert set(source) == {"podSelector"}  # no namespaceSelector / ipBlock: same namespace, Ray pods only
    assert source["podSelector"] == {
        "matchExpressions": [{"key": "ray.io/node-type", "operator": "In", "values": ["head", "worker"]}]
    }
    assert [p["port"] for p in rule["ports"]] == ["http"]


def test_seaweedfs_requires_s3_credentials(docs: list[dict]) -> None:
    if not any(d["kind"] == "Deployment" and d["metadata"]["name"] == "seaweedfs" for d in docs):
        pytest.skip("this overlay uses an external S3 store")
    [weed] = _containers_of(docs, "Deployment", "seaweedfs")
    script = weed["args"][0]
    config = re.search(r"-s3\.config=(\S+)", script)
    assert config, "the S3 gateway runs without an identity file: anonymous access"
    # The identity file is written from the Secret's key pair (not optional: no Secret, no pod).
    assert f"> {config.group(1)}" in script and '"$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"' in script
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in weed["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert refs[key] == {"name": SECRET_NAME, "key": key}
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "seaweedfs")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["s3"]


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_mlflow_basic_auth_config_works_with_the_installed_mlflow(k8s: Any, tmp_path: Path) -> None:
    """The MLflow server command, auth ini and environment of the manifests, run locally: anonymous and
    wrong-password requests are refused, the Secret's password (as the Ray pods send it) is accepted."""
    import base64
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from mmclip_dist.loopback import free_loopback_ports

    docs = k8s.render("prod")
    [mlflow] = _containers_of(docs, "Deployment", "mlflow")
    ini = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mlflow-auth")["data"]
    username = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mmclip-env")["data"][
        "MLFLOW_TRACKING_USERNAME"
    ]
    # The manifest's paths (/mlflow on the volume) moved under tmp_path.
    (tmp_path / "basic_auth.ini").write_text(
        ini["basic_auth.ini"].replace("sqlite:////mlflow/", f"sqlite:///{tmp_path}/")
    )
    [port] = free_loopback_ports(1)
    args = list(mlflow["args"])
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    args[args.index("--workers") + 1] = "1"
    password = "admin-pw-" + os.urandom(8).hex()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.urandom(16).hex(),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (tmp_path / "server.log").open("wb")
    cmd = [sys.executable, "-m", "mlflow", "server", *args, "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
           "--artifacts-destination", (tmp_path / "artifacts").as_uri()]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def status(user: str | None, pw: str | None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1")
        if user is not None:
            token = base64.b64encode(f"{user}:{pw}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        assert status(None, None) == 401
        assert status(username, "wrong") == 401
        assert status(username, password) == 200
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()

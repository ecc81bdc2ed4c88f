"""Rendering and schema checking of the kustomize overlays under k8s/.

Rendering uses the real kustomize built into ``kubectl`` (``kubectl kustomize``) or a standalone
``kustomize`` binary when one is on PATH. Without either, ``render_subset`` renders the subset of
kustomize that k8s/ uses, and ``test_manifests.py`` checks that subset against the real binary
whenever one is present, so the fallback cannot silently diverge. The subset:

- ``resources``: files (multi-document YAML) and directories holding a kustomization
- ``namespace``: set on every namespaced object
- ``patches``: inline JSON6902 patches (add / remove / replace) with a ``target`` of kind + name
- ``images``: ``name`` -> ``newName`` / ``newTag`` / ``digest`` in every ``containers`` and
  ``initContainers`` list at any depth (kustomize's behaviour, custom resources included)

Anything else in a kustomization.yaml is an error here, so a new feature forces a renderer update.
"""

from __future__ import annotations

import copy
import functools
import gzip
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("debug", "dev", "prod")
# The KubeRay CRDs the manifests are validated against, vendored (gzipped) so validation never depends on
# where a checkout sits; SHARED_CRDS is the team's copy beside a developer checkout, kept in sync by a test.
CRDS = Path(__file__).resolve().parent / "kuberay-crds"
SHARED_CRDS = REPO / ".." / "shared" / "kuberay-crds"

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
CLUSTER_SCOPED = {
    "Namespace",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
}

Doc = dict[str, Any]


def kustomize_command() -> list[str] | None:
    """The real renderer available here, or None."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_real(path: Path) -> list[Doc]:
    cmd = kustomize_command()
    assert cmd is not None
    out = subprocess.run([*cmd, str(path)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def apply_json6902(doc: Doc, ops: list[dict[str, Any]], where: str) -> None:
    """RFC 6902 add / remove / replace, in place."""
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        kind = op["op"]
        if isinstance(node, list):
            index = len(node) if last == "-" else int(last)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del node[index]
            elif kind == "replace":
                node[index] = copy.deepcopy(op["value"])
            else:
                raise ValueError(f"{where}: op {kind!r} is outside the supported subset")
        else:
            if kind in ("remove", "replace") and last not in node:
                raise KeyError(f"{where}: {op['path']} does not exist")
            if kind in ("add", "replace"):
                node[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[last]
            else:
                raise ValueError(f"{where}: op {kind!r} is outside the supported subset")


def _container_lists(node: Any) -> Iterator[list[Doc]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield value
            else:
                yield from _container_lists(value)
    elif isinstance(node, list):
        for item in node:
            yield from _container_lists(item)


def _image_name(image: str) -> str:
    base = image.split("@", 1)[0]
    # A ':' after the last '/' separates the tag (a registry port comes before a '/').
    return base.rsplit(":", 1)[0] if ":" in base.rsplit("/", 1)[-1] else base


def apply_images(docs: list[Doc], images: list[dict[str, str]]) -> None:
    for rule in images:
        for doc in docs:
            for containers in _container_lists(doc):
                for container in containers:
                    image = container.get("image", "")
                    if _image_name(image) != rule["name"]:
                        continue
                    base = image.split("@", 1)[0]
                    name, tag = (base.rsplit(":", 1) + [""])[:2] if ":" in base.rsplit("/", 1)[-1] else (base, "")
                    name = rule.get("newName", name)
                    if "digest" in rule:
                        container["image"] = f"{name}@{rule['digest']}"
                    else:
                        tag = rule.get("newTag", tag)
                        container["image"] = f"{name}:{tag}" if tag else name


def render_subset(path: Path) -> list[Doc]:
    """Render a kustomization with the subset documented above."""
    kfile = path / "kustomization.yaml"
    spec = yaml.safe_load(kfile.read_text())
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise ValueError(f"{kfile}: {sorted(unknown)} outside the renderer's subset (tests/k8s/conftest.py)")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        target = (path / entry).resolve()
        docs += render_subset(target) if target.is_dir() else [d for d in yaml.safe_load_all(target.read_text()) if d]
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        if key in seen:
            raise ValueError(f"{kfile}: {key} defined twice")
        seen.add(key)
    for patch in spec.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        if not matched:
            raise ValueError(f"{kfile}: patch target {target} matches nothing")
        for doc in matched:
            apply_json6902(doc, yaml.safe_load(patch["patch"]), f"{kfile} patch {target}")
    apply_images(docs, spec.get("images", []))
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


@functools.cache
def _render_cached(overlay: str) -> tuple[Doc, ...]:
    path = K8S / "overlays" / overlay
    return tuple(render_real(path) if kustomize_command() else render_subset(path))


def render(overlay: str) -> list[Doc]:
    """The objects of ``k8s/overlays/<overlay>`` (deep copies: tests may mutate them)."""
    return copy.deepcopy(list(_render_cached(overlay)))


def vendored_crds() -> dict[str, str]:
    """File name (without .gz) -> YAML text of every vendored CRD."""
    return {
        path.name[: -len(".gz")]: gzip.decompress(path.read_bytes()).decode() for path in sorted(CRDS.glob("*.yaml.gz"))
    }


def _strict(schema: Any) -> Any:
    """OpenAPI v3 structural schema -> JSON Schema rejecting unknown fields, as `kubectl apply`
    (server-side strict field validation) would for a custom resource."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> validator of every served version of every vendored CRD."""
    validators = {}
    texts = vendored_crds()
    assert texts, f"no CRDs in {CRDS}"
    for text in texts.values():
        # The C loader: the two CRDs are 2 MB of YAML, ~20 s with the pure-Python one.
        for crd in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[Doc]:
    return render(overlay)


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """(where, PodTemplateSpec) of a workload or Ray resource."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    if doc["kind"] in ("Deployment", "Job"):
        yield name, doc["spec"]["template"]
    cluster = (
        doc["spec"].get("rayClusterSpec")
        if doc["kind"] == "RayJob"
        else doc["spec"]
        if doc["kind"] == "RayCluster"
        else None
    )
    if cluster:
        yield f"{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name} worker group {group['groupName']}", group["template"]


def all_pod_templates(doc: Doc) -> Iterator[tuple[str, Doc]]:
    """``pod_templates`` plus the RayJob's submitter pod: every pod an object makes."""
    yield from pod_templates(doc)
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield f"RayJob/{doc['metadata']['name']} submitter", doc["spec"]["submitterPodTemplate"]


# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip


def restricted_violations(template: Doc) -> list[str]:
    """What keeps a pod template from the Kubernetes "restricted" Pod Security Standard (pod-security.kubernetes.io,
    v1.37): privilege escalation, capabilities, seccomp, non-root, host namespaces / ports / paths, volume types."""
    pod = template["spec"]
    pod_sc = pod.get("securityContext") or {}
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is true")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} not allowed")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    containers = [*pod.get("initContainers", []), *pod.get("containers", []), *pod.get("ephemeralContainers", [])]
    for c in containers:
        sc = c.get("securityContext") or {}
        name = c.get("name", "?")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) in (0, None):
            problems.append(f"{name}: no non-root runAsUser (the image's user is not checked here)")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is {seccomp!r}, not RuntimeDefault/Localhost")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def ray_cluster_spec(doc: Doc) -> Doc:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.fixture(scope="session")
def k8s() -> Any:
    """This module, so test files reach the helpers above (importlib mode gives no package path)."""
    import sys

    return sys.modules[__name__]

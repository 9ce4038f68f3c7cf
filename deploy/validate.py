#!/usr/bin/env python3
"""Validates everything under deploy/ and the Dockerfile, offline.

Run by scripts/validate-deploy.sh (which installs the tools into .venv-deploy).
Each check prints one line; any failure makes the exit status 1.

What is checked, and how honestly:
- YAML style: yamllint over deploy/ (Helm templates excluded: they are Go templates).
- Kubernetes kinds (Deployment, Service, HPA, PDB, PVC): `kubernetes_validate` in strict
  mode against the bundled Kubernetes 1.37 OpenAPI schemas (unknown fields rejected).
- CRDs (ServiceMonitor, PodMonitor, ServingRuntime, InferenceService) are not in those
  schemas. They are checked against hand-written JSON Schema *subsets* of the upstream
  CRDs below (the fields these files use, unknown ones rejected), with the embedded
  Kubernetes types (Container, ResourceRequirements, LabelSelector, ContainerPort)
  validated against the real Kubernetes definitions. This catches typos and wrong
  types; it is not the upstream CRD schema.
- Helm chart: linted and rendered by Helm's own Go engine (helm-python-sdk bundles
  libhelm_c, Helm v4) under several value sets; every rendered document goes through
  the two checks above.
- Cross references: selectors match pod labels, named ports exist, HPA targets the
  Deployment, the KServe InferenceService names the ServingRuntime and a format it
  supports, probes hit the Open Inference Protocol health endpoints.
- Prometheus: `promtool check config` / `check rules`; every Grafana panel query is
  parsed by promtool too (as a throwaway rule) and may only name pomme metrics that
  crates/pomme-runtime/src/metrics.rs registers.
- Dockerfile: hadolint, then a checklist (multi-stage, non-root USER, volume, ports,
  health check on /v2/health/ready, `--locked` release build of pomme-cli).
- Self-test: a copy of the Deployment with a misspelt field must fail validation, so a
  silently permissive validator cannot pass.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.37.0"
CORE_KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}
FAILURES: list[str] = []


def ok(msg: str) -> None:
    print(f"ok   {msg}")


def fail(msg: str) -> None:
    FAILURES.append(msg)
    print(f"FAIL {msg}")


# --- Kubernetes definitions, for the typed parts of CRDs ---------------------------------

_DEFS = kv_utils.schema_contents("kubernetes-json-schema/v1.37.0-local-strict/_definitions.json", K8S_VERSION)
_REGISTRY = Resource.from_contents(_DEFS) @ Registry()


def k8s(name: str) -> dict:
    return {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.{name}"}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or [], "additionalProperties": False}


STR = {"type": "string"}
INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = obj(
    {"name": STR, "namespace": STR, "labels": STRMAP, "annotations": STRMAP},
    ["name"],
)
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
ENDPOINT = obj(
    {
        "port": STR,
        "targetPort": {"anyOf": [STR, INT]},
        "path": STR,
        "scheme": {"enum": ["http", "https"]},
        "interval": DURATION,
        "scrapeTimeout": DURATION,
        "honorLabels": BOOL,
    }
)


def crd(api: str, kind: str, spec: dict) -> dict:
    return obj({"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
               ["apiVersion", "kind", "metadata", "spec"])


# Subsets of monitoring.coreos.com/v1 (prometheus-operator) and serving.kserve.io CRDs.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): crd(
        "monitoring.coreos.com/v1", "ServiceMonitor",
        obj({"selector": k8s("apimachinery.pkg.apis.meta.v1.LabelSelector"),
             "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array", "items": STR}}),
             "jobLabel": STR,
             "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT}},
            ["selector", "endpoints"])),
    ("monitoring.coreos.com/v1", "PodMonitor"): crd(
        "monitoring.coreos.com/v1", "PodMonitor",
        obj({"selector": k8s("apimachinery.pkg.apis.meta.v1.LabelSelector"),
             "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array", "items": STR}}),
             "jobLabel": STR,
             "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": ENDPOINT}},
            ["selector", "podMetricsEndpoints"])),
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): crd(
        "serving.kserve.io/v1alpha1", "ServingRuntime",
        obj({"annotations": STRMAP,
             "disabled": BOOL,
             "multiModel": BOOL,
             "supportedModelFormats": {"type": "array", "minItems": 1, "items": obj(
                 {"name": STR, "version": STR, "autoSelect": BOOL, "priority": {"type": "integer", "minimum": 1}},
                 ["name"])},
             "protocolVersions": {"type": "array", "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]}},
             "containers": {"type": "array", "minItems": 1, "items": k8s("api.core.v1.Container")}},
            ["supportedModelFormats", "containers"])),
    ("serving.kserve.io/v1beta1", "InferenceService"): crd(
        "serving.kserve.io/v1beta1", "InferenceService",
        obj({"predictor": obj({
            "minReplicas": INT, "maxReplicas": INT,
            "model": obj({
                "modelFormat": obj({"name": STR, "version": STR}, ["name"]),
                "runtime": STR,
                "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                "storageUri": STR,
                "args": {"type": "array", "items": STR},
                "env": {"type": "array", "items": k8s("api.core.v1.EnvVar")},
                "ports": {"type": "array", "items": k8s("api.core.v1.ContainerPort")},
                "resources": k8s("api.core.v1.ResourceRequirements"),
            }, ["modelFormat"]),
        }, ["model"])}, ["predictor"])),
}


def validate_doc(doc: dict, where: str) -> bool:
    kind, api = doc.get("kind"), doc.get("apiVersion")
    name = f"{where}: {kind}/{doc.get('metadata', {}).get('name')}"
    try:
        if kind in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            ok(f"{name} (Kubernetes {K8S_VERSION} schema, strict)")
            return True
        schema = CRD_SCHEMAS.get((api, kind))
        if schema is None:
            fail(f"{name}: no schema for {api} {kind}")
            return False
        jsonschema.Draft202012Validator(schema, registry=_REGISTRY).validate(doc)
        ok(f"{name} (CRD subset schema + Kubernetes types)")
        return True
    except Exception as e:  # noqa: BLE001 - any validator error is a failed check
        msg = getattr(e, "message", None) or str(e)
        path = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
        caught = getattr(e, "caught", None)
        if caught is not None:
            msg = caught.message
            path = "/".join(str(p) for p in caught.absolute_path)
        fail(f"{name}: {path}: {msg.splitlines()[0][:200]}")
        return False


# --- Cross references ------------------------------------------------------------------------

def cross_check(docs: list[dict], where: str) -> None:
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    deps = by_kind.get("Deployment", [])
    for dep in deps:
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels", {})
        sel = dep["spec"]["selector"]["matchLabels"]
        check(all(labels.get(k) == v for k, v in sel.items()), f"{where}: Deployment selector matches its pod labels")
        c = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        check(set(ports) >= {"http", "grpc", "metrics"}, f"{where}: container ports http/grpc/metrics declared")
        check(c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready", f"{where}: readiness probe on /v2/health/ready")
        check(c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live", f"{where}: liveness probe on /v2/health/live")
        check("requests" in c.get("resources", {}), f"{where}: resource requests set")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        for key, port in (("POMME_HTTP_PORT", "http"), ("POMME_GRPC_PORT", "grpc"), ("POMME_METRICS_PORT", "metrics")):
            if key in env:
                check(str(ports[port]) == env[key], f"{where}: {key} matches container port {port}")
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        shutdown = env.get("POMME_SHUTDOWN_GRACE", "30s")
        m = re.fullmatch(r"(\d+)s", shutdown or "")
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", ["", "0"])
        if m:
            check(int(m.group(1)) + int(pre[-1]) < grace,
                  f"{where}: preStop sleep + POMME_SHUTDOWN_GRACE < terminationGracePeriodSeconds")
        for svc in by_kind.get("Service", []):
            check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), f"{where}: Service selects the pods")
            svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
            check({"http", "grpc", "metrics"} <= set(svc_ports), f"{where}: Service exposes http/grpc/metrics")
            for n, p in svc_ports.items():
                check(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"{where}: Service port {n} targets a container port")
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            ref = hpa["spec"]["scaleTargetRef"]
            check(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], f"{where}: HPA targets the Deployment")
            names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            check("pomme_pending_requests" in names, f"{where}: HPA scales on pomme_pending_requests")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            check(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()), f"{where}: PDB selects the pods")
        for pm in by_kind.get("PodMonitor", []):
            check(all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items()), f"{where}: PodMonitor selects the pods")
            check(all(e["port"] in ports for e in pm["spec"]["podMetricsEndpoints"]), f"{where}: PodMonitor port is a container port")
    for sm in by_kind.get("ServiceMonitor", []):
        for svc in by_kind.get("Service", []):
            slabels = svc["metadata"].get("labels", {})
            check(all(slabels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), f"{where}: ServiceMonitor selects the Service")
            check(all(e["port"] in {p["name"] for p in svc["spec"]["ports"]} for e in sm["spec"]["endpoints"]),
                  f"{where}: ServiceMonitor port is a Service port")
    runtimes = {r["metadata"]["name"]: r for r in by_kind.get("ServingRuntime", [])}
    for rt in runtimes.values():
        check({"v2", "grpc-v2"} <= set(rt["spec"]["protocolVersions"]), f"{where}: ServingRuntime speaks v2 and grpc-v2")
        c = rt["spec"]["containers"][0]
        args = " ".join(c["args"])
        check(c["name"] == "kserve-container", f"{where}: ServingRuntime container is named kserve-container")
        check("--model-repository=/mnt/models" in args, f"{where}: ServingRuntime serves /mnt/models (storage initializer)")
        check("--http-port=8080" in args and "--grpc-port=9000" in args, f"{where}: ServingRuntime uses KServe's ports 8080/9000")
    for isvc in by_kind.get("InferenceService", []):
        m = isvc["spec"]["predictor"]["model"]
        rt = runtimes.get(m.get("runtime"))
        check(rt is not None, f"{where}: InferenceService {isvc['metadata']['name']} names a ServingRuntime in the set")
        if rt:
            fmts = {f["name"] for f in rt["spec"]["supportedModelFormats"]}
            check(m["modelFormat"]["name"] in fmts, f"{where}: InferenceService format is supported by the runtime")
            check(m.get("protocolVersion", "v1") in rt["spec"]["protocolVersions"], f"{where}: InferenceService protocol is one the runtime speaks")
            if m.get("protocolVersion") == "grpc-v2":
                check(any(p.get("name") == "h2c" and p["containerPort"] == 9000 for p in m.get("ports", [])),
                      f"{where}: gRPC InferenceService routes h2c to port 9000")


def check(cond: bool, msg: str) -> None:
    (ok if cond else fail)(msg)


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- Sections ----------------------------------------------------------------------------------

def run(cmd: list[str], what: str) -> bool:
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode == 0:
        ok(what)
        return True
    out = (p.stdout + p.stderr).strip().splitlines()
    fail(f"{what}: " + " | ".join(out[:8]))
    return False


def yaml_lint() -> None:
    run([sys.executable, "-m", "yamllint", "-s", "-c", "deploy/.yamllint.yaml", "deploy/"], "yamllint deploy/")


def raw_manifests() -> None:
    for group in ("k8s", "kserve"):
        docs = []
        for f in sorted((DEPLOY / group).glob("*.yaml")):
            for d in load_docs(f):
                validate_doc(d, f"deploy/{group}/{f.name}")
                docs.append(d)
        cross_check(docs, f"deploy/{group}")


HELM_VALUE_SETS = {
    "defaults": {},
    "monitors+claim, no autoscaling": {
        "serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
        "modelRepository": {"existingClaim": "pomme-models"},
        "autoscaling": {"enabled": False}, "replicaCount": 3,
        "server": {"extraEnv": [{"name": "POMME_LOG", "value": "info"}]},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
    },
}


def helm_chart() -> None:
    import helm_python as helm  # imported here so the rest runs if the wheel is missing

    chart = DEPLOY / "helm" / "pomme"
    res = helm.lint(str(chart))
    errs = [m for m in res.get("messages", []) if m.get("severity", 0) >= 2] + list(res.get("errors", []))
    check(not errs, f"helm lint deploy/helm/pomme (Helm {helm.helm_sdk_version()})" + (f": {errs}" if errs else ""))
    for label, values in HELM_VALUE_SETS.items():
        with helm.Chart.load(str(chart)) as c:
            rendered = c.render(values, name="pomme", namespace="default")
        docs = []
        for fname, text in sorted(rendered.items()):
            if fname.endswith("NOTES.txt"):
                continue
            for d in yaml.safe_load_all(text):
                if d:
                    docs.append(d)
                    validate_doc(d, f"helm[{label}] {fname.split('/', 1)[1]}")
        kinds = sorted(d["kind"] for d in docs)
        ok(f"helm[{label}] rendered {len(docs)} documents: {', '.join(kinds)}")
        cross_check(docs, f"helm[{label}]")


def metric_names() -> set[str]:
    src = (ROOT / "crates/pomme-runtime/src/metrics.rs").read_text()
    return set(re.findall(r'register(?:_with_unit)?\(\s*"([a-z_]+)"', src))


def base_metric(series: str) -> str:
    s = series[len("pomme_"):]
    s = re.sub(r"_(bucket|sum|count)$", "", s) if re.search(r"_seconds_(bucket|sum|count)$|batch_size_(bucket|sum|count)$", s) else s
    s = re.sub(r"_total$", "", s)
    s = re.sub(r"_seconds$", "", s)
    return s


def prometheus() -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool not found (Debian package `prometheus`; scripts/setup.sh installs it when root)")
        return
    run([promtool, "check", "rules", "deploy/prometheus/alerts.yml"], "promtool check rules deploy/prometheus/alerts.yml")
    run([promtool, "check", "config", "--syntax-only", "deploy/prometheus/prometheus.yml"], "promtool check config deploy/prometheus/prometheus.yml")
    known = metric_names()
    check(len(known) >= 10, f"{len(known)} metric names read from crates/pomme-runtime/src/metrics.rs")
    exprs = []
    dash = json.loads((DEPLOY / "grafana/pomme-dashboard.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    check(len(ids) == len(set(ids)), f"grafana: {len(ids)} panels, unique ids")
    for p in dash["panels"]:
        for t in p["targets"]:
            exprs.append((f"grafana panel '{p['title']}'", t["expr"]))
    for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"]:
        for r in g["rules"]:
            exprs.append((f"alert {r['alert']}", r["expr"]))
    for what, e in exprs:
        for series in set(re.findall(r"\bpomme_[a-z_]+", e)):
            check(base_metric(series) in known, f"{what}: {series} is a metric pomme exports")
    # promtool parses each dashboard query as a rule expression (Grafana variables substituted).
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$model", ".*")}
        for i, (_, e) in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    run([promtool, "check", "rules", f.name], f"promtool parses all {len(exprs)} dashboard and alert queries")
    Path(f.name).unlink()


def dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    run([hadolint, "Dockerfile"], "hadolint Dockerfile")
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    names = [s[1] for s in stages]
    check(len(stages) >= 3 and "build" in names, f"Dockerfile: multi-stage ({', '.join(n for n in names if n)})")
    check(names[-1] == "runtime", "Dockerfile: default (last) stage is `runtime`")
    check(re.search(r"^FROM debian:\S*-slim AS base", text, re.M) is not None, "Dockerfile: runtime from a slim Debian base")
    check(re.search(r"cargo build --locked --release -p pomme-cli", text) is not None, "Dockerfile: `cargo build --locked --release -p pomme-cli`")
    check("COPY --from=build /usr/local/bin/pomme /usr/local/bin/pomme" in text, "Dockerfile: runtime copies the built binary")
    check("COPY --chmod=0755 target/release/pomme" in text, "Dockerfile: `prebuilt` target copies CI's target/release/pomme")
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    check(bool(users) and not users[-1].startswith(("root", "0")), f"Dockerfile: runs as non-root USER {users[-1] if users else '?'}")
    check(re.search(r'^VOLUME \["/models"\]', text, re.M) is not None, "Dockerfile: model repository is a volume (/models)")
    check(re.search(r"^EXPOSE 8000 8001 8002", text, re.M) is not None, "Dockerfile: exposes 8000/8001/8002")
    check(re.search(r"HEALTHCHECK[^\n]*\\\n\s+CMD[^\n]*/v2/health/ready", text) is not None, "Dockerfile: HEALTHCHECK on /v2/health/ready")
    rv = re.search(r"ARG RUST_VERSION=(\S+)", text)
    ws = re.search(r'rust-version = "([^"]+)"', (ROOT / "Cargo.toml").read_text())
    if rv and ws:
        have = tuple(int(x) for x in rv.group(1).split("."))
        need = tuple(int(x) for x in ws.group(1).split("."))
        check(have >= need, f"Dockerfile: Rust {rv.group(1)} >= workspace rust-version {ws.group(1)}")
    ort = re.search(r"ARG ONNXRUNTIME_VERSION=(\S+)", text)
    req = (ROOT / "scripts/requirements-test.txt").read_text()
    check(bool(ort) and f"onnxruntime=={ort.group(1)}" in req, "Dockerfile: ONNX Runtime version matches the tested one (scripts/requirements-test.txt)")
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    check("!target/release/pomme" in ignore and "target/*" in ignore, ".dockerignore: target/ excluded but for target/release/pomme")


def self_test() -> None:
    """The valid documents pass and copies with one misspelt field fail: proves the checks are strict."""
    import contextlib
    import io

    dep = load_docs(DEPLOY / "k8s/deployment.yaml")[0]
    bad_dep = copy.deepcopy(dep)
    c = bad_dep["spec"]["template"]["spec"]["containers"][0]
    c["readinessprobe"] = c.pop("readinessProbe")
    sm = load_docs(DEPLOY / "k8s/servicemonitor.yaml")[0]
    bad_sm = copy.deepcopy(sm)
    bad_sm["spec"]["endpoints"][0]["intervall"] = "15s"
    rt = load_docs(DEPLOY / "kserve/servingruntime.yaml")[0]
    bad_rt = copy.deepcopy(rt)
    bad_rt["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pat"] = "/v2/health/ready"
    results = []
    n = len(FAILURES)
    for good, bad in ((dep, bad_dep), (sm, bad_sm), (rt, bad_rt)):
        with contextlib.redirect_stdout(io.StringIO()):
            results.append(validate_doc(good, "self-test") and not validate_doc(bad, "self-test"))
    del FAILURES[n:]
    check(all(results), "self-test: valid documents pass, a misspelt field fails "
          "(Deployment; ServiceMonitor; ServingRuntime's embedded Kubernetes Container)")


def main() -> int:
    yaml_lint()
    raw_manifests()
    helm_chart()
    prometheus()
    dockerfile()
    self_test()
    if FAILURES:
        print(f"validate-deploy: {len(FAILURES)} check(s) failed", file=sys.stderr)
        return 1
    print("validate-deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

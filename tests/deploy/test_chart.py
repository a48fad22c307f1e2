#!/usr/bin/env python3
"""Tests of the Helm chart (deploy/helm/chronicle) and the container image (deploy/Dockerfile).

No Kubernetes cluster, no container engine: Helm's own Go SDK (libhelm, Helm v4, through
the PyPI package helm-python-sdk) lints and renders the chart, kubernetes-validate checks
every rendered manifest against Kubernetes' OpenAPI schemas in strict mode, and the
assertions below check what the rendered objects do. The Grafana dashboard
(deploy/grafana/chronicle.json) is checked too: its structure, its queries parsed by
`promtool check rules`, the metric names they use against those the Rust source defines,
its copy inside the chart, and docs/observability.md's metric table and examples. Run it
with scripts/test-chart, which installs the pinned packages in a virtualenv.

Each check prints one line; the last line is "N passed, N failed"; the exit status is 1 when
any check failed.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "chronicle"
SUBCHART = CHART / "charts" / "nats"
EXAMPLES = ROOT / "deploy" / "examples"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DASHBOARD = ROOT / "deploy" / "grafana" / "chronicle.json"
CHART_DASHBOARD = CHART / "dashboards" / "chronicle.json"
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# The prometheus crate's process collector (src/metrics.rs registers it): standard names,
# not spelled out in Chronicle's source.
PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
)

# The Kubernetes version the manifests are validated for: the newest kubernetes-validate
# ships schemas of (1.37 for kubernetes-validate 1.37.0).
KUBE_VERSION = "1.37.0"

# The node pods' labels; the chaos harness selects pods by exactly these two.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"

# Kinds kubernetes-validate has no schema for (CRDs): checked structurally below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("cert-manager.io/v1", "Certificate")}

PASSED = 0
FAILED = 0
FAILURES: list[str] = []


def check(name: str, condition: bool, detail: str = "") -> bool:
    global PASSED, FAILED
    if condition:
        PASSED += 1
        print(f"ok    {name}")
    else:
        FAILED += 1
        FAILURES.append(name)
        print(f"FAIL  {name}" + (f": {detail}" if detail else ""))
    return condition


def section(title: str) -> None:
    print(f"\n== {title}")


# ---------------------------------------------------------------------------------------
# Rendering helpers


class Render:
    """One rendering of the chart: the objects by kind and name, NOTES.txt, the raw text."""

    def __init__(self, label: str, values: dict | None, release: str, namespace: str):
        self.label = label
        self.values = values
        self.release = release
        self.namespace = namespace
        with helm.Chart.load(str(CHART)) as chart:
            self.merged = chart.merge_values(values)
            self.files = chart.render(values, name=release, namespace=namespace, is_install=True)
        self.notes = ""
        self.docs: list[tuple[str, dict]] = []
        for path, text in sorted(self.files.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.docs.append((path, doc))

    def all(self, kind: str) -> list[dict]:
        return [d for _, d in self.docs if d.get("kind") == kind]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = [d for d in self.all(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            raise AssertionError(f"{self.label}: expected one {kind} {name or ''}, found {len(found)}")
        return found[0]

    def sts(self) -> dict:
        return self.one("StatefulSet")

    def node_container(self) -> dict:
        return self.sts()["spec"]["template"]["spec"]["containers"][0]

    def script(self) -> str:
        args = self.node_container()["args"]
        return args[2]


def load_example(name: str) -> dict:
    with open(EXAMPLES / name) as f:
        return yaml.safe_load(f)


def serve_flags(script: str) -> list[str]:
    """The words of the `exec chronicle serve ...` command, continuation lines joined."""
    text = script.replace("\\\n", " ")
    line = next(l for l in text.splitlines() if l.strip().startswith("exec chronicle serve"))
    return line.split()


def flag_value(words: list[str], flag: str) -> str | None:
    for i, w in enumerate(words):
        if w == flag and i + 1 < len(words):
            return words[i + 1].strip("'")
    return None


def volume_for_path(pod_spec: dict, container: dict, path: str) -> dict | None:
    """The volume whose mount holds `path` in `container`, or None."""
    best = None
    for m in container.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"]):
                best = m
    if best is None:
        return None
    for v in pod_spec.get("volumes", []):
        if v["name"] == best["name"]:
            return {"mount": best, "volume": v}
    # a volumeClaimTemplate
    return {"mount": best, "volume": {"name": best["name"], "pvc": True}}


def run_script(script: str, env: dict[str, str]) -> tuple[int, list[str], str]:
    """Runs the node's start script under dash (POSIX sh) with a stub `chronicle` that
    prints its arguments one per line; returns the exit status, the arguments, stderr."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "chronicle"
        stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
        shell = shutil.which("dash") or "/bin/sh"
        full_env = {"PATH": f"{tmp}:/usr/bin:/bin"}
        full_env.update(env)
        p = subprocess.run([shell, "-c", script], env=full_env, capture_output=True, text=True, timeout=10)
        return p.returncode, p.stdout.splitlines(), p.stderr


def node_args_for(render: Render, ordinal: int, use_pod_index: bool = False) -> list[str]:
    env = {"HOSTNAME": f"{render.sts()['metadata']['name']}-{ordinal}"}
    if use_pod_index:
        env = {"HOSTNAME": "not-a-statefulset-name", "POD_INDEX": str(ordinal)}
    code, words, err = run_script(render.script(), env)
    if code != 0:
        raise AssertionError(f"start script exited {code}: {err}")
    return words


# ---------------------------------------------------------------------------------------
# Lint


def test_lint() -> None:
    section("helm lint (Helm v4 SDK, strict, Kubernetes " + KUBE_VERSION + ")")
    print(f"libhelm {helm.helm_c_version()}, Helm SDK {helm.helm_sdk_version()}")
    cases = [
        ("defaults", None),
        ("production.yaml", load_example("production.yaml")),
        ("scale-out.yaml", load_example("scale-out.yaml")),
    ]
    for label, values in cases:
        report = helm.lint(str(CHART), values, strict=True, kube_version="v" + KUBE_VERSION, with_subcharts=True)
        bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
        check(f"lint {label}: no warning or error", not bad, json.dumps(bad))
    report = helm.lint(str(SUBCHART), None, strict=True, kube_version="v" + KUBE_VERSION)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    check("lint charts/nats on its own: no warning or error", not bad, json.dumps(bad))


# ---------------------------------------------------------------------------------------
# Schema validation of every manifest


def validate_manifests(render: Render) -> None:
    section(f"kubernetes-validate --strict {KUBE_VERSION}: {render.label}")
    crd_docs = 0
    for path, doc in render.docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if key in CRD_KINDS:
            crd_docs += 1
            continue
        try:
            version = kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            check(f"{render.label}: {name} valid against Kubernetes {version} (strict)", True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            check(f"{render.label}: {name} valid (strict)", False, f"{path}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(f"{render.label}: {name} has a schema", False, e.message)
    if crd_docs:
        print(f"      ({crd_docs} custom resource(s) without a bundled schema: checked structurally below)")


# ---------------------------------------------------------------------------------------
# The rendered objects


def test_statefulset(r: Render, replicas: int, initial: int) -> None:
    section(f"StatefulSet and start script: {r.label}")
    sts = r.sts()
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = r.node_container()
    selector = {NAME_LABEL: "chronicle", INSTANCE_LABEL: r.release}
    check(f"{r.label}: replicas {replicas}", spec["replicas"] == replicas, str(spec["replicas"]))
    check(f"{r.label}: selector is exactly name=chronicle, instance={r.release}",
          spec["selector"]["matchLabels"] == selector, str(spec["selector"]))
    labels = spec["template"]["metadata"]["labels"]
    check(f"{r.label}: pod labels carry name=chronicle and instance={r.release}",
          labels.get(NAME_LABEL) == "chronicle" and labels.get(INSTANCE_LABEL) == r.release, str(labels))
    check(f"{r.label}: podManagementPolicy Parallel (founding members start together)",
          spec.get("podManagementPolicy") == "Parallel")
    check(f"{r.label}: RollingUpdate strategy", spec.get("updateStrategy", {}).get("type") == "RollingUpdate")
    headless = r.one("Service", spec["serviceName"])
    check(f"{r.label}: serviceName is the headless members Service",
          headless["spec"].get("clusterIP") == "None" and headless["spec"].get("publishNotReadyAddresses") is True)
    check(f"{r.label}: PVCs of removed members deleted on scale-in (whenScaled Delete)",
          spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Delete"},
          str(spec.get("persistentVolumeClaimRetentionPolicy")))

    # tini as PID 1, the shell script execs chronicle.
    check(f"{r.label}: tini is PID 1, then /bin/sh -c script",
          c["command"] == ["/usr/bin/tini", "--"] and c["args"][:2] == ["/bin/sh", "-c"], str(c.get("command")))
    script = r.script()
    ids = ",".join(str(i) for i in range(1, initial + 1))
    check(f"{r.label}: script derives the id from the ordinal (POD_INDEX or HOSTNAME)",
          'ordinal="${POD_INDEX:-${HOSTNAME##*-}}"' in script and "id=$((ordinal + 1))" in script)
    check(f"{r.label}: script fixes the founding members from initialMembers={initial}",
          f'[ "$id" -le {initial} ]' in script and f"--initial-nodes {ids}" in script, script)
    check(f"{r.label}: script execs chronicle serve (chronicle gets SIGTERM)", "exec chronicle serve" in script)

    # Run the script for every ordinal under dash with a stub chronicle.
    for ordinal in range(replicas):
        for use_pod_index in (False, True):
            how = "POD_INDEX" if use_pod_index else "HOSTNAME"
            words = node_args_for(r, ordinal, use_pod_index)
            node_id = flag_value(words, "--node-id")
            ok = words[:1] == ["serve"] and node_id == str(ordinal + 1)
            if ordinal + 1 <= initial:
                ok = ok and flag_value(words, "--initial-nodes") == ids and "--join" not in words
                what = f"--initial-nodes {ids}"
            else:
                ok = ok and "--join" in words and "--initial-nodes" not in words
                what = "--join"
            check(f"{r.label}: ordinal {ordinal} ({how}) -> node {ordinal + 1} {what}", ok, " ".join(words))
    code, _, err = run_script(script, {"HOSTNAME": "chronicle-abc"})
    check(f"{r.label}: script refuses a hostname without an ordinal", code != 0 and "no pod ordinal" in err, err)

    words = node_args_for(r, 0)
    check(f"{r.label}: listens on 0.0.0.0:8086", flag_value(words, "--http-addr") == "0.0.0.0:8086")
    data_dir = flag_value(words, "--data-dir")
    vol = volume_for_path(pod, c, data_dir or "/nonexistent")
    vct = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])]
    check(f"{r.label}: --data-dir {data_dir} is the PVC template's volume",
          vol is not None and vol["volume"].get("pvc") and vol["mount"]["name"] in vct, str(vol))
    check(f"{r.label}: replication flag from cluster.replication",
          flag_value(words, "--replication") == str(r.merged["cluster"]["replication"]))

    # Probes and stopping.
    probes = {k: c.get(k, {}).get("httpGet", {}) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    scheme = "HTTPS" if r.merged["tls"]["enabled"] else "HTTP"
    check(f"{r.label}: liveness and startup probes GET /health/live",
          probes["livenessProbe"].get("path") == "/health/live" and probes["startupProbe"].get("path") == "/health/live")
    check(f"{r.label}: readiness probe GETs /health/ready", probes["readinessProbe"].get("path") == "/health/ready")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(f"{r.label}: probes on port http (8086), scheme {scheme}",
          ports.get("http") == 8086 and all(p.get("port") == "http" and p.get("scheme") == scheme for p in probes.values()),
          str(probes))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(f"{r.label}: terminationGracePeriodSeconds {grace} >= 30 (a node stops within ~25 s)", grace >= 30)
    pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    check(f"{r.label}: preStop sleeps briefly, well inside the grace period",
          pre[:1] == ["/bin/sleep"] and int(pre[1]) + 25 < grace, str(pre))

    # Security.
    psc = pod["securityContext"]
    csc = c["securityContext"]
    check(f"{r.label}: pod runAsNonRoot, non-zero uid/gid, seccomp RuntimeDefault",
          psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) > 0 and psc.get("runAsGroup", 0) > 0
          and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", str(psc))
    check(f"{r.label}: container readOnlyRootFilesystem, no privilege escalation, drops ALL capabilities",
          csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
          and csc.get("privileged") is False and csc.get("capabilities", {}).get("drop") == ["ALL"]
          and not csc.get("capabilities", {}).get("add"), str(csc))
    tmp = volume_for_path(pod, c, "/tmp")
    check(f"{r.label}: /tmp is an emptyDir", tmp is not None and "emptyDir" in tmp["volume"], str(tmp))
    check(f"{r.label}: no service account token, no service links",
          pod.get("automountServiceAccountToken") is False and pod.get("enableServiceLinks") is False)
    res = c.get("resources", {})
    check(f"{r.label}: resource requests and a memory limit",
          "cpu" in res.get("requests", {}) and "memory" in res.get("requests", {}) and "memory" in res.get("limits", {}),
          str(res))

    # Placement.
    aff = pod.get("affinity", {}).get("podAntiAffinity", {})
    want = r.merged["podAntiAffinity"]["type"]
    if want == "required":
        terms = aff.get("requiredDuringSchedulingIgnoredDuringExecution", [])
        ok = len(terms) == 1 and terms[0]["labelSelector"]["matchLabels"] == selector \
            and terms[0]["topologyKey"] == "kubernetes.io/hostname"
    else:
        terms = aff.get("preferredDuringSchedulingIgnoredDuringExecution", [])
        ok = len(terms) == 1 and terms[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector \
            and terms[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    check(f"{r.label}: {want} pod anti-affinity across Kubernetes nodes", ok, str(aff))
    spread = pod.get("topologySpreadConstraints", [])
    check(f"{r.label}: topology spread across zones",
          len(spread) == 1 and spread[0]["topologyKey"] == "topology.kubernetes.io/zone"
          and spread[0]["labelSelector"]["matchLabels"] == selector, str(spread))


def test_secrets(r: Render) -> None:
    section(f"Secrets as files, nothing secret in plain text: {r.label}")
    sts = r.sts()
    pod = sts["spec"]["template"]["spec"]
    c = r.node_container()
    words = node_args_for(r, 0)
    auth_secret = r.merged["auth"]["existingSecret"] or f"{sts['metadata']['name']}-auth"

    file_flags = ["--bootstrap-token-file", "--cluster-secret-file"]
    if r.merged["tls"]["enabled"]:
        file_flags += ["--tls-cert", "--tls-key"]
    for flag in ("--nats-creds", "--nats-nkey-file", "--nats-ca"):
        if flag in words:
            file_flags.append(flag)
    for flag in file_flags:
        path = flag_value(words, flag)
        vol = volume_for_path(pod, c, path or "/nonexistent")
        secret = (vol or {}).get("volume", {}).get("secret")
        ok = bool(secret) and vol["mount"].get("readOnly") is True
        if ok:
            rel = path[len(vol["mount"]["mountPath"].rstrip("/")) + 1:]
            ok = any(item["path"] == rel for item in secret.get("items", []))
        check(f"{r.label}: {flag} {path} is a file of a read-only Secret volume", ok, str(vol))
        if ok and flag in ("--bootstrap-token-file", "--cluster-secret-file"):
            check(f"{r.label}: {flag} comes from Secret {auth_secret}", secret["secretName"] == auth_secret,
                  secret["secretName"])
        if ok:
            mode = secret.get("defaultMode")
            check(f"{r.label}: {flag} file mode {oct(mode) if mode else mode}: not readable by others",
                  mode is not None and mode & 0o007 == 0)

    # Environment: secret-looking variables come from secretKeyRef, never a value.
    secretish = re.compile(r"TOKEN|PASSWORD|SECRET|CREDS|KEY", re.I)
    env_objects = []
    for kind in ("StatefulSet", "Deployment", "Job"):
        for obj in r.all(kind):
            for cont in obj["spec"]["template"]["spec"]["containers"]:
                env_objects.append((f"{kind}/{obj['metadata']['name']}", cont))
    for owner, cont in env_objects:
        for e in cont.get("env", []):
            if secretish.search(e["name"]):
                check(f"{r.label}: {owner} env {e['name']} from a secretKeyRef, not a value",
                      "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), str(e))
        flat = " ".join(cont.get("command", []) + cont.get("args", []))
        bad = re.findall(r"--(?:token|nats-password|nats-token|bootstrap-token)(?:[ =])", flat)
        check(f"{r.label}: {owner} passes no secret on its command line", not bad, str(bad))

    # Every generated secret value appears in its Secret only.
    secret_values = []
    for s in r.all("Secret"):
        for k, v in (s.get("data") or {}).items():
            secret_values.append((s["metadata"]["name"], k, base64.b64decode(v).decode()))
        for k, v in (s.get("stringData") or {}).items():
            secret_values.append((s["metadata"]["name"], k, v))
    for name, key, value in secret_values:
        check(f"{r.label}: Secret {name} key {key} holds at least 16 bytes", len(value.encode()) >= 16)
        leaks = [f"{d.get('kind')}/{d['metadata']['name']}" for _, d in r.docs
                 if d.get("kind") != "Secret" and value in yaml.safe_dump(d)]
        leaks += ["NOTES.txt"] if value in r.notes else []
        check(f"{r.label}: the value of {name}/{key} appears nowhere else", not leaks, str(leaks))
    for cm in r.all("ConfigMap"):
        for k, v in (cm.get("data") or {}).items():
            bad = re.findall(r"(?im)^\s*(password|token|nkey_seed|secret)\s*[=:]\s*[\"']?[^$\s\"']", v)
            check(f"{r.label}: ConfigMap {cm['metadata']['name']}/{k} holds no credential", not bad, str(bad))


def test_other_objects(r: Render) -> None:
    section(f"Services, PDB, hooks, labels: {r.label}")
    sts = r.sts()
    full = sts["metadata"]["name"]
    selector = {NAME_LABEL: "chronicle", INSTANCE_LABEL: r.release}
    replicas = sts["spec"]["replicas"]
    client = r.one("Service", full)
    check(f"{r.label}: client Service {full} on 8086, selecting the node pods",
          client["spec"]["selector"] == selector
          and [(p["name"], p["port"]) for p in client["spec"]["ports"]] == [("http", 8086)], str(client["spec"]))
    pdb = r.one("PodDisruptionBudget")
    check(f"{r.label}: PDB maxUnavailable 1 over the node pods",
          pdb["spec"].get("maxUnavailable") == 1 and pdb["spec"]["selector"]["matchLabels"] == selector
          and "minAvailable" not in pdb["spec"], str(pdb["spec"]))

    # Only the node pods carry both selector labels.
    for kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        for obj in r.all(kind):
            lbl = obj["spec"]["template"]["metadata"].get("labels", {})
            is_node = kind == "StatefulSet"
            both = lbl.get(NAME_LABEL) == "chronicle" and lbl.get(INSTANCE_LABEL) == r.release
            check(f"{r.label}: {kind}/{obj['metadata']['name']} pods {'are' if is_node else 'are not'} "
                  f"selected by name=chronicle,instance={r.release}", both == is_node, str(lbl))

    # Hook Jobs.
    url = f"{'https' if r.merged['tls']['enabled'] else 'http'}://{full}.{r.namespace}.svc.cluster.local:8086"
    jobs = {j["metadata"]["annotations"]["helm.sh/hook"]: j for j in r.all("Job")}
    want = {
        "pre-upgrade,pre-rollback": ["--shrink-only"],
        "post-install,post-upgrade,post-rollback": ["--wait", r.merged["scaling"]["wait"]],
    }
    check(f"{r.label}: two scaling hook Jobs (pre-upgrade shrink, post-install/upgrade grow)",
          set(jobs) == set(want), str(list(jobs)))
    for hook, extra in want.items():
        job = jobs.get(hook)
        if job is None:
            continue
        ann = job["metadata"]["annotations"]
        cont = job["spec"]["template"]["spec"]["containers"][0]
        cmd = cont["command"]
        base = ["/usr/bin/tini", "--", "chronicle", "cluster", "scale", "--members", str(replicas), "--http", url]
        check(f"{r.label}: {hook} Job runs `chronicle cluster scale --members {replicas} {' '.join(extra)}`",
              cmd == base + extra, " ".join(cmd))
        check(f"{r.label}: {hook} Job deleted before re-creation and on success",
              ann.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded")
        if hook.startswith("post"):
            check(f"{r.label}: {hook} Job does not shrink only", "--shrink-only" not in cmd)
        env = {e["name"]: e for e in cont.get("env", [])}
        check(f"{r.label}: {hook} Job CHRONICLE_HTTP is the client Service", env.get("CHRONICLE_HTTP", {}).get("value") == url)
        if r.merged["auth"]["enabled"]:
            ref = env.get("CHRONICLE_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
            auth_secret = r.merged["auth"]["existingSecret"] or f"{full}-auth"
            check(f"{r.label}: {hook} Job token from Secret {auth_secret}",
                  ref == {"name": auth_secret, "key": r.merged["auth"]["bootstrapTokenKey"]}, str(ref))
        if r.merged["tls"]["enabled"] and r.merged["tls"]["caKey"]:
            ca = env.get("CHRONICLE_CA_FILE", {}).get("value")
            pod = job["spec"]["template"]["spec"]
            vol = volume_for_path(pod, cont, ca or "/nonexistent")
            items = (vol or {}).get("volume", {}).get("secret", {}).get("items", [])
            check(f"{r.label}: {hook} Job CHRONICLE_CA_FILE {ca} holds only the CA",
                  [i["key"] for i in items] == [r.merged["tls"]["caKey"]], str(items))
        jsc = cont["securityContext"]
        check(f"{r.label}: {hook} Job container hardened",
              jsc.get("readOnlyRootFilesystem") is True and jsc.get("allowPrivilegeEscalation") is False
              and jsc.get("capabilities", {}).get("drop") == ["ALL"])

    # NOTES.txt
    notes = r.notes
    check(f"{r.label}: NOTES rendered with port-forward, Service DNS name and cluster status",
          f"port-forward svc/{full} 8086:8086" in notes and f"{full}.{r.namespace}.svc.cluster.local:8086" in notes
          and "chronicle cluster status" in notes, notes[:200])
    if r.merged["auth"]["enabled"]:
        check(f"{r.label}: NOTES tell how to get the token", "CHRONICLE_TOKEN" in notes and "base64 -d" in notes)


def test_nats_bundled(r: Render) -> None:
    section(f"Bundled NATS: {r.label}")
    dep = r.one("Deployment")
    cont = dep["spec"]["template"]["spec"]["containers"][0]
    check(f"{r.label}: nats-server image pinned by digest", re.search(r"@sha256:[0-9a-f]{64}$", cont["image"]) is not None,
          cont["image"])
    cm = r.one("ConfigMap", f"{r.release}-nats-config")
    conf = cm["data"]["nats.conf"]
    check(f"{r.label}: JetStream not enabled", "jetstream" not in re.sub(r"(?m)#.*$", "", conf).lower())
    check(f"{r.label}: token comes from the environment, not the file", "token: $NATS_AUTH_TOKEN" in conf, conf)
    secret = r.one("Secret", f"{r.release}-nats-auth")
    env = {e["name"]: e for e in cont.get("env", [])}
    check(f"{r.label}: server's NATS_AUTH_TOKEN from Secret {secret['metadata']['name']}",
          env["NATS_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"})
    node_env = {e["name"]: e for e in r.node_container().get("env", [])}
    check(f"{r.label}: nodes' CHRONICLE_NATS_TOKEN from the same Secret",
          node_env.get("CHRONICLE_NATS_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
          == {"name": secret["metadata"]["name"], "key": "token"})
    svc = r.one("Service", f"{r.release}-nats")
    words = node_args_for(r, 0)
    check(f"{r.label}: nodes' --nats-url is the bundled Service",
          flag_value(words, "--nats-url") == f"nats://{svc['metadata']['name']}.{r.namespace}.svc.cluster.local:4222",
          str(flag_value(words, "--nats-url")))
    csc = cont["securityContext"]
    check(f"{r.label}: nats-server non-root, read-only root, no capabilities",
          csc.get("readOnlyRootFilesystem") is True and csc.get("capabilities", {}).get("drop") == ["ALL"]
          and dep["spec"]["template"]["spec"]["securityContext"].get("runAsNonRoot") is True)
    server = shutil.which("nats-server")
    if server:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "nats.conf"
            path.write_text(conf)
            p = subprocess.run([server, "-c", str(path), "-t"], capture_output=True, text=True, timeout=20,
                               env={"NATS_AUTH_TOKEN": "x" * 32, "PATH": os.environ.get("PATH", "")})
            check(f"{r.label}: nats-server -t accepts the rendered configuration", p.returncode == 0,
                  (p.stdout + p.stderr).strip())
    else:
        print("      (nats-server not on PATH: configuration test skipped)")

    # The parent's defaults for the subchart equal the subchart's own.
    with open(SUBCHART / "values.yaml") as f:
        sub = yaml.safe_load(f)
    with open(CHART / "values.yaml") as f:
        parent = yaml.safe_load(f)["nats"]
    same = {k: (parent.get(k), sub.get(k)) for k in sub if parent.get(k) != sub.get(k)}
    check("values.yaml nats.* defaults match charts/nats/values.yaml", not same, str(same))


def test_production(r: Render) -> None:
    section(f"Production example: {r.label}")
    full = r.sts()["metadata"]["name"]
    check(f"{r.label}: no bundled NATS objects", not r.all("Deployment") and
          not [s for s in r.all("Secret") if "nats" in s["metadata"]["name"]])
    check(f"{r.label}: no generated Secret (auth.existingSecret)", not r.all("Secret"))
    words = node_args_for(r, 0)
    check(f"{r.label}: external NATS URL, creds file, CA, TLS required",
          flag_value(words, "--nats-url") == "tls://nats.nats.svc.cluster.local:4222"
          and flag_value(words, "--nats-creds") and flag_value(words, "--nats-ca") and "--nats-tls" in words,
          " ".join(words))
    check(f"{r.label}: --config given and the ConfigMap holds the TOML",
          flag_value(words, "--config") == "/etc/chronicle/config/chronicle.toml"
          and 'raw = "90d"' in r.one("ConfigMap", f"{full}-config")["data"]["chronicle.toml"])
    check(f"{r.label}: --shards 8 from cluster.shards", flag_value(words, "--shards") == "8")
    check(f"{r.label}: HTTPS: --tls-cert and --tls-key given",
          flag_value(words, "--tls-cert") and flag_value(words, "--tls-key"))

    # cert-manager Certificate (no schema bundled: structural check).
    cert = r.one("Certificate")
    spec = cert["spec"]
    tls_vol = next(v for v in r.sts()["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    names = spec.get("dnsNames", [])
    check(f"{r.label}: Certificate cert-manager.io/v1 writes the Secret the pods mount",
          cert["apiVersion"] == "cert-manager.io/v1" and spec.get("secretName") == tls_vol["secret"]["secretName"])
    check(f"{r.label}: Certificate names the client Service and every member",
          f"{full}.{r.namespace}.svc.cluster.local" in names and f"*.{full}-members.{r.namespace}.svc.cluster.local" in names
          and f"{full}.{r.namespace}.svc" in names and "chronicle.example.com" in names, str(names))
    check(f"{r.label}: Certificate fields well-formed (issuerRef, durations, key, usages)",
          spec.get("issuerRef") == {"name": "chronicle-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
          and re.fullmatch(r"([0-9]+(h|m|s))+", spec.get("duration", "")) is not None
          and re.fullmatch(r"([0-9]+(h|m|s))+", spec.get("renewBefore", "")) is not None
          and spec.get("privateKey", {}).get("algorithm") in ("RSA", "ECDSA", "Ed25519")
          and set(spec.get("usages", [])) <= {"server auth", "client auth", "digital signature", "key encipherment"}
          and spec.get("ipAddresses") == ["127.0.0.1"]
          and set(spec) <= {"secretName", "duration", "renewBefore", "commonName", "dnsNames", "ipAddresses",
                            "privateKey", "usages", "issuerRef"}, json.dumps(spec))

    # ServiceMonitor (no schema bundled: structural check).
    sm = r.one("ServiceMonitor")
    ep = sm["spec"]["endpoints"]
    members = r.one("Service", f"{full}-members")
    matches = all(members["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    check(f"{r.label}: ServiceMonitor selects only the members Service",
          matches and not all(r.one("Service", full)["metadata"]["labels"].get(k) == v
                              for k, v in sm["spec"]["selector"]["matchLabels"].items()))
    check(f"{r.label}: ServiceMonitor scrapes /metrics on port http over HTTPS with a token from a Secret",
          sm["apiVersion"] == "monitoring.coreos.com/v1" and len(ep) == 1 and ep[0]["port"] == "http"
          and ep[0]["path"] == "/metrics" and ep[0]["scheme"] == "https"
          and ep[0]["authorization"] == {"type": "Bearer", "credentials": {"name": "chronicle-metrics-token", "key": "token"}}
          and ep[0]["tlsConfig"]["ca"]["secret"] == {"name": tls_vol["secret"]["secretName"], "key": "ca.crt"}
          and ep[0]["tlsConfig"]["serverName"] in names
          and sm["metadata"]["labels"].get("release") == "prometheus", json.dumps(sm["spec"]))

    # NetworkPolicy.
    np = r.one("NetworkPolicy")
    ingress = np["spec"]["ingress"]
    egress = np["spec"]["egress"]
    ports_in = [p["port"] for rule in ingress for p in rule.get("ports", [])]
    check(f"{r.label}: NetworkPolicy lets in only port 8086, from the given peers and the hook Jobs",
          ports_in == [8086] and all("ports" in rule for rule in ingress)
          and {"podSelector": {"matchLabels": {NAME_LABEL: "chronicle-scale", INSTANCE_LABEL: r.release}}}
          in ingress[0]["from"], json.dumps(ingress))
    ports_out = sorted({p["port"] for rule in egress for p in rule.get("ports", [])})
    check(f"{r.label}: NetworkPolicy lets out only DNS and NATS (no member-to-member traffic)",
          ports_out == [53, 4222] and all("ports" in rule for rule in egress), json.dumps(egress))
    check(f"{r.label}: NetworkPolicy applies to the node pods",
          np["spec"]["podSelector"]["matchLabels"] == {NAME_LABEL: "chronicle", INSTANCE_LABEL: r.release})


def test_values_and_schema() -> None:
    section("values.schema.json and the chart's own checks")
    with helm.Chart.load(str(CHART)) as chart:
        schema = chart.schema
        check("the chart ships values.schema.json", schema is not None)

        def leaves(values: dict, prefix: str = "") -> list[str]:
            out = []
            for k, v in values.items():
                path = f"{prefix}.{k}" if prefix else k
                out.append(path)
                if isinstance(v, dict) and v:
                    out += leaves(v, path)
            return out

        def deref(node: dict) -> dict:
            while "$ref" in node:
                target = schema
                for part in node["$ref"].lstrip("#/").split("/"):
                    target = target[part]
                node = target
            return node

        def covered(path: str) -> bool:
            node = schema
            for part in path.split("."):
                node = deref(node)
                props = node.get("properties", {})
                if part in props:
                    node = props[part]
                elif isinstance(node.get("additionalProperties"), dict):
                    node = deref(node["additionalProperties"])
                elif node.get("type") == "object" and "properties" not in node:
                    return True  # a free-form map (nodeAffinity, ...)
                else:
                    return False
            return True

        missing = [p for p in leaves(chart.values) if not covered(p)]
        check("the schema covers every value in values.yaml", not missing, str(missing))
        with open(CHART / "values.yaml") as f:
            text = f.read()
        uncommented = []
        lines = text.splitlines()
        for i, line in enumerate(lines):
            m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
            if m and (i == 0 or not lines[i - 1].strip().startswith("#")):
                # a key whose parent block is commented counts as documented by it only for
                # plain sub-keys of a described map (requests/limits and the like)
                if m.group(2) not in ("requests", "limits", "cpu", "memory"):
                    uncommented.append(m.group(2))
        check("every key in values.yaml has a comment above it", not uncommented, str(uncommented))

        rejected = {
            'replicas: "three"': {"replicas": "three"},
            "an unknown top-level key": {"replicaCount": 3},
            "an unknown nested key (persistence.sise)": {"persistence": {"sise": "10Gi"}},
            "podAntiAffinity.type sometimes": {"podAntiAffinity": {"type": "sometimes"}},
            "nats.enabled=false without nats.url": {"nats": {"enabled": False}},
            "a bad image digest": {"image": {"digest": "sha256:xyz"}},
            "a pod label that would change the selector": {"podLabels": {NAME_LABEL: "other"}},
            "a dashboard label that is one of the chart's": {"grafana": {"dashboard": {"labelKey": INSTANCE_LABEL}}},
            "a dashboard namespace that is no name": {"grafana": {"dashboard": {"namespace": "Monitoring!"}}},
        }
        for what, values in rejected.items():
            try:
                chart.validate_schema(values)
                check(f"the schema rejects {what}", False, "accepted")
            except helm.HelmValuesError as e:
                check(f"the schema rejects {what}", True)
                print(f"      ({str(e).strip().splitlines()[-1].strip()})")
        refused = {
            "replicas below initialMembers": {"replicas": 2},
            "tls.enabled without a certificate source": {"tls": {"enabled": True}},
            "a ServiceMonitor without a token Secret": {"serviceMonitor": {"enabled": True}},
            "an external NATS while the bundled one is on": {"nats": {"url": "nats://x:4222"}},
        }
        for what, values in refused.items():
            try:
                chart.render(values, name="chronicle", namespace="db")
                check(f"rendering refuses {what}", False, "rendered")
            except (helm.HelmRenderError, helm.HelmValuesError) as e:
                check(f"rendering refuses {what}", True)
                print(f"      ({str(e).strip().splitlines()[-1].strip()[:160]})")

    # initialMembers is not derived from replicas.
    for replicas, initial in ((7, 3), (5, 5)):
        r = Render(f"replicas={replicas},initialMembers={initial}", {"replicas": replicas, "initialMembers": initial},
                   "chronicle", "db")
        ids = ",".join(str(i) for i in range(1, initial + 1))
        check(f"replicas={replicas}, initialMembers={initial}: --initial-nodes {ids}",
              f"--initial-nodes {ids}" in r.script() and f"--initial-nodes {ids}," not in r.script())
        identity = r.one("ConfigMap", "chronicle-identity")["data"]
        check(f"replicas={replicas}, initialMembers={initial}: identity ConfigMap records initialMembers",
              identity["initialMembers"] == str(initial))

    r = Render("release metrics", None, "metrics", "obs")
    check("release 'metrics': objects named metrics-chronicle, pods instance=metrics",
          r.sts()["metadata"]["name"] == "metrics-chronicle"
          and r.sts()["spec"]["template"]["metadata"]["labels"][INSTANCE_LABEL] == "metrics")
    r = Render("auth off", {"auth": {"enabled": False}}, "chronicle", "db")
    words = node_args_for(r, 0)
    check("auth.enabled=false: --insecure, no --auth, cluster secret still mounted, NOTES warn",
          "--insecure" in words and "--auth" not in words and flag_value(words, "--cluster-secret-file")
          and "WARNING" in r.notes)
    r = Render("extraArgs quoting", {"extraArgs": ["--no-sync", "it's"]}, "chronicle", "db")
    words = node_args_for(r, 0)
    check("extraArgs are passed as single words, shell-quoted", "--no-sync" in words and "it's" in words, str(words))


# ---------------------------------------------------------------------------------------
# The Grafana dashboard (deploy/grafana/chronicle.json) and its ConfigMap


def exported_metrics() -> dict[str, str]:
    """Every metric a node's /metrics exports: the names Chronicle's Rust source gives the
    prometheus crate's constructors (name -> "histogram" or "other"), and the process
    collector's. chronicle_self_* series are written into the database, not exported, and
    are not constructor arguments."""
    ctor = re.compile(r"\b(HistogramOpts::new|Opts::new|IntGauge::new|IntCounter::new|Gauge::new|Counter::new"
                      r"|gauge|counter)\(\s*\"(chronicle_[a-z0-9_]+)\"")
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in ("target", ".git", "node_modules")]
        for name in filenames:
            if name.endswith(".rs"):
                text = (Path(dirpath) / name).read_text(errors="replace")
                for m in ctor.finditer(text):
                    found[m.group(2)] = "histogram" if m.group(1) == "HistogramOpts::new" else "other"
    for name in PROCESS_METRICS:
        found[name] = "other"
    return found


def series_names(metrics: dict[str, str]) -> set[str]:
    """The series names a query may select: a histogram only through its _bucket, _sum and
    _count series."""
    out = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            out |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            out.add(name)
    return out


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                   "unless", "atan2", "inf", "nan", "Inf", "NaN", "le"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a light tokenizer, enough for the dashboard's
    queries): label matchers, ranges, grouping lists and function calls are left out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(?!\s*\()", e):
        if m.group(1) not in PROMQL_KEYWORDS:
            names.add(m.group(1))
    return names


GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute(expr: str, variables: set[str]) -> tuple[str, set[str]]:
    """The expression with Grafana's interval variables replaced by durations and the
    dashboard's own variables by `.*`; also the variable names it used that the dashboard
    does not define."""
    unknown = set()

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name not in variables:
            unknown.add(name)
        return ".*"

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr), unknown


def dashboard_panels(panels: list[dict]) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    out = []
    for p in panels:
        out.append(p)
        out += dashboard_panels(p.get("panels", []))
    return out


def promtool_check_rules(text: str) -> tuple[bool, str]:
    """`promtool check rules` on a rules file's text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yml"
        path.write_text(text)
        p = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
        return p.returncode == 0, (p.stdout + p.stderr).strip()


def promtool_check(exprs: list[tuple[str, str]]) -> tuple[bool, str]:
    """Writes the expressions as recording rules and runs `promtool check rules` on them."""
    rules = [{"record": f"chronicle_dashboard:{re.sub(r'[^A-Za-z0-9_]', '_', where)}:{i}", "expr": expr}
             for i, (where, expr) in enumerate(exprs)]
    return promtool_check_rules(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))


def test_dashboard() -> None:
    section("Grafana dashboard deploy/grafana/chronicle.json")
    text = DASHBOARD.read_text()
    d = json.loads(text)
    check("dashboard: uid chronicle-overview, title Chronicle, schemaVersion >= 36",
          d.get("uid") == "chronicle-overview" and d.get("title") == "Chronicle"
          and isinstance(d.get("schemaVersion"), int) and d["schemaVersion"] >= 36,
          f"{d.get('uid')} {d.get('title')} {d.get('schemaVersion')}")
    check("dashboard: no fixed id (imports create their own)", d.get("id") is None, str(d.get("id")))
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    check("dashboard: a Prometheus data source variable `datasource`",
          ds.get("type") == "datasource" and ds.get("query") == "prometheus", json.dumps(ds))
    inst = variables.get("instance", {})
    inst_query = inst.get("definition") or inst.get("query")
    if isinstance(inst_query, dict):
        inst_query = inst_query.get("query")
    check("dashboard: an `instance` variable from label_values(chronicle_bus_connected..., instance)",
          inst.get("type") == "query" and re.fullmatch(r"label_values\(chronicle_bus_connected(\{[^}]*\})?, instance\)",
                                                        inst_query or "") is not None, str(inst_query))

    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    panels = dashboard_panels(d.get("panels", []))
    ids = [p.get("id") for p in panels]
    check(f"dashboard: {len(panels)} panels, ids unique", len(ids) == len(set(ids)) and None not in ids, str(ids))
    bad_layout, bad_ds, bad_targets, bad_type = [], [], [], []
    exprs: list[tuple[str, str]] = []  # (where, expression as written)
    for p in panels:
        title = p.get("title", "?")
        g = p.get("gridPos", {})
        if not (all(isinstance(g.get(k), int) for k in "hwxy") and g["w"] >= 1 and g["h"] >= 1
                and 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["y"] >= 0):
            bad_layout.append(title)
        if p.get("type") == "row":
            continue
        if p.get("type") not in ("timeseries", "stat"):
            bad_type.append(f"{title}: {p.get('type')}")
        if p.get("datasource") != want_ds:
            bad_ds.append(title)
        targets = p.get("targets", [])
        refs = [t.get("refId") for t in targets]
        if not targets or len(refs) != len(set(refs)) or not all(t.get("expr") for t in targets) \
                or not all("legendFormat" in t for t in targets) \
                or not all(t.get("datasource") == want_ds for t in targets):
            bad_targets.append(title)
        exprs += [(f"{p['id']}_{t.get('refId')}", t.get("expr", "")) for t in targets]
    check("dashboard: every panel has a gridPos inside 24 columns", not bad_layout, str(bad_layout))
    check("dashboard: panels are rows, timeseries or stat", not bad_type, str(bad_type))
    check("dashboard: every panel reads ${datasource}", not bad_ds, str(bad_ds))
    check("dashboard: every panel has targets with expr, legendFormat, ${datasource}, distinct refIds",
          not bad_targets, str(bad_targets))

    # Template variables' label_values() selectors are PromQL selectors too.
    for name, v in variables.items():
        q = v.get("definition") or v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q or "")
        if v.get("type") == "query":
            check(f"dashboard: variable {name} is label_values(<selector>, <label>)", m is not None, str(q))
            if m:
                exprs.append((f"var_{name}", m.group(1)))

    unbounded = [e for _, e in exprs if any(r != "$__rate_interval" for r in re.findall(r"\[([^\]]*)\]", e))]
    check("dashboard: every range is [$__rate_interval]", not unbounded, str(unbounded))
    unfiltered = [e for w, e in exprs if not w.startswith("var_")
                  and any('instance=~"$instance"' not in sel for sel in re.findall(r"\{[^}]*\}", e))]
    unfiltered += [e for w, e in exprs if not w.startswith("var_") and not re.search(r"\{[^}]*\}", e)]
    check('dashboard: every selector of the panels filters instance=~"$instance"', not unfiltered, str(unfiltered))

    substituted = []
    unknown_vars = set()
    for where, e in exprs:
        s, unknown = substitute(e, set(variables))
        unknown_vars |= unknown
        substituted.append((where, s))
    check("dashboard: expressions use only its variables and $__rate_interval", not unknown_vars, str(unknown_vars))

    metrics = exported_metrics()
    known = series_names(metrics)
    check(f"the Rust source defines the metrics ({len(metrics) - len(PROCESS_METRICS)} chronicle_* found)",
          "chronicle_bus_connected" in metrics and metrics.get("chronicle_query_duration_seconds") == "histogram"
          and len(metrics) > 60)
    used = set()
    unknown_names = {}
    for where, s in substituted:
        for n in promql_metric_names(s):
            used.add(n)
            if n not in known:
                unknown_names.setdefault(n, where)
    check(f"dashboard: all {len(used)} metric names it queries are exported by a node "
          "(histograms through _bucket/_sum/_count)", not unknown_names, str(unknown_names))
    # The name check has teeth: a misspelled name and a bare histogram name are caught.
    probe = promql_metric_names('sum by (le) (rate(chronicle_ingest_batch_write_second_bucket{instance=~".*"}[5m]))'
                                " / chronicle_query_duration_seconds")
    check("dashboard: the name check catches a misspelling and a bare histogram name",
          probe == {"chronicle_ingest_batch_write_second_bucket", "chronicle_query_duration_seconds"}
          and not probe & known, str(probe))

    if not os.access(PROMTOOL, os.X_OK):
        print("      (promtool not found: PromQL syntax not checked; scripts/test-all installs it)")
    else:
        ok, out = promtool_check(substituted)
        check(f"dashboard: promtool check rules parses all {len(substituted)} expressions", ok, out)
        bad, _ = promtool_check([("broken", "sum(rate(chronicle_bus_connected[5m])")])
        check("dashboard: promtool check rules refuses a broken expression (the check has teeth)", not bad)

    check("the chart's copy dashboards/chronicle.json equals deploy/grafana/chronicle.json "
          "(scripts/sync-dashboard copies it)",
          CHART_DASHBOARD.is_file() and CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes())

    # docs/observability.md's reference table names exactly the exported metrics.
    doc = OBSERVABILITY_DOC.read_text()
    documented = set(re.findall(r"(?m)^\| `((?:chronicle|process)_[a-z0-9_]+)`", doc))
    missing = sorted(set(metrics) - documented)
    extra = sorted(documented - set(metrics))
    check("docs/observability.md's table lists every exported metric", not missing, str(missing))
    check("docs/observability.md's table lists no metric a node does not export", not extra, str(extra))

    # Its example queries (```promql, one per line) and alerting rules (```yaml starting
    # with groups:) parse, and query only exported metrics.
    doc_exprs: list[tuple[str, str]] = []
    rule_files: list[str] = []
    for lang, body in re.findall(r"```(promql|yaml)\n(.*?)```", doc, re.S):
        if lang == "promql":
            doc_exprs += [(f"doc_{i}", line) for i, line in enumerate(body.splitlines())
                          if line.strip() and not line.lstrip().startswith("#")]
        elif body.startswith("groups:"):
            rule_files.append(body)
            for group in yaml.safe_load(body)["groups"]:
                doc_exprs += [(f"doc_rule_{r.get('alert') or r.get('record')}", str(r["expr"])) for r in group["rules"]]
    check(f"docs/observability.md: {len(doc_exprs)} example expressions and {len(rule_files)} rules file found",
          len(doc_exprs) >= 10 and len(rule_files) == 1)
    unknown_doc = {n: w for w, e in doc_exprs for n in promql_metric_names(substitute(e, set())[0]) if n not in known}
    check("docs/observability.md: its examples query only exported metrics", not unknown_doc, str(unknown_doc))
    if os.access(PROMTOOL, os.X_OK):
        ok, out = promtool_check([(w, substitute(e, set())[0]) for w, e in doc_exprs if not w.startswith("doc_rule_")])
        check("docs/observability.md: promtool parses its example queries", ok, out)
        for body in rule_files:
            ok, out = promtool_check_rules(body)
            check("docs/observability.md: promtool check rules accepts its alerting rules", ok, out)


def test_dashboard_configmap(defaults: Render | None) -> None:
    section("Grafana dashboard ConfigMap (grafana.dashboard.*)")
    source = json.loads(DASHBOARD.read_text())

    def dashboard_maps(r: Render) -> list[dict]:
        return [c for c in r.all("ConfigMap") if "chronicle.json" in (c.get("data") or {})]

    if defaults is not None:
        check("defaults: no dashboard ConfigMap", not dashboard_maps(defaults))
    r = Render("dashboard on", {"grafana": {"dashboard": {"enabled": True}}}, "chronicle", "db")
    validate_manifests(r)
    maps = dashboard_maps(r)
    check("grafana.dashboard.enabled: one ConfigMap chronicle-grafana-dashboard",
          [c["metadata"]["name"] for c in maps] == ["chronicle-grafana-dashboard"], str([c["metadata"] for c in maps]))
    if maps:
        cm = maps[0]
        labels = cm["metadata"].get("labels", {})
        check("dashboard ConfigMap: label grafana_dashboard=\"1\" (the sidecar's default) and the chart's labels",
              labels.get("grafana_dashboard") == "1" and labels.get(NAME_LABEL) == "chronicle"
              and labels.get(INSTANCE_LABEL) == "chronicle", str(labels))
        check("dashboard ConfigMap: in the release namespace, no annotations by default",
              cm["metadata"].get("namespace") == "db" and not cm["metadata"].get("annotations"), str(cm["metadata"]))
        data = cm["data"]["chronicle.json"]
        try:
            parsed = json.loads(data)
        except ValueError as e:
            parsed = f"not JSON: {e}"
        check("dashboard ConfigMap: chronicle.json parses and equals deploy/grafana/chronicle.json", parsed == source)
        check(f"dashboard ConfigMap: {len(data)} bytes, under ConfigMap's 1 MiB", len(data.encode()) < 1 << 20)
    check("grafana.dashboard.enabled: NOTES name the ConfigMap and its label",
          "chronicle-grafana-dashboard" in r.notes and "grafana_dashboard=1" in r.notes, r.notes[-400:])

    values = {"grafana": {"dashboard": {"enabled": True, "labelKey": "grafana.example/dashboard", "labelValue": "chronicle",
                                        "annotations": {"grafana_folder": "Databases"}, "namespace": "monitoring"}}}
    r = Render("dashboard custom", values, "chronicle", "db")
    maps = dashboard_maps(r)
    meta = maps[0]["metadata"] if len(maps) == 1 else {}
    check("grafana.dashboard.labelKey/labelValue/annotations/namespace reach the ConfigMap",
          meta.get("labels", {}).get("grafana.example/dashboard") == "chronicle"
          and "grafana_dashboard" not in meta.get("labels", {})
          and meta.get("annotations") == {"grafana_folder": "Databases"} and meta.get("namespace") == "monitoring",
          str(meta))
    report = helm.lint(str(CHART), values, strict=True, kube_version="v" + KUBE_VERSION, with_subcharts=True)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    check("lint with the dashboard on: no warning or error", not bad, json.dumps(bad))


# ---------------------------------------------------------------------------------------
# Flags against a real binary (optional)


def find_binary() -> str | None:
    candidates = [os.environ.get("CHRONICLE_BIN", "")]
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    candidates += [f"{target}/debug/chronicle", f"{target}/release/chronicle"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return None


def test_flags_against_binary(renders: list[Render]) -> None:
    section("rendered flags against `chronicle --help`")
    binary = find_binary()
    if not binary:
        print("      (no chronicle binary: set CHRONICLE_BIN or build it; skipped)")
        return
    print(f"      binary: {binary}")
    serve_help = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", serve_help))
    for r in renders:
        flags = set()
        for ordinal in range(r.sts()["spec"]["replicas"]):
            flags |= {w for w in node_args_for(r, ordinal) if w.startswith("--")}
        flags -= {"--no-sync"}  # extraArgs examples are users' own
        unknown = sorted(flags - known)
        check(f"{r.label}: every `chronicle serve` flag the chart passes exists", not unknown, str(unknown))
    p = subprocess.run([binary, "cluster", "scale", "--help"], capture_output=True, text=True)
    if p.returncode != 0:
        print("      (`chronicle cluster scale` is not in this binary yet: hook flags not checked)")
        return
    scale_known = set(re.findall(r"(--[a-z][a-z0-9-]*)", p.stdout))
    for r in renders:
        for job in r.all("Job"):
            flags = {w for w in job["spec"]["template"]["spec"]["containers"][0]["command"] if w.startswith("--") and w != "--"}
            unknown = sorted(flags - scale_known)
            check(f"{r.label}: Job {job['metadata']['name']} flags exist in `cluster scale`", not unknown, str(unknown))


# ---------------------------------------------------------------------------------------
# The Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out = []
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def test_dockerfile() -> None:
    section("deploy/Dockerfile (parsed and checked here: no container engine, no hadolint)")
    text = DOCKERFILE.read_text()
    check("no BuildKit-only syntax (# syntax=, RUN --mount, heredocs, COPY --link/--chmod)",
          not re.search(r"(?m)^#\s*syntax=|--mount=|<<-?\s*['\"]?[A-Z]+|--link\b|--chmod", text))
    ins = dockerfile_instructions(text)
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for word, rest in ins:
        if word == "FROM":
            stages.append([(word, rest)])
        elif stages:
            stages[-1].append((word, rest))
        if word == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')

    def expand(s: str) -> str:
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: args.get(m.group(1), m.group(0)), s)

    names = set()
    for stage in stages:
        image = expand(stage[0][1].split()[0])
        alias = stage[0][1].split()[-1] if " AS " in stage[0][1].upper() else None
        if image in names:
            continue  # FROM an earlier stage
        check(f"FROM {image.split('@')[0]} pinned by digest", re.fullmatch(r"[^@\s]+@sha256:[0-9a-f]{64}", image) is not None,
              image)
        if alias:
            names.add(alias)
    builder = expand(stages[0][0][1].split()[0])
    cargo = (ROOT / "Cargo.toml").read_text()
    rust_version = re.search(r'(?m)^rust-version\s*=\s*"([0-9.]+)"', cargo).group(1)
    check(f"builder is the official Rust {rust_version} image on Debian bookworm",
          re.match(rf"rust:{re.escape(rust_version)}(\.[0-9]+)?-bookworm@", builder) is not None, builder)
    runtime = expand(stages[-1][0][1].split()[0])
    check("runtime is debian bookworm-slim", runtime.startswith("debian:bookworm-slim@"), runtime)

    runs = " ".join(rest for word, rest in ins if word == "RUN")
    build = next((rest for word, rest in stages[0] if word == "RUN" and "cargo build" in rest), "")
    check("cargo build --release --locked of the chronicle binary",
          all(f in build.split() for f in ("--release", "--locked")) and "--bin chronicle" in build, build)
    check("libclang for RocksDB's bindings in the builder", "libclang-dev" in build or "libclang-dev" in
          " ".join(rest for word, rest in stages[0] if word == "RUN"))
    check("apt installs without recommends and cleans its lists",
          all("--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists/*" in rest
              for word, rest in ins if word == "RUN" and "apt-get install" in rest))
    final = stages[-1]
    final_runs = " ".join(rest for word, rest in final if word == "RUN")
    for pkg in ("tini", "ca-certificates"):
        check(f"runtime installs {pkg}", re.search(rf"\b{pkg}\b", final_runs) is not None)
    users = [rest for word, rest in final if word == "USER"]
    user = users[-1].split(":")[0] if users else ""
    check(f"final stage USER {users[-1] if users else None} is not root",
          bool(user) and user not in ("0", "root") and (not user.isdigit() or int(user) >= 1000))
    hc = [rest for word, rest in final if word == "HEALTHCHECK"]
    check("HEALTHCHECK on /health/live", len(hc) == 1 and "/health/live" in hc[0] and "NONE" not in hc[0].upper(), str(hc))
    entry = [rest for word, rest in final if word == "ENTRYPOINT"]
    check("ENTRYPOINT is tini (PID 1 forwards signals, reaps zombies)",
          len(entry) == 1 and json.loads(entry[0])[:2] == ["/usr/bin/tini", "--"], str(entry))
    check("EXPOSE 8086", any(word == "EXPOSE" and "8086" in rest.split() for word, rest in final))
    check("data volume /var/lib/chronicle", any(word == "VOLUME" and "/var/lib/chronicle" in rest for word, rest in final))
    envs = " ".join(rest for word, rest in final if word == "ENV")
    check("image defaults the data dir and a pod-reachable address",
          "CHRONICLE_DATA_DIR=/var/lib/chronicle" in envs and "CHRONICLE_HTTP_ADDR=0.0.0.0:8086" in envs)

    # No secrets in layers.
    secretish = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIAL", re.I)
    for word, rest in ins:
        if word in ("ENV", "ARG"):
            for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)(?:=(\S*))?", rest):
                if secretish.search(m.group(1)):
                    check(f"{word} {m.group(1)} holds no value", not m.group(2), rest)
        if word in ("COPY", "ADD"):
            check(f"{word} {rest} copies no key, certificate or credential file",
                  not re.search(r"\.(pem|key|crt|p12|pfx|creds|seed)\b|id_rsa|id_ed25519|\.netrc|\.npmrc|\.pypirc", rest))
        if word == "ADD":
            check(f"ADD {rest} fetches no URL", "://" not in rest)
    check("no credential written in a RUN", not re.search(r"(?i)(password|token|secret)\s*=\s*\S", runs))

    ignore = DOCKERIGNORE.read_text().split()
    for entry in (".git", "target", "data"):
        check(f".dockerignore keeps {entry}/ out of the build context", entry in ignore)
    check(".dockerignore keeps Cargo.lock and the sources in", "Cargo.lock" not in ignore and "src" not in ignore)

    # The HEALTHCHECK command itself, against a stand-in /health/live on loopback.
    if shutil.which("curl") and hc:
        cmd = json.loads(re.sub(r"^(--\S+\s+)*CMD\s+", "", hc[0]))
        check("HEALTHCHECK is an exec-form /bin/sh -c command", cmd[:2] == ["/bin/sh", "-c"], str(cmd))

        class Live(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200 if self.path == "/health/live" else 404)
                self.end_headers()

            def log_message(self, *a):
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Live)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        env = {"PATH": os.environ.get("PATH", ""), "CHRONICLE_HTTP_ADDR": f"0.0.0.0:{port}"}
        ok = subprocess.run(cmd, env=env, capture_output=True, timeout=20).returncode
        server.shutdown()
        server.server_close()
        check("HEALTHCHECK passes when /health/live answers 200", ok == 0)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            free = s.getsockname()[1]
        env["CHRONICLE_HTTP_ADDR"] = f"0.0.0.0:{free}"
        down = subprocess.run(cmd, env=env, capture_output=True, timeout=20).returncode
        check("HEALTHCHECK fails when nothing answers", down != 0)
    else:
        print("      (curl not found: HEALTHCHECK command not run)")


# ---------------------------------------------------------------------------------------


def guarded(name: str, fn, *args, **kwargs) -> None:
    """Runs one group of checks; an exception in it counts as one failed check."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported as a failure, the other groups still run
        check(f"{name} ran to the end", False, f"{type(e).__name__}: {e}")


def main() -> int:
    started = time.monotonic()
    guarded("lint", test_lint)
    renders = []
    for label, values, namespace in (
        ("defaults", None, "db"),
        ("production.yaml", load_example("production.yaml"), "prod"),
        ("scale-out.yaml", load_example("scale-out.yaml"), "db"),
    ):
        try:
            renders.append(Render(label, values, "chronicle", namespace))
            check(f"render {label}", True)
        except Exception as e:  # noqa: BLE001
            check(f"render {label}", False, f"{type(e).__name__}: {e}")
    by_label = {r.label: r for r in renders}
    for r in renders:
        guarded(f"validate {r.label}", validate_manifests, r)
    expected = {"defaults": (3, 3), "production.yaml": (3, 3), "scale-out.yaml": (5, 3)}
    for r in renders:
        replicas, initial = expected[r.label]
        guarded(f"StatefulSet {r.label}", test_statefulset, r, replicas=replicas, initial=initial)
        guarded(f"secrets {r.label}", test_secrets, r)
        guarded(f"objects {r.label}", test_other_objects, r)
    if "defaults" in by_label:
        guarded("bundled NATS", test_nats_bundled, by_label["defaults"])
    if "production.yaml" in by_label:
        guarded("production", test_production, by_label["production.yaml"])
    guarded("values and schema", test_values_and_schema)
    guarded("dashboard", test_dashboard)
    guarded("dashboard ConfigMap", test_dashboard_configmap, by_label.get("defaults"))
    guarded("flags", test_flags_against_binary, renders)
    guarded("Dockerfile", test_dockerfile)
    print(f"\ntook {time.monotonic() - started:.1f} s")
    if FAILURES:
        print("failed: " + "; ".join(FAILURES))
    print(f"{PASSED} passed, {FAILED} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())

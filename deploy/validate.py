#!/usr/bin/env python3
"""Checks of deploy/ that need no cluster, no Docker engine and no network (run by .ci/run).

    python3 deploy/validate.py kubernetes   # render every kustomization; validate each object
                                            # strictly against the newest Kubernetes schemas that
                                            # kubernetes-validate ships; check the CRD objects'
                                            # structure and that the pieces fit together
    python3 deploy/validate.py monitoring   # promtool check/test rules, the dashboard's PromQL,
                                            # prometheusrule.yaml in step with alerts.yaml
    python3 deploy/validate.py systemd      # systemd-analyze verify and security (offline)
    python3 deploy/validate.py sync         # rewrite monitoring/prometheusrule.yaml from alerts.yaml

Metric names are checked elsewhere, against a live scrape: tests/it/deploy_metrics.rs.
Needs PyYAML (a dependency of kubernetes-validate) and Python 3.11+ (tomllib); `bash .ci/setup`
installs it and the tools. A missing promtool or systemd-analyze fails its check, unless
PATLESS_SKIP_CLIENTS (comma-separated) names it, or says `all`: then its checks are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
KUBERNETES = DEPLOY / "kubernetes"
MONITORING = DEPLOY / "monitoring"
SYSTEMD_UNIT = DEPLOY / "systemd" / "patless.service"
KUSTOMIZATIONS = sorted(KUBERNETES.glob("*/kustomization.yaml")) + [MONITORING / "kustomization.yaml"]
# Custom resources of the Prometheus Operator: not in kubernetes-validate's schemas.
CRDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# `systemd-analyze security` exposure (0 = locked down, 10 = none); the unit scores 1.2.
SYSTEMD_EXPOSURE_MAX = 2.0

failures: list[str] = []


def fail(where: str, what: str) -> None:
    failures.append(f"{where}: {what}")
    print(f"  FAIL {where}: {what}")


def ok(what: str) -> None:
    print(f"  ok   {what}")


def tool(name: str, install: str) -> str | None:
    """The path of the program `name`; None when it is missing, after failing the check unless
    PATLESS_SKIP_CLIENTS names it (the same rule as the tests' real clients)."""
    path = shutil.which(name)
    if path:
        return path
    skip = [n.strip() for n in os.environ.get("PATLESS_SKIP_CLIENTS", "").split(",")]
    if name in skip or "all" in skip:
        print(f"  SKIPPED: {name} is not installed, and its checks are skipped (PATLESS_SKIP_CLIENTS)")
    else:
        fail(name, f"not installed: `bash .ci/setup` installs it ({install}); or skip its checks with PATLESS_SKIP_CLIENTS={name}")
    return None


def rel(p: Path) -> str:
    return str(p.relative_to(DEPLOY.parent))


def finish(step: str) -> int:
    if failures:
        print(f"{step}: {len(failures)} problem(s)")
        return 1
    print(f"{step}: all checks passed")
    return 0


# --- Kubernetes ---------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def generator_files(gen: dict) -> list[str]:
    # `files:` entries are `path` or `key=path`.
    return [f.split("=", 1)[-1] for f in gen.get("files", [])]


def render(kustomization: Path) -> list[dict] | None:
    """The objects a kustomization produces, or None when it could not be rendered."""
    where = rel(kustomization)
    k = yaml.safe_load(kustomization.read_text())
    directory = kustomization.parent
    listed = list(k.get("resources", []))
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        listed += generator_files(gen)
    missing = [f for f in listed if not (directory / f).is_file()]
    if missing:
        fail(where, f"lists files that do not exist: {missing}")
        return None
    ok(f"{where}: every listed file exists ({len(listed)})")
    in_dir = {p.name for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"}
    unlisted = sorted(in_dir - set(listed) - {"alerts.yaml", "alerts.test.yaml"})
    if unlisted:
        fail(where, f"manifests in the directory but not in the kustomization: {unlisted}")
    cmd = kustomize_command()
    if cmd is None:
        print(f"  note {where}: neither kubectl nor kustomize is installed; validating the listed files one by one (generated ConfigMaps not validated)")
        docs = []
        for f in k.get("resources", []):
            docs += [d for d in yaml.safe_load_all((directory / f).read_text()) if d]
        return docs
    out = subprocess.run(cmd + [str(directory)], capture_output=True, text=True)
    if out.returncode != 0:
        fail(where, f"{' '.join(cmd)} failed: {out.stderr.strip()}")
        return None
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    ok(f"{where}: rendered with `{' '.join(cmd)}` ({len(docs)} objects)")
    return docs


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector) if selector else {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def duration_secs(text, default: float) -> float:
    if text is None:
        return default
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text).strip())
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def listen_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def is_loopback(addr: str) -> bool:
    host = addr.rsplit(":", 1)[0].strip("[]")
    return addr.startswith("unix:") or host in ("localhost", "::1") or host.startswith("127.")


def check_patless_pod(where: str, deploy: dict, objects: list[dict]) -> None:
    """The pod that runs patless: its config, probes, ports, identity and hardening fit together."""
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"].get("labels", {})
    sidecars = [c for c in pod.get("initContainers", []) if c["name"] == "patless"]
    mains = [c for c in pod.get("containers", []) if c["name"] == "patless"]
    if not sidecars and not mains:
        fail(where, "no container named patless")
        return
    c = (sidecars or mains)[0]
    if sidecars and c.get("restartPolicy") != "Always":
        fail(where, "patless is an init container without restartPolicy: Always (not a native sidecar)")
    args = c.get("args", [])
    if "--config" not in args:
        fail(where, "patless is started without --config")
        return
    config_path = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount = mounts.get(os.path.dirname(config_path))
    if not mount or "configMap" not in volumes.get(mount["name"], {}):
        fail(where, f"{config_path} is not on a ConfigMap volume mount")
        return
    if "subPath" in mount:
        fail(where, "the config is mounted with subPath: the kubelet never updates it (no reload)")
    cm_name = volumes[mount["name"]]["configMap"]["name"]
    cms = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name]
    key = os.path.basename(config_path)
    if not cms or key not in cms[0].get("data", {}):
        fail(where, f"ConfigMap {cm_name} with key {key} is not in the rendered output")
        return
    config = tomllib.loads(cms[0]["data"][key])
    server = config.get("server", {})
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    admin = server.get("admin_listen", "127.0.0.1:7071")
    if is_loopback(admin):
        fail(where, f"admin_listen {admin} is loopback: the kubelet's probes cannot reach it")
    elif ports.get("admin") != listen_port(admin):
        fail(where, f"container port `admin` {ports.get('admin')} is not admin_listen's port {listen_port(admin)}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = c.get(probe, {}).get("httpGet", {})
        if http.get("path") != path or http.get("port") not in ("admin", ports.get("admin")):
            fail(where, f"{probe} is not GET {path} on the admin port")
    listen = server.get("listen", "127.0.0.1:7070")
    if not is_loopback(listen):
        token = server.get("inbound_token")
        if not token and not server.get("allow_unauthenticated_clients"):
            fail(where, f"listen {listen} is not loopback and there is no inbound_token")
        if ports.get("proxy") != listen_port(listen):
            fail(where, f"container port `proxy` {ports.get('proxy')} is not listen's port {listen_port(listen)}")
        if isinstance(token, dict) and "file" in token:
            d = os.path.dirname(token["file"])
            m = mounts.get(d)
            if not m or "secret" not in volumes.get(m["name"], {}):
                fail(where, f"inbound_token file {token['file']} is not on a Secret volume mount")
            else:
                items = {i["path"] for i in volumes[m["name"]]["secret"].get("items", [])}
                if items and os.path.basename(token["file"]) not in items:
                    fail(where, f"the Secret volume does not provide {os.path.basename(token['file'])}")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = duration_secs(server.get("shutdown_delay"), 5) + duration_secs(server.get("shutdown_grace"), 30)
    if grace <= drain:
        fail(where, f"terminationGracePeriodSeconds {grace} is not above shutdown_delay + shutdown_grace = {drain:g}")

    kinds = {p.get("kind") for p in config.get("profiles", {}).values()}
    if "workload_identity" in kinds:
        if labels.get("azure.workload.identity/use") != "true":
            fail(where, 'a workload_identity profile, but no pod label azure.workload.identity/use: "true"')
        sa = pod.get("serviceAccountName")
        sas = [o for o in objects if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == sa]
        if not sas or not sas[0]["metadata"].get("annotations", {}).get("azure.workload.identity/client-id"):
            fail(where, f"ServiceAccount {sa} with annotation azure.workload.identity/client-id is not in the output")
        skipped = deploy["spec"]["template"]["metadata"].get("annotations", {}).get("azure.workload.identity/skip-containers", "")
        if "patless" in [s.strip() for s in skipped.split(";")]:
            fail(where, "azure.workload.identity/skip-containers names patless: it would get no identity")
    if any(p.get("kind") in ("device_code", "interactive_browser") for p in config.get("profiles", {}).values()):
        state = server.get("state_dir")
        if not state or state not in mounts:
            fail(where, "a device_code/interactive_browser profile needs state_dir on a writable volume")
    ok(f"{where}: patless config, ports, probes, drain time and identity fit together")


def check_hardening(where: str, deploy: dict) -> None:
    pod = deploy["spec"]["template"]["spec"]
    psc = pod.get("securityContext", {})
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext", {})
        name = f"{where} container {c['name']}"
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            fail(name, "runAsNonRoot is not set")
        if sc.get("readOnlyRootFilesystem") is not True:
            fail(name, "readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(name, "allowPrivilegeEscalation is not false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            fail(name, "capabilities do not drop ALL")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(name, "seccompProfile is not RuntimeDefault")
        res = c.get("resources", {})
        if not res.get("requests") or "memory" not in res.get("limits", {}):
            fail(name, "resources need requests and a memory limit")
    ok(f"{where}: every container is non-root, read-only, unprivileged, seccomp'd and sized")


def pods_selected(selector: dict, objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "Deployment" and selects(selector, o["spec"]["template"]["metadata"].get("labels", {}))]


def container_ports(deploy: dict) -> dict:
    pod = deploy["spec"]["template"]["spec"]
    return {p.get("name"): p["containerPort"] for c in pod.get("initContainers", []) + pod.get("containers", []) for p in c.get("ports", [])}


def check_crd(where: str, o: dict, objects: list[dict]) -> None:
    """Structure of the Prometheus Operator objects (no CRD schema is at hand offline)."""
    kind, name = o["kind"], o.get("metadata", {}).get("name")
    where = f"{where} {kind}/{name}"
    if not name:
        fail(where, "metadata.name is missing")
        return
    spec = o.get("spec")
    if not isinstance(spec, dict):
        fail(where, "spec is missing")
        return
    if kind == "PodMonitor":
        known = {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels", "sampleLimit"}
        if set(spec) - known:
            fail(where, f"unexpected spec keys {sorted(set(spec) - known)}")
        pods = pods_selected(spec.get("selector", {}), objects)
        if not pods:
            fail(where, "spec.selector matches no Deployment's pods in this kustomization")
        eps = spec.get("podMetricsEndpoints") or []
        if not eps:
            fail(where, "no podMetricsEndpoints")
        for ep in eps:
            known = {"port", "portNumber", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels", "authorization"}
            if set(ep) - known:
                fail(where, f"unexpected endpoint keys {sorted(set(ep) - known)}")
            # SafeAuthorization: a type (Bearer by default) and a Secret key for the credentials.
            auth = ep.get("authorization")
            if auth is not None:
                creds = auth.get("credentials") or {}
                if set(auth) - {"type", "credentials"} or auth.get("type", "Bearer") != "Bearer":
                    fail(where, f"authorization must be {{type: Bearer, credentials: {{name, key}}}}, got {auth}")
                if not (isinstance(creds, dict) and creds.get("name") and creds.get("key")):
                    fail(where, "authorization.credentials needs the Secret's name and key")
            if ep.get("path", "/metrics") != "/metrics":
                fail(where, f"path {ep.get('path')} is not /metrics")
            for d in pods:
                if ep.get("port") not in container_ports(d):
                    fail(where, f"port {ep.get('port')!r} is not a named container port of {d['metadata']['name']}")
    elif kind == "ServiceMonitor":
        services = [s for s in objects if s["kind"] == "Service" and selects(spec.get("selector", {}), s["metadata"].get("labels", {}))]
        if not services:
            fail(where, "spec.selector matches no Service in this kustomization")
        for ep in spec.get("endpoints") or [{}]:
            for s in services:
                if ep.get("port") not in {p.get("name") for p in s["spec"]["ports"]}:
                    fail(where, f"port {ep.get('port')!r} is not a port name of Service {s['metadata']['name']}")
    elif kind == "PrometheusRule":
        alerts = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
        if spec.get("groups") != alerts["groups"]:
            fail(where, "spec.groups differ from monitoring/alerts.yaml: run python3 deploy/validate.py sync")
        for g in spec.get("groups", []):
            for r in g.get("rules", []):
                if not r.get("expr") or not (r.get("alert") or r.get("record")):
                    fail(where, f"rule {r} needs expr and alert (or record)")
    ok(f"{where}: structure checked (not against the CRD's schema)")


def check_fit(where: str, objects: list[dict]) -> None:
    for o in objects:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind == "Deployment":
            spec = o["spec"]
            if not selects(spec["selector"], spec["template"]["metadata"].get("labels", {})):
                fail(f"{where} Deployment/{name}", "selector does not match the pod template's labels")
            check_hardening(f"{where} Deployment/{name}", o)
            check_patless_pod(f"{where} Deployment/{name}", o, objects)
        elif kind == "Service":
            pods = pods_selected(o["spec"].get("selector", {}), objects)
            if not pods:
                fail(f"{where} Service/{name}", "selector matches no Deployment's pods")
            for p in o["spec"]["ports"]:
                for d in pods:
                    t = p.get("targetPort", p["port"])
                    if t not in container_ports(d) and t not in container_ports(d).values():
                        fail(f"{where} Service/{name}", f"targetPort {t!r} is not a container port of {d['metadata']['name']}")
        elif kind in ("PodDisruptionBudget",):
            if not pods_selected(o["spec"]["selector"], objects):
                fail(f"{where} {kind}/{name}", "selector matches no Deployment's pods")
        elif kind == "NetworkPolicy":
            pods = pods_selected(o["spec"]["podSelector"], objects)
            if not pods:
                fail(f"{where} NetworkPolicy/{name}", "podSelector matches no Deployment's pods")
            for rule in o["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    for d in pods:
                        if isinstance(p.get("port"), str) and p["port"] not in container_ports(d):
                            fail(f"{where} NetworkPolicy/{name}", f"port {p['port']!r} is not a named container port")
        elif kind == "ConfigMap":
            for k, v in o.get("data", {}).items():
                if k.endswith(".json"):
                    try:
                        json.loads(v)
                    except ValueError as e:
                        fail(f"{where} ConfigMap/{name}", f"{k} is not JSON: {e}")


def cmd_kubernetes() -> int:
    import kubernetes_validate  # noqa: PLC0415 (installed by .ci/run)

    version = kubernetes_validate.latest_version()
    print(f"kubernetes-validate {kubernetes_validate.__version__}, schemas of Kubernetes {version} (the newest it ships), strict")
    for k in KUSTOMIZATIONS:
        docs = render(k)
        if docs is None:
            continue
        where = rel(k.parent)
        for o in docs:
            key = (o.get("apiVersion"), o.get("kind"))
            label = f"{where} {o.get('kind')}/{o.get('metadata', {}).get('name')}"
            if key in CRDS:
                check_crd(where, o, docs)
                continue
            try:
                kubernetes_validate.validate(o, version, strict=True)
                ok(f"{label}: valid (Kubernetes {version}, strict)")
            except kubernetes_validate.SchemaNotFoundError:
                fail(label, f"no schema for {key[0]} {key[1]} in Kubernetes {version}: a typo, or a removed API")
            except kubernetes_validate.ValidationError as e:
                fail(label, f"invalid: {e.message} (at {'.'.join(str(p) for p in e.path)})")
        check_fit(where, docs)
    return finish("kubernetes manifests")


# --- monitoring ---------------------------------------------------------------------------------


def prometheusrule_text() -> str:
    alerts = yaml.safe_load((MONITORING / "alerts.yaml").read_text())

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, s):
        style = "|" if "\n" in s else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)

    Dumper.add_representer(str, text)
    obj = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "patless",
            # kube-prometheus-stack's Prometheus selects rules labelled with its release name.
            "labels": {"app.kubernetes.io/name": "patless", "release": "prometheus"},
        },
        "spec": {"groups": alerts["groups"]},
    }
    body = yaml.dump(obj, Dumper=Dumper, sort_keys=False, width=100000, allow_unicode=True)
    return (
        "# GENERATED from alerts.yaml by `python3 deploy/validate.py sync`: edit alerts.yaml, then sync.\n"
        "# The same rules for the Prometheus Operator (kubectl apply -k deploy/monitoring).\n" + body
    )


def dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "expr" and isinstance(x, str):
                    exprs.append(x)
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(dashboard)
    return exprs


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts, so that promtool can parse it."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def cmd_monitoring() -> int:
    rule = MONITORING / "prometheusrule.yaml"
    if not rule.is_file() or rule.read_text() != prometheusrule_text():
        fail(rel(rule), "not in step with alerts.yaml: run python3 deploy/validate.py sync")
    else:
        ok(f"{rel(rule)}: in step with alerts.yaml")

    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    where = rel(MONITORING / "grafana-dashboard.json")
    panels = [p for p in dashboard.get("panels", []) if p.get("type") != "row"]
    if not dashboard.get("uid") or not panels:
        fail(where, "needs a uid and panels")
    ids = [p.get("id") for p in dashboard.get("panels", [])]
    if len(ids) != len(set(ids)):
        fail(where, "panel ids repeat")
    for p in panels:
        if not any(t.get("expr") for t in p.get("targets", [])):
            fail(where, f"panel {p.get('title')!r} has no query")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            fail(where, f"panel {p.get('title')!r} does not use the $datasource variable")
    exprs = dashboard_exprs(dashboard)
    ok(f"{where}: {len(panels)} panels, {len(exprs)} queries")

    promtool = tool("promtool", "unpacked from Debian's prometheus package")
    if not promtool:
        return finish("monitoring")
    version = subprocess.run([promtool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"  ({version})")
    for args in (["check", "rules", str(MONITORING / "alerts.yaml")], ["test", "rules", str(MONITORING / "alerts.test.yaml")]):
        out = subprocess.run([promtool] + args, capture_output=True, text=True, cwd=MONITORING)
        if out.returncode != 0:
            fail(f"promtool {' '.join(args[:2])}", (out.stdout + out.stderr).strip())
        else:
            ok(f"promtool {' '.join(args[:2])} {rel(Path(args[2]))}")
    # The dashboard's queries as recording rules: promtool parses every one of them.
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(exprs)]}]}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(rules, f)
    try:
        out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        fail(where, "a query does not parse: " + (out.stdout + out.stderr).strip())
    else:
        ok(f"{where}: every query parses (promtool, Grafana variables substituted)")
    return finish("monitoring")


def cmd_sync() -> int:
    (MONITORING / "prometheusrule.yaml").write_text(prometheusrule_text())
    print(f"wrote {rel(MONITORING / 'prometheusrule.yaml')}")
    return 0


# --- systemd ------------------------------------------------------------------------------------


def cmd_systemd() -> int:
    where = rel(SYSTEMD_UNIT)
    text = SYSTEMD_UNIT.read_text()
    analyze = tool("systemd-analyze", "apt-get install systemd")
    if analyze:
        systemd_analyze(analyze, where, text)
    for key in ("DynamicUser=yes", "StateDirectory=", "ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                "PrivateTmp=yes", "RestrictAddressFamilies=", "CapabilityBoundingSet=\n", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure"):
        if key not in text:
            fail(where, f"missing {key.strip()}")
    return finish("systemd unit")


def systemd_analyze(analyze: str, where: str, text: str) -> None:
    """`systemd-analyze verify` and `security --offline` on a copy of the unit `text`."""
    print(subprocess.run([analyze, "--version"], capture_output=True, text=True).stdout.splitlines()[0])
    with tempfile.TemporaryDirectory() as d:
        # verify wants ExecStart's program to exist: a stand-in at the same place in a copy.
        stub = Path(d) / "patless"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        unit = Path(d) / "patless.service"
        unit.write_text(text.replace("/usr/local/bin/patless", str(stub)))
        out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        said = (out.stdout + out.stderr).strip()
        # verify exits 0 on unknown keys and bad values, only saying so: any output fails.
        if out.returncode != 0 or said:
            fail(where, f"systemd-analyze verify: {said.replace(d + '/', '')}")
        else:
            ok(f"{where}: systemd-analyze verify says nothing")
        # --threshold counts in tenths of the printed level.
        threshold = f"--threshold={round(SYSTEMD_EXPOSURE_MAX * 10)}"
        out = subprocess.run([analyze, "security", "--offline=yes", threshold, "--no-pager", str(unit)], capture_output=True, text=True)
        level = re.search(r"Overall exposure level for \S+: ([\d.]+)", out.stdout)
        if out.returncode != 0 or not level:
            fail(where, f"systemd-analyze security: exposure {level.group(1) if level else '?'} above {SYSTEMD_EXPOSURE_MAX}\n{out.stdout[-2000:]}{out.stderr}")
        else:
            ok(f"{where}: systemd-analyze security exposure {level.group(1)} (at most {SYSTEMD_EXPOSURE_MAX})")


def main() -> int:
    commands = {"kubernetes": cmd_kubernetes, "monitoring": cmd_monitoring, "systemd": cmd_systemd, "sync": cmd_sync}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]]()


if __name__ == "__main__":
    sys.exit(main())

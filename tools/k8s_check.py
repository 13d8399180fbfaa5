#!/usr/bin/env python3
"""Renders every kustomize overlay under k8s/overlays, validates it against the Kubernetes
schemas (kubernetes-validate, strict), and checks Portico's own invariants:

- every container has CPU and memory requests and limits, and (outside Jobs) liveness and
  readiness probes; every probe port is one of the container's ports;
- the gRPC services are probed with the gRPC health protocol (liveness on the `liveness` name the
  code serves), the edge over HTTP on routes the edge serves, with a startup probe;
- Portico containers run the one image, a real subcommand, non-root with a read-only root
  filesystem and no capabilities; the drain fits in terminationGracePeriodSeconds;
- every variable set in the ConfigMap, the Secrets or a container's env is one the code reads (or
  a provider key named by `api_key_env`); listen addresses match container ports; service URLs
  match Services; Services, HPAs and PDBs point at something that exists.

Needs kubectl (for `kubectl kustomize`) and `pip install kubernetes-validate pyyaml`.
Usage: tools/k8s_check.py [kubernetes-version]   (default 1.32.0)
"""
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = {"auth": 50051, "content": 50052, "chat-gateway": 50053, "ratelimit": 50054}
SUBCOMMANDS = {"serve", "edge", "auth", "content", "chat-gateway", "ratelimit", "migrate", "keys"}
def code_variables() -> set:
    text = (ROOT / "shared/config/src/settings.rs").read_text()
    return set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', text))


def liveness_name() -> str:
    text = (ROOT / "shared/grpc/src/lib.rs").read_text()
    return re.search(r'pub const LIVENESS: &str = "([^"]+)"', text).group(1)


def edge_get_routes() -> set:
    text = (ROOT / "edge/src/routes.rs").read_text()
    return set(re.findall(r'get\(\s*"([^"]+)"', text))


def provider_key_variables(texts) -> set:
    """The variables that providers files name with `api_key_env` (the provider keys)."""
    names = set()
    for text in texts:
        names |= set(re.findall(r"api_key_env:\s*([A-Z][A-Z0-9_]+)", text))
    return names


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value.strip())
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60}[unit]


class Checker:
    def __init__(self, overlay: str, docs: list):
        self.overlay = overlay
        self.docs = docs
        self.problems = []

    def fail(self, message: str):
        self.problems.append(f"{self.overlay}: {message}")

    def of_kind(self, kind: str):
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind: str, name: str):
        return next((d for d in self.of_kind(kind) if d["metadata"]["name"] == name), None)

    def config(self) -> dict:
        maps = [d for d in self.of_kind("ConfigMap") if d["metadata"]["name"].startswith("portico-config")]
        return maps[0]["data"] if maps else {}

    def provider_key_variables(self) -> set:
        return provider_key_variables(
            text for cm in self.of_kind("ConfigMap") for text in (cm.get("data") or {}).values())

    def check(self):
        variables = code_variables() | self.provider_key_variables()
        config = self.config()
        if not config:
            self.fail("no portico-config ConfigMap")
        for key in config:
            if key not in variables:
                self.fail(f"ConfigMap sets {key}, which Portico does not read")
        for secret in self.of_kind("Secret"):
            if secret["metadata"]["name"].startswith("portico-secrets"):
                for key in list((secret.get("data") or {})) + list((secret.get("stringData") or {})):
                    if key not in variables:
                        self.fail(f"Secret sets {key}, which Portico does not read")
        workloads = [(d, d["spec"]["template"]) for d in self.of_kind("Deployment")]
        workloads += [(d, d["spec"]["template"]) for d in self.of_kind("Job")]
        for workload, template in workloads:
            self.check_workload(workload, template, variables, config)
        self.check_references(config)

    def check_workload(self, workload, template, variables, config):
        name = workload["metadata"]["name"]
        is_job = workload["kind"] == "Job"
        spec = template["spec"]
        for container in spec["containers"]:
            where = f"{workload['kind']} {name}/{container['name']}"
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(part, {}):
                        self.fail(f"{where}: no {resource} {part[:-1]}")
            ports = {p["containerPort"] for p in container.get("ports", [])}
            port_names = {p.get("name") for p in container.get("ports", [])}
            probes = {k: container.get(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
            if not is_job:
                for needed in ("livenessProbe", "readinessProbe"):
                    if not probes[needed]:
                        self.fail(f"{where}: no {needed}")
            for kind, probe in probes.items():
                if not probe:
                    continue
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    if handler in probe:
                        port = probe[handler]["port"]
                        if port not in ports and port not in port_names:
                            self.fail(f"{where}: {kind} port {port} is not a container port")
            if "portico" not in container["image"]:
                continue
            self.check_portico_container(where, workload, spec, container, probes, ports, variables, config, is_job)

    def check_portico_container(self, where, workload, spec, container, probes, ports, variables, config, is_job):
        images = {c["image"] for d in self.of_kind("Deployment") + self.of_kind("Job")
                  for c in d["spec"]["template"]["spec"]["containers"] if "portico" in c["image"]}
        if len(images) != 1:
            self.fail(f"Portico runs more than one image: {sorted(images)}")
        args = container.get("args") or []
        if not args or args[0] not in SUBCOMMANDS:
            self.fail(f"{where}: args {args} do not start with a portico subcommand")
            return
        security = container.get("securityContext", {})
        pod_security = spec.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            self.fail(f"{where}: may run as root")
        if not security.get("readOnlyRootFilesystem"):
            self.fail(f"{where}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            self.fail(f"{where}: privilege escalation allowed")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            self.fail(f"{where}: capabilities not dropped")
        for env in container.get("env", []):
            if env["name"] not in variables:
                self.fail(f"{where}: env {env['name']} is not a variable Portico reads")
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            if kind == "ConfigMap" and not self.named(kind, ref["name"]):
                self.fail(f"{where}: envFrom {kind} {ref['name']} is not in the overlay")
        if is_job:
            return
        subcommand = args[0]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        drain = seconds(config.get("SHUTDOWN_TIMEOUT", "10s"))
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < pre_stop + drain:
            self.fail(f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop} + SHUTDOWN_TIMEOUT {drain}")
        if subcommand in SERVICES:
            port = SERVICES[subcommand]
            address = config.get(f"{subcommand.upper().replace('-GATEWAY', '')}_ADDR", "")
            if not address.endswith(f":{port}") or port not in ports:
                self.fail(f"{where}: listen address {address!r} and container ports {sorted(ports)} disagree on {port}")
            live, ready = probes["livenessProbe"] or {}, probes["readinessProbe"] or {}
            if "grpc" not in live or live["grpc"].get("service") != liveness_name():
                self.fail(f"{where}: liveness must be a grpc probe of the `{liveness_name()}` name")
            if "grpc" not in ready:
                self.fail(f"{where}: readiness must be a grpc probe")
        elif subcommand == "edge":
            routes = edge_get_routes()
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = probes[kind]
                if not probe or "httpGet" not in probe:
                    self.fail(f"{where}: {kind} must be an HTTP probe")
                elif probe["httpGet"]["path"] not in routes:
                    self.fail(f"{where}: {kind} path {probe['httpGet']['path']} is not an edge route")
            if not config.get("EDGE_ADDR", "").endswith(":3000") or 3000 not in ports:
                self.fail(f"{where}: EDGE_ADDR and the container port disagree")

    def check_references(self, config):
        services = {s["metadata"]["name"]: s for s in self.of_kind("Service")}
        for key, value in config.items():
            if key.endswith("_GRPC_URL"):
                match = re.fullmatch(r"https?://([^:/]+):(\d+)", value)
                service = services.get(match.group(1)) if match else None
                if not service or int(match.group(2)) not in [p["port"] for p in service["spec"]["ports"]]:
                    self.fail(f"{key}={value} names no Service port in the overlay")
        pods = [d["spec"]["template"] for d in self.of_kind("Deployment")]

        def selected(selector):
            return [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in selector.items())]

        for name, service in services.items():
            targets = selected(service["spec"].get("selector", {}))
            if not targets:
                self.fail(f"Service {name} selects no pod")
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for pod in targets:
                    known = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                    known |= {p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
                    if target not in known:
                        self.fail(f"Service {name}: targetPort {target} is not a container port")
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            if not self.named("Deployment", hpa["spec"]["scaleTargetRef"]["name"]):
                self.fail(f"HPA {hpa['metadata']['name']} targets nothing")
        for pdb in self.of_kind("PodDisruptionBudget"):
            if not selected(pdb["spec"]["selector"]["matchLabels"]):
                self.fail(f"PDB {pdb['metadata']['name']} selects no pod")
        for deployment in self.of_kind("Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            if "portico" in image and labels.get("app.kubernetes.io/part-of") != "portico":
                self.fail(f"Deployment {deployment['metadata']['name']}: pods lack part-of=portico (NetworkPolicies)")


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else "1.32.0"
    problems = []
    overlays = sorted((ROOT / "k8s/overlays").iterdir())
    for overlay in overlays:
        rendered = subprocess.run(["kubectl", "kustomize", str(overlay)], check=True,
                                  capture_output=True, text=True).stdout
        docs = [d for d in yaml.safe_load_all(rendered) if d]
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                problems.append(f"{overlay.name}: {doc['kind']}/{doc['metadata']['name']}: {error.message}")
        checker = Checker(overlay.name, docs)
        checker.check()
        problems += checker.problems
        print(f"k8s/overlays/{overlay.name}: {len(docs)} objects rendered and checked")
    example = [d for d in yaml.safe_load_all((ROOT / "k8s/secret.example.yaml").read_text()) if d]
    for doc in example:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"secret.example.yaml: {error.message}")
    variables = code_variables() | provider_key_variables([(ROOT / "k8s/base/configmap.yaml").read_text()])
    for key in example[0].get("stringData", {}):
        if key not in variables:
            problems.append(f"secret.example.yaml: {key} is not a variable Portico reads")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    if problems:
        return 1
    print("k8s check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

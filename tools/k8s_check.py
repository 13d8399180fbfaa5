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
  match Services; Services, HPAs and PDBs point at something that exists;
- transport security agrees with itself as the code's start-up checks would: `*_GRPC_URL` is
  https:// exactly when GRPC_TLS_CERT_FILE is set; with it, the services' `grpc:` probes ask the
  plaintext `*_HEALTH_ADDR` port (kubelet cannot do TLS); without it, GRPC_PEER_KEY (>= 32
  characters) is in the Secret, or the services trust nobody; the production edge has
  EDGE_TLS_CERT_FILE (HTTPS probes) or EDGE_TLS=off; every certificate file lies in a mounted
  volume, never a subPath (those never see a rotated Secret);
- cert-manager (k8s/overlays/prod-cert-manager): every Certificate has an issuer in the overlay (or
  a ClusterIssuer) and writes a Secret a Deployment mounts, every mounted TLS Secret comes from a
  Certificate, a service's certificate names the host of its `*_GRPC_URL`, and the edge's names
  one of GRPC_TRUSTED_PEERS.

Needs kubectl (for `kubectl kustomize`) and `pip install kubernetes-validate pyyaml`.
Usage: tools/k8s_check.py [kubernetes-version]   (default 1.32.0)
"""
import base64
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVICES = {"auth": 50051, "content": 50052, "chat-gateway": 50053, "ratelimit": 50054}
SUBCOMMANDS = {"serve", "edge", "auth", "content", "chat-gateway", "ratelimit", "migrate", "keys"}
# Certificate files (re-read when they change): mounted from a Secret where the variable points.
# The edge alone reads EDGE_TLS_*.
TLS_FILE_VARIABLES = ("GRPC_TLS_CA_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_KEY_FILE", "REDIS_TLS_CA_FILE",
                      "EDGE_TLS_CERT_FILE", "EDGE_TLS_KEY_FILE")
# Kinds no Kubernetes schema describes: checked by Checker.check_certificates instead.
CERT_MANAGER = "cert-manager.io/"
MIN_PEER_KEY_LENGTH = 32


def code_variables() -> set:
    names = set()
    for source in ("settings.rs", "transport.rs"):
        text = (ROOT / "shared/config/src" / source).read_text()
        names |= set(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', text))
    return names


def default_trusted_peers() -> list:
    text = (ROOT / "shared/config/src/transport.rs").read_text()
    value = re.search(r'pub const DEFAULT_TRUSTED_PEERS: &str = "([^"]*)"', text).group(1)
    return [name.strip() for name in value.split(",") if name.strip()]


def env_prefix(subcommand: str) -> str:
    """The variable prefix of a service: `chat-gateway` reads CHAT_ADDR, CHAT_HEALTH_ADDR."""
    return subcommand.upper().replace("-GATEWAY", "")


def port_of(address: str):
    match = re.fullmatch(r".*:(\d+)", address or "")
    return int(match.group(1)) if match else None


def liveness_name() -> str:
    text = (ROOT / "shared/grpc/src/lib.rs").read_text()
    return re.search(r'pub const LIVENESS: &str = "([^"]+)"', text).group(1)


def edge_get_routes() -> set:
    text = (ROOT / "edge/src/routes.rs").read_text()
    return set(re.findall(r'native\(\s*"([^"]+)"', text))


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

    def secret_values(self) -> dict:
        """The keys of the portico-secrets Secrets in the overlay (generated ones: dev)."""
        values = {}
        for secret in self.of_kind("Secret"):
            if secret["metadata"]["name"].startswith("portico-secrets"):
                for key, value in (secret.get("data") or {}).items():
                    values[key] = base64.b64decode(value).decode()
                values.update(secret.get("stringData") or {})
        return values

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
        self.check_transport(config)
        self.check_certificates(config)

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
        env = dict(config)
        env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
        if not is_job:
            self.check_files(where, spec, container, env, args[0])
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
            address = config.get(f"{env_prefix(subcommand)}_ADDR", "")
            if not address.endswith(f":{port}") or port not in ports:
                self.fail(f"{where}: listen address {address!r} and container ports {sorted(ports)} disagree on {port}")
            live, ready = probes["livenessProbe"] or {}, probes["readinessProbe"] or {}
            if "grpc" not in live or live["grpc"].get("service") != liveness_name():
                self.fail(f"{where}: liveness must be a grpc probe of the `{liveness_name()}` name")
            if "grpc" not in ready:
                self.fail(f"{where}: readiness must be a grpc probe")
            health_key = f"{env_prefix(subcommand)}_HEALTH_ADDR"
            health = port_of(env.get(health_key))
            if env.get(health_key) and health not in ports:
                self.fail(f"{where}: {health_key}={env[health_key]} is not a container port")
            if env.get("GRPC_TLS_CERT_FILE") and not health:
                self.fail(f"{where}: GRPC_TLS_CERT_FILE is set but {health_key} is not: kubelet's grpc probes "
                          "cannot do TLS")
            for kind, probe in probes.items():
                if probe and "grpc" in probe and health and probe["grpc"]["port"] != health:
                    self.fail(f"{where}: {kind} asks port {probe['grpc']['port']}, not the health port {health}")
        elif subcommand == "edge":
            routes = edge_get_routes()
            https = bool(env.get("EDGE_TLS_CERT_FILE"))
            if env.get("APP_ENV") == "production" and not https and env.get("EDGE_TLS") != "off":
                self.fail(f"{where}: APP_ENV=production refuses a plaintext edge: set EDGE_TLS_CERT_FILE/"
                          "EDGE_TLS_KEY_FILE, or EDGE_TLS=off behind a TLS-terminating load balancer")
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = probes[kind]
                if not probe or "httpGet" not in probe:
                    self.fail(f"{where}: {kind} must be an HTTP probe")
                    continue
                if probe["httpGet"]["path"] not in routes:
                    self.fail(f"{where}: {kind} path {probe['httpGet']['path']} is not an edge route")
                scheme = probe["httpGet"].get("scheme", "HTTP")
                if scheme != ("HTTPS" if https else "HTTP"):
                    self.fail(f"{where}: {kind} uses {scheme} but the edge serves {'HTTPS' if https else 'HTTP'}")
            if not config.get("EDGE_ADDR", "").endswith(":3000") or 3000 not in ports:
                self.fail(f"{where}: EDGE_ADDR and the container port disagree")

    def check_files(self, where, spec, container, env, subcommand):
        """A certificate file lies in a Secret mounted as a directory (a subPath never sees a
        rotated Secret)."""
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = container.get("volumeMounts", [])
        for key in TLS_FILE_VARIABLES:
            path = env.get(key)
            if not path or (key.startswith("EDGE_") and subcommand != "edge"):
                continue
            mount = next((m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
            if not mount:
                self.fail(f"{where}: {key}={path} is in no mounted volume")
            elif mount.get("subPath"):
                self.fail(f"{where}: {key} is mounted with subPath, which never sees a rotated Secret")
            elif "secret" not in volumes.get(mount["name"], {}):
                self.fail(f"{where}: {key} is not in a Secret volume")

    def check_transport(self, config):
        tls = bool(config.get("GRPC_TLS_CERT_FILE"))
        for key, value in config.items():
            if key.endswith("_GRPC_URL") and value.startswith("https://") != tls:
                wanted = "https://" if tls else "http://"
                self.fail(f"{key}={value}: with{'' if tls else 'out'} GRPC_TLS_CERT_FILE the code wants {wanted}")
        if tls:
            return
        # Plaintext hops: the services believe the edge only with its signed credential. (A Secret
        # created out of band, as in prod, is not in the overlay: nothing to check.)
        secrets = self.secret_values()
        if not secrets:
            return
        key = secrets.get("GRPC_PEER_KEY")
        if not key:
            self.fail("plaintext gRPC hops without GRPC_PEER_KEY: the services trust nobody (no forwarded "
                      "client IPs, the edge's rate-limit checks refused)")
        elif len(key) < MIN_PEER_KEY_LENGTH:
            self.fail(f"GRPC_PEER_KEY is shorter than {MIN_PEER_KEY_LENGTH} characters")

    def mounted_secrets(self, directory: str) -> dict:
        """Deployment name -> the Secret it mounts at `directory`."""
        found = {}
        for deployment in self.of_kind("Deployment"):
            spec = deployment["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for container in spec["containers"]:
                for mount in container.get("volumeMounts", []):
                    secret = volumes.get(mount["name"], {}).get("secret")
                    if secret and mount["mountPath"].rstrip("/") == directory:
                        found[deployment["metadata"]["name"]] = secret["secretName"]
        return found

    def check_certificates(self, config):
        certificates = [d for d in self.docs if d.get("apiVersion", "").startswith(CERT_MANAGER)
                        and d["kind"] == "Certificate"]
        if not certificates:
            return
        issuers = {d["metadata"]["name"] for d in self.docs if d.get("kind") == "Issuer"}
        by_secret = {}
        for cert in certificates:
            name, spec = cert["metadata"]["name"], cert.get("spec", {})
            for field in ("secretName", "issuerRef"):
                if field not in spec:
                    self.fail(f"Certificate {name}: no {field}")
            if "secretName" not in spec or "issuerRef" not in spec:
                continue
            ref = spec["issuerRef"]
            if ref.get("kind", "Issuer") == "Issuer" and ref["name"] not in issuers:
                self.fail(f"Certificate {name}: issuer {ref['name']} is not in the overlay")
            if not spec.get("isCA") and not spec.get("dnsNames"):
                self.fail(f"Certificate {name}: no dnsNames (Portico verifies DNS SANs only)")
            by_secret[spec["secretName"]] = spec
        mounted = {}
        for variable in ("GRPC_TLS_CERT_FILE", "EDGE_TLS_CERT_FILE"):
            for deployment in self.of_kind("Deployment"):
                container = deployment["spec"]["template"]["spec"]["containers"][0]
                env = dict(config)
                env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
                if env.get(variable):
                    directory = env[variable].rsplit("/", 1)[0]
                    secret = self.mounted_secrets(directory).get(deployment["metadata"]["name"])
                    if secret:
                        mounted[(deployment["metadata"]["name"], variable)] = secret
        for (deployment, variable), secret in sorted(mounted.items()):
            if secret not in by_secret:
                self.fail(f"Deployment {deployment}: Secret {secret} ({variable}) comes from no Certificate")
        mounted_names = set(mounted.values())
        for secret, spec in by_secret.items():
            if not spec.get("isCA") and secret not in mounted_names:
                self.fail(f"Certificate for Secret {secret}: no Deployment mounts it")
        trusted = [n.strip() for n in config.get("GRPC_TRUSTED_PEERS", "").split(",") if n.strip()]
        trusted = trusted or default_trusted_peers()
        hosts = {}
        for key, value in config.items():
            match = re.fullmatch(r"https?://([^:/]+):(\d+)", value) if key.endswith("_GRPC_URL") else None
            if match:
                hosts[match.group(1)] = key
        services = {s["metadata"]["name"]: s for s in self.of_kind("Service")}
        for (deployment, variable), secret in sorted(mounted.items()):
            names = (by_secret.get(secret) or {}).get("dnsNames", [])
            if not names or variable != "GRPC_TLS_CERT_FILE":
                continue
            labels = self.named("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
            for host, key in hosts.items():
                service = services.get(host)
                selector = (service or {}).get("spec", {}).get("selector", {})
                if selector and all(labels.get(k) == v for k, v in selector.items()) and host not in names:
                    self.fail(f"Certificate for Secret {secret}: dnsNames lack {host}, the host of {key}")
            if labels.get("app.kubernetes.io/component") == "edge" and not set(names) & set(trusted):
                self.fail(f"Certificate for Secret {secret}: the edge's names {names} include none of "
                          f"GRPC_TRUSTED_PEERS {trusted}: the services would not trust it")

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
            if doc.get("apiVersion", "").startswith(CERT_MANAGER):
                continue  # no Kubernetes schema: Checker.check_certificates
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

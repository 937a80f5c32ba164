#!/usr/bin/env python3
"""Cross-checks of deploy/ that no schema can make (run by scripts/validate-deploy.sh).

Kubernetes (the objects rendered from deploy/k8s/base):
  - every hookfold container's configuration file, taken from the ConfigMap it mounts, is
    accepted by the real binary (`hookfold-gateway --check`, `hookfold-processor check`)
    with exactly the environment the pod would get (literal values, the Secret's keys,
    the pod name from fieldRef, ...), and nothing else;
  - ports, probes and scrape annotations agree with `listen` / `metrics_listen`; the
    gateway's grace period outlasts shutdown_timeout plus its preStop pause; the
    processor's state_dir is on a persistent volume; both run as non-root with a
    read-only root filesystem;
  - every reference resolves: Services, PodDisruptionBudgets and the autoscaler select
    or target an existing workload, Service target ports exist, ConfigMaps and Secrets
    named by volumes and env exist and have the keys;
  - resource quantities parse.

Compose (deploy/compose.yaml, deploy/compose.sasl-ssl.yaml):
  - ${...} interpolation is well formed (a bare $ is an error in compose);
  - services have an image or a build whose context and Dockerfile exist; depends_on
    targets exist; bind-mounted files exist; named volumes are declared; the files of
    Compose secrets exist and every secret a service uses is declared;
  - every `*_file` of a configuration (CA, password) lies on a bind mount, a secret or a
    named volume of its service, and the binaries check it with that file (an empty
    stand-in for a volume that a service fills at run time);
  - the gateway and processor configurations pass the binaries' checks with the service's
    environment; state_dir is on a named volume; the topics service creates every topic
    the configurations use, the changelog compacted with the webhook topic's partitions;
  - Kafka's CLUSTER_ID is a valid base64url 16-byte id.

Exit status 0 when all is well, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

GATEWAY = "hookfold-gateway"
PROCESSOR = "hookfold-processor"
BINARIES = (GATEWAY, PROCESSOR)

# Defaults from gateway/src/config.rs and processor/src/config.rs.
DEFAULT_GATEWAY_LISTEN = "127.0.0.1:8080"
DEFAULT_SHUTDOWN_TIMEOUT = "30s"
DEFAULT_METRICS_LISTEN = "127.0.0.1:9464"
DEFAULT_STATE_DIR = "./.data/processor"
DEFAULT_INPUT_TOPIC = "hookfold.webhooks"
DEFAULT_OUTPUT_TOPIC = "hookfold.incidents"
DEFAULT_GROUP_ID = "hookfold-processor"

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.passed: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def ok(self, what: str) -> None:
        self.passed.append(what)


# --- configuration helpers -------------------------------------------------------------


def apply_env_overrides(config: dict, env: dict[str, str]) -> dict:
    """The HOOKFOLD_<SECTION>__<KEY> overrides, as figment applies them (values as strings)."""
    merged = dict(config)
    for name, value in env.items():
        if not name.startswith("HOOKFOLD_"):
            continue
        path = name[len("HOOKFOLD_"):].lower().split("__")
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[path[-1]] = value
    return merged


def parse_duration(text: str) -> float:
    """Seconds in a humantime duration such as "30s", "1m 30s", "500ms"."""
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text.strip())
    if not parts:
        raise ValueError(f"cannot read duration {text!r}")
    for number, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown unit in duration {text!r}")
        total += float(number) * units[unit]
    return total


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = str(addr).rpartition(":")
    return host.strip("[]"), int(port)


def config_path_from_args(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def run_check(binary: Path, kind: str, config_file: Path, env: dict[str, str]) -> tuple[bool, str]:
    """The binary's own configuration check, with only `env` (plus PATH) in its environment."""
    if kind == GATEWAY:
        argv = [str(binary), "--config", str(config_file), "--check"]
    else:
        argv = [str(binary), "--config", str(config_file), "check"]
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    clean_env.update(env)
    try:
        done = subprocess.run(argv, env=clean_env, capture_output=True, text=True, timeout=60)
    except OSError as e:
        return False, f"cannot run {binary}: {e}"
    output = (done.stdout + done.stderr).strip()
    return done.returncode == 0, output


def check_config(problems: Problems, where: str, kind: str, text: str, env: dict[str, str],
                 bin_dir: Path | None, scratch: Path) -> dict | None:
    """Parses the configuration (problem if not TOML) and runs the real binary's check."""
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.add(where, f"configuration is not valid TOML: {e}")
        return None
    if bin_dir is not None:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", where)
        file = scratch / f"{len(list(scratch.iterdir()))}-{slug}-{kind}.toml"
        file.write_text(text)
        ok, output = run_check(bin_dir / kind, kind, file, env)
        if ok:
            problems.ok(f"{where}: {kind} accepts the configuration ({output.splitlines()[-1] if output else 'ok'})")
        else:
            shown = " ".join(f"{k}=..." for k in sorted(env))
            problems.add(where, f"{kind} rejects its configuration with the environment the "
                                f"container gets [{shown}]: {output}")
    return apply_env_overrides(config, env)


# --- Kubernetes ------------------------------------------------------------------------


def load_objects(path: Path) -> list[dict]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if not selector:
        return False
    match = selector.get("matchLabels", selector)
    if not isinstance(match, dict) or not match:
        return False
    return all(labels.get(k) == v for k, v in match.items())


def pod_name_sample(workload: dict) -> str:
    name = workload["metadata"]["name"]
    if workload["kind"] == "StatefulSet":
        return f"{name}-0"
    return f"{name}-5d9c7b8f6d-x2k4q"


def check_quantities(problems: Problems, where: str, resources: dict | None) -> None:
    for section in ("requests", "limits"):
        for name, value in ((resources or {}).get(section) or {}).items():
            if not QUANTITY.match(str(value)):
                problems.add(where, f"resources.{section}.{name} = {value!r} is not a Kubernetes quantity")


def resolve_port(container: dict, port) -> int | None:
    for p in container.get("ports") or []:
        if port == p.get("name") or port == p.get("containerPort"):
            return p.get("containerPort")
    return None


def container_env(problems: Problems, where: str, container: dict, workload: dict,
                  objects: dict[tuple[str, str], dict]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = source.get(ref_key)
            if ref is None:
                continue
            obj = objects.get((kind, ref.get("name")))
            if obj is None:
                if not ref.get("optional"):
                    problems.add(where, f"envFrom names {kind} {ref.get('name')!r}, which is not in the base")
                continue
            for key, value in data_of(obj).items():
                env[prefix + key] = value
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item.get("valueFrom") or {}
        if "fieldRef" in source:
            field = source["fieldRef"].get("fieldPath")
            env[name] = {
                "metadata.name": pod_name_sample(workload),
                "metadata.namespace": "hookfold",
                "spec.nodeName": "node-1",
                "status.podIP": "10.0.0.7",
            }.get(field, "x")
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = (("Secret", source["secretKeyRef"]) if "secretKeyRef" in source
                         else ("ConfigMap", source["configMapKeyRef"]))
            obj = objects.get((kind, ref.get("name")))
            data = data_of(obj) if obj else None
            if data is None or ref.get("key") not in data:
                if not ref.get("optional"):
                    problems.add(where, f"env {name} takes key {ref.get('key')!r} of {kind} "
                                        f"{ref.get('name')!r}, which the base does not define")
                continue
            env[name] = data[ref["key"]]
        elif "resourceFieldRef" in source:
            env[name] = "1"
        else:
            problems.add(where, f"env {name} has neither value nor a known valueFrom")
    return env


def data_of(obj: dict) -> dict[str, str]:
    data = {k: str(v) for k, v in (obj.get("data") or {}).items()}
    if obj.get("kind") == "Secret":
        data = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
    data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return data


def config_from_mounts(problems: Problems, where: str, config_path: str, container: dict,
                       pod_spec: dict, objects: dict) -> str | None:
    """The text of `config_path` as the container would see it, from a ConfigMap or Secret volume."""
    target = PurePosixPath(config_path)
    best = None
    for mount in container.get("volumeMounts") or []:
        mount_path = PurePosixPath(mount["mountPath"])
        if target == mount_path or mount_path in target.parents:
            if best is None or len(str(mount_path)) > len(str(best["mountPath"])):
                best = mount
    if best is None:
        problems.add(where, f"--config {config_path} is not on any volume mount")
        return None
    volume = next((v for v in pod_spec.get("volumes") or [] if v["name"] == best["name"]), None)
    if volume is None:
        problems.add(where, f"volumeMount {best['name']!r} names no volume")
        return None
    if "configMap" in volume:
        kind, ref = "ConfigMap", volume["configMap"]
        obj_name = ref.get("name")
    elif "secret" in volume:
        kind, ref = "Secret", volume["secret"]
        obj_name = ref.get("secretName")
    else:
        problems.add(where, f"--config {config_path} is on volume {best['name']!r}, which is no ConfigMap or Secret")
        return None
    obj = objects.get((kind, obj_name))
    if obj is None:
        problems.add(where, f"volume {best['name']!r} names {kind} {obj_name!r}, which is not in the base")
        return None
    if "subPath" in best:
        key = best["subPath"]
        if PurePosixPath(best["mountPath"]) != target:
            problems.add(where, f"--config {config_path} is below a subPath mount")
            return None
    else:
        relative = str(target.relative_to(PurePosixPath(best["mountPath"])))
        items = ref.get("items")
        key = relative
        if items:
            key = next((i["key"] for i in items if i["path"] == relative), None)
    data = data_of(obj)
    if key not in data:
        problems.add(where, f"--config {config_path}: {kind} {obj_name!r} has no key {key!r}")
        return None
    return data[key]


def persistent_mount(container: dict, pod_spec: dict, workload: dict, path: str) -> str | None:
    """The name of the persistent volume that holds `path`, if any."""
    target = PurePosixPath(path)
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates") or []}
    claims |= {v["name"] for v in pod_spec.get("volumes") or [] if "persistentVolumeClaim" in v}
    for mount in container.get("volumeMounts") or []:
        mount_path = PurePosixPath(mount["mountPath"])
        if (target == mount_path or mount_path in target.parents) and mount["name"] in claims:
            return mount["name"]
    return None


def check_container(problems: Problems, workload: dict, container: dict, objects: dict,
                    bin_dir: Path | None, scratch: Path) -> None:
    wname = f"{workload['kind']}/{workload['metadata']['name']}"
    where = f"{wname} container {container['name']}"
    pod_spec = workload["spec"]["template"]["spec"]
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    binary = PurePosixPath(argv[0]).name if argv else None
    if binary not in BINARIES:
        problems.add(where, f"command must start with one of {BINARIES} (the image has no entrypoint), got {argv}")
        return
    config_path = config_path_from_args(argv)
    if config_path is None:
        problems.add(where, "no --config argument")
        return
    text = config_from_mounts(problems, where, config_path, container, pod_spec, objects)
    env = container_env(problems, where, container, workload, objects)
    if text is None:
        return
    config = check_config(problems, where, binary, text, env, bin_dir, scratch)
    if config is None:
        return

    pod_security = pod_spec.get("securityContext") or {}
    security = container.get("securityContext") or {}
    if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))):
        problems.add(where, "runAsNonRoot is not set")
    if not security.get("readOnlyRootFilesystem"):
        problems.add(where, "readOnlyRootFilesystem is not set")
    check_quantities(problems, where, container.get("resources"))

    if binary == GATEWAY:
        listen = config.get("listen", DEFAULT_GATEWAY_LISTEN)
        wanted = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    else:
        listen = config.get("metrics_listen", DEFAULT_METRICS_LISTEN)
        wanted = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    host, port = split_addr(listen)
    if host.startswith("127.") or host in ("::1", "localhost"):
        problems.add(where, f"{binary} listens on {listen}: probes and Services cannot reach a loopback address")
    if resolve_port(container, port) is None:
        problems.add(where, f"{binary} listens on port {port}, which is not a containerPort")
    for probe_name, path in wanted.items():
        probe = container.get(probe_name)
        if not probe or "httpGet" not in probe:
            problems.add(where, f"{probe_name} must be an httpGet of {path}")
            continue
        get = probe["httpGet"]
        if get.get("path") != path:
            problems.add(where, f"{probe_name} asks {get.get('path')}, not {path}")
        if resolve_port(container, get.get("port")) != port:
            problems.add(where, f"{probe_name} port {get.get('port')!r} is not the listen port {port}")
    annotations = workload["spec"]["template"]["metadata"].get("annotations") or {}
    if annotations.get("prometheus.io/scrape") != "true":
        problems.add(where, "pod template lacks prometheus.io/scrape: \"true\"")
    if str(annotations.get("prometheus.io/port")) != str(port):
        problems.add(where, f"prometheus.io/port is {annotations.get('prometheus.io/port')!r}, metrics are on {port}")

    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    if binary == GATEWAY:
        shutdown = parse_duration(str(config.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)))
        pre_stop = 0.0
        command = (((container.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
        if len(command) == 2 and PurePosixPath(command[0]).name == "sleep":
            pre_stop = float(command[1])
        if (((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds"):
            pre_stop = float(container["lifecycle"]["preStop"]["sleep"]["seconds"])
        if not grace > shutdown + pre_stop:
            problems.add(where, f"terminationGracePeriodSeconds {grace} must exceed shutdown_timeout "
                                f"({shutdown:g}s) plus the preStop pause ({pre_stop:g}s)")
    else:
        state_dir = str(config.get("state_dir", DEFAULT_STATE_DIR))
        if not state_dir.startswith("/"):
            problems.add(where, f"state_dir {state_dir!r} should be absolute")
        elif persistent_mount(container, pod_spec, workload, state_dir) is None:
            problems.add(where, f"state_dir {state_dir} is not on a persistent volume (volumeClaimTemplate or PVC)")
        if workload["kind"] == "StatefulSet":
            instance = next((e for e in container.get("env") or [] if e["name"] == "HOOKFOLD_KAFKA__INSTANCE_ID"), None)
            field = ((instance or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            if field != "metadata.name":
                problems.add(where, "HOOKFOLD_KAFKA__INSTANCE_ID must come from the pod name (fieldRef metadata.name)")


def check_kubernetes(problems: Problems, path: Path, bin_dir: Path | None, scratch: Path) -> None:
    docs = load_objects(path)
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
    hookfold_containers = 0
    for workload in workloads:
        wname = f"{workload['kind']}/{workload['metadata']['name']}"
        spec = workload["spec"]
        labels = spec["template"]["metadata"].get("labels") or {}
        if not selector_matches(spec.get("selector"), labels):
            problems.add(wname, "selector does not match the pod template's labels")
        for volume in spec["template"]["spec"].get("volumes") or []:
            for kind, key, name_key in (("ConfigMap", "configMap", "name"), ("Secret", "secret", "secretName")):
                if key in volume and (kind, volume[key].get(name_key)) not in objects and not volume[key].get("optional"):
                    problems.add(wname, f"volume {volume['name']!r} names {kind} {volume[key].get(name_key)!r}, not in the base")
        for container in spec["template"]["spec"].get("containers") or []:
            if str(container.get("image", "")).split("/")[-1].split(":")[0].split("@")[0] == "hookfold":
                hookfold_containers += 1
                check_container(problems, workload, container, objects, bin_dir, scratch)
        if workload["kind"] == "StatefulSet":
            service = objects.get(("Service", spec.get("serviceName")))
            if service is None or service["spec"].get("clusterIP") != "None":
                problems.add(wname, f"serviceName {spec.get('serviceName')!r} is no headless Service of the base")
    binaries = set()
    for w in workloads:
        for c in w["spec"]["template"]["spec"].get("containers") or []:
            argv = list(c.get("command") or []) + list(c.get("args") or [])
            if argv:
                binaries.add(PurePosixPath(argv[0]).name)
    for binary in BINARIES:
        if binary not in binaries:
            problems.add("kubernetes", f"no workload runs {binary}")

    def pods_of(selector: dict | None) -> list[dict]:
        return [w for w in workloads if selector_matches(selector, w["spec"]["template"]["metadata"].get("labels") or {})]

    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Service":
            targets = pods_of({"matchLabels": doc["spec"].get("selector") or {}})
            if not targets:
                problems.add(name, "selects no workload of the base")
            for port in doc["spec"].get("ports") or []:
                target = port.get("targetPort", port.get("port"))
                for w in targets:
                    if not any(resolve_port(c, target) for c in w["spec"]["template"]["spec"]["containers"]):
                        problems.add(name, f"targetPort {target!r} is no container port of {w['kind']}/{w['metadata']['name']}")
        elif doc["kind"] == "PodDisruptionBudget":
            if not pods_of(doc["spec"].get("selector")):
                problems.add(name, "selects no workload of the base")
        elif doc["kind"] == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            if (ref["kind"], ref["name"]) not in objects:
                problems.add(name, f"scaleTargetRef {ref['kind']}/{ref['name']} is not in the base")
            else:
                target = objects[(ref["kind"], ref["name"])]
                for c in target["spec"]["template"]["spec"]["containers"]:
                    if not ((c.get("resources") or {}).get("requests") or {}).get("cpu"):
                        problems.add(name, f"scales on CPU but container {c['name']} requests no cpu")
    if hookfold_containers == 0:
        problems.add("kubernetes", "no container runs the hookfold image")
    problems.ok(f"kubernetes: {len(docs)} objects cross-checked")


# --- Compose ---------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(.?))", re.S)


def interpolate(problems: Problems, where: str, text: str, environ: dict[str, str]) -> str:
    def replace(m: re.Match) -> str:
        escaped, braced, bare, invalid = m.groups()
        if escaped:
            return "$"
        if bare:
            return environ.get(bare, "")
        if braced is not None:
            inner = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", braced, re.S)
            if not inner:
                problems.add(where, f"invalid interpolation ${{{braced}}}")
                return ""
            name, op, arg = inner.groups()
            value = environ.get(name)
            if op in (":-", "-"):
                use_default = value is None or (op == ":-" and value == "")
                return arg if use_default else value
            if op in (":?", "?"):
                if value is None or (op == ":?" and value == ""):
                    problems.add(where, f"${{{braced}}} requires {name} to be set")
                return value or ""
            if op in (":+", "+"):
                return arg if value else ""
            return value or ""
        around = text[max(0, m.start() - 30):m.end() + 10]
        problems.add(where, f"bare '$' in ...{around!r}...: compose would refuse it; write $$ for a literal dollar")
        return ""

    return INTERPOLATION.sub(replace, text)


def interpolate_tree(problems: Problems, where: str, node, environ: dict[str, str]):
    if isinstance(node, str):
        return interpolate(problems, where, node, environ)
    if isinstance(node, list):
        return [interpolate_tree(problems, where, v, environ) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(problems, f"{where}.{k}", v, environ) for k, v in node.items()}
    return node


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        result = {}
        for item in env:
            name, sep, value = item.partition("=")
            if sep:
                result[name] = value
        return result
    return {k: "" if v is None else str(v) for k, v in env.items()}


def parse_mount(volume) -> tuple[str, str, str] | None:
    """(type, source, target) of a short- or long-syntax volume entry."""
    if isinstance(volume, dict):
        return volume.get("type", "volume"), str(volume.get("source", "")), str(volume["target"])
    parts = str(volume).split(":")
    if len(parts) == 1:
        return "volume", "", parts[0]
    source, target = parts[0], parts[1]
    kind = "bind" if source.startswith((".", "/", "~")) else "volume"
    return kind, source, target


def service_secrets(problems: Problems, where: str, service: dict, declared: dict, base: Path) -> list[tuple[str, str, str]]:
    """The service's Compose secrets as ("secret", local file, container path) mounts."""
    mounts = []
    for entry in service.get("secrets") or []:
        name = entry if isinstance(entry, str) else entry.get("source", "")
        target = name if isinstance(entry, str) else entry.get("target", name)
        if name not in declared:
            problems.add(where, f"uses secret {name!r}, which is not declared under secrets:")
            continue
        file = (declared[name] or {}).get("file")
        if file is None:
            continue
        target = target if str(target).startswith("/") else f"/run/secrets/{target}"
        mounts.append(("secret", str(base / file), str(target)))
    return mounts


def localise_files(problems: Problems, where: str, text: str, mounts: list, base: Path,
                   scratch: Path) -> str:
    """The configuration with every `*_file = "<container path>"` pointed at what the
    container would see there: the bind-mounted or secret file, or, on a named volume that
    another service fills at run time (certificates), an empty stand-in. A path on no mount
    is a problem: the container would not have the file."""
    def replace(m: re.Match) -> str:
        key, value = m.group(1), m.group(2)
        container = PurePosixPath(value)
        for kind, source, target in mounts:
            target_path = PurePosixPath(target)
            if container != target_path and target_path not in container.parents:
                continue
            rel = container.relative_to(target_path)
            if kind == "secret":
                local = Path(source)
            elif kind == "bind":
                local = base / source / rel if str(rel) != "." else base / source
            else:
                local = scratch / "volumes" / (source or "anonymous") / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                local.touch()
                problems.ok(f"{where}: {key} {value} is on the volume {source!r}, filled at run time")
            if not local.exists():
                problems.add(where, f"{key} = {value}: {local} does not exist")
            return f'{key} = "{local}"'
        problems.add(where, f"{key} = {value} is on no mount, volume or secret of the service")
        return m.group(0)
    return re.sub(r'^(\w+_file)\s*=\s*"([^"]+)"', replace, text, flags=re.M)


def check_compose(problems: Problems, path: Path, bin_dir: Path | None, scratch: Path) -> None:
    base = path.parent
    raw = yaml.safe_load(path.read_text())
    # Interpolate as `docker compose` would with none of the variables set (the defaults).
    environ = {k: v for k, v in os.environ.items() if k == "PATH"}
    doc = interpolate_tree(problems, path.name, raw, environ)
    services = doc.get("services") or {}
    volumes = doc.get("volumes") or {}
    secrets = doc.get("secrets") or {}
    for name, secret in secrets.items():
        file = (secret or {}).get("file")
        if file is not None and not (base / file).is_file():
            problems.add(f"compose secret {name}", f"file {file} does not exist (relative to {base})")
    topics_created: dict[str, tuple[int, str]] = {}
    topics_used: list[tuple[str, str]] = []
    changelog_of: dict[str, str] = {}
    tables: list[str] = []

    for name, service in services.items():
        where = f"compose service {name}"
        if "image" not in service and "build" not in service:
            problems.add(where, "has neither image nor build")
        build = service.get("build")
        if build is not None:
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not context.is_dir():
                problems.add(where, f"build context {context} does not exist")
            elif not (context / dockerfile).is_file():
                problems.add(where, f"Dockerfile {context / dockerfile} does not exist")
        depends = service.get("depends_on") or {}
        for target in (depends if isinstance(depends, list) else depends.keys()):
            if target not in services:
                problems.add(where, f"depends_on {target!r}, which is no service")
            elif target == name:
                problems.add(where, "depends on itself")
        mounts = []
        for volume in service.get("volumes") or []:
            mount = parse_mount(volume)
            mounts.append(mount)
            kind, source, _target = mount
            if kind == "bind" and not (base / source).exists():
                problems.add(where, f"bind mount source {source} does not exist (relative to {base})")
            if kind == "volume" and source and source not in volumes:
                problems.add(where, f"named volume {source!r} is not declared under volumes:")
        mounts += service_secrets(problems, where, service, secrets, base)
        env = service_env(service)
        if "CLUSTER_ID" in env:
            cluster_id = env["CLUSTER_ID"]
            try:
                ok = len(base64.urlsafe_b64decode(cluster_id + "=" * (-len(cluster_id) % 4))) == 16
            except ValueError:
                ok = False
            if not ok or len(cluster_id) != 22:
                problems.add(where, f"CLUSTER_ID {cluster_id!r} is not a base64url-encoded 16-byte id")

        command = service.get("command") or []
        command_text = command if isinstance(command, str) else "\n".join(map(str, command))
        for line in command_text.splitlines():
            m = re.search(r"\bcreate\s+(\S+)\s+--partitions\s+(\d+)(.*)$", line)
            if m:
                topics_created[m.group(1)] = (int(m.group(2)), m.group(3))

        argv = command if isinstance(command, list) else str(command).split()
        binary = PurePosixPath(str(argv[0])).name if argv else None
        if binary not in BINARIES:
            continue
        config_path = config_path_from_args([str(a) for a in argv])
        if config_path is None:
            problems.add(where, "no --config argument")
            continue
        source = next((s for k, s, t in mounts if k == "bind" and t == config_path), None)
        if source is None:
            problems.add(where, f"--config {config_path} is not bind-mounted from a file")
            continue
        file = base / source
        if not file.is_file():
            continue
        text = localise_files(problems, where, file.read_text(), mounts, base, scratch)
        config = check_config(problems, where, binary, text, env, bin_dir, scratch)
        if config is None:
            continue
        kafka = config.get("kafka") or {}
        listen = config.get("listen" if binary == GATEWAY else "metrics_listen",
                           DEFAULT_GATEWAY_LISTEN if binary == GATEWAY else DEFAULT_METRICS_LISTEN)
        host, port = split_addr(listen)
        if host.startswith("127."):
            problems.add(where, f"listens on {listen}: unreachable from outside the container")
        published = [str(p) for p in service.get("ports") or []]
        if published and not any(p.split(":")[-1].split("/")[0] == str(port) for p in published):
            problems.add(where, f"publishes {published}, but listens on port {port}")
        if binary == GATEWAY:
            topics_used.append((kafka.get("topic", DEFAULT_INPUT_TOPIC), where))
            grace = parse_duration(str(service.get("stop_grace_period", "10s")))
            shutdown = parse_duration(str(config.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT)))
            if not grace > shutdown:
                problems.add(where, f"stop_grace_period ({grace:g}s) must exceed shutdown_timeout ({shutdown:g}s)")
        else:
            input_topic = kafka.get("input_topic", DEFAULT_INPUT_TOPIC)
            changelog = kafka.get("changelog_topic") or f"{kafka.get('group_id', DEFAULT_GROUP_ID)}.state"
            output_topic = kafka.get("output_topic", DEFAULT_OUTPUT_TOPIC)
            open_incidents = kafka.get("open_incidents_topic") or f"{output_topic}.open"
            topics_used += [(input_topic, where), (output_topic, where), (changelog, where),
                            (open_incidents, where)]
            tables.append(open_incidents)
            changelog_of[changelog] = input_topic
            state_dir = PurePosixPath(str(config.get("state_dir", DEFAULT_STATE_DIR)))
            if not any(k == "volume" and s and (state_dir == PurePosixPath(t) or PurePosixPath(t) in state_dir.parents)
                       for k, s, t in mounts):
                problems.add(where, f"state_dir {state_dir} is not on a named volume")

    for topic, where in topics_used:
        if topic not in topics_created:
            problems.add(where, f"uses topic {topic!r}, which no service creates (`create {topic} --partitions N`)")
    for changelog, input_topic in changelog_of.items():
        if changelog in topics_created and input_topic in topics_created:
            partitions, rest = topics_created[changelog]
            if "cleanup.policy=compact" not in rest:
                problems.add("compose", f"changelog topic {changelog} must be created with cleanup.policy=compact")
            if partitions != topics_created[input_topic][0]:
                problems.add("compose", f"changelog topic {changelog} needs as many partitions as {input_topic}")
    for table in tables:
        if table in topics_created and "cleanup.policy=compact" not in topics_created[table][1]:
            problems.add("compose", f"open-incident table {table} must be created with cleanup.policy=compact")
    problems.ok(f"compose: {len(services)} services cross-checked")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", type=Path, required=True, help="rendered Kubernetes objects (multi-document YAML)")
    parser.add_argument("--compose", type=Path, required=True)
    parser.add_argument("--bin-dir", type=Path, help="directory with hookfold-gateway and hookfold-processor")
    parser.add_argument("--skip-binaries", action="store_true", help="do not run the binaries' checks")
    args = parser.parse_args()

    problems = Problems()
    bin_dir = None
    if not args.skip_binaries:
        bin_dir = args.bin_dir
        missing = [b for b in BINARIES if bin_dir is None or not (bin_dir / b).is_file()]
        if missing:
            print(f"validate-deploy: {', '.join(missing)} not found in {bin_dir}: run `cargo build --bins` first",
                  file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="hookfold-validate-") as scratch:
        check_kubernetes(problems, args.k8s, bin_dir, Path(scratch))
        check_compose(problems, args.compose, bin_dir, Path(scratch))
    for line in problems.passed:
        print(f"  ok  {line}")
    for line in problems.items:
        print(f"  PROBLEM  {line}")
    return 1 if problems.items else 0


if __name__ == "__main__":
    sys.exit(main())

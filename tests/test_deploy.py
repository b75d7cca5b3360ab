"""deploy/: the Kubernetes overlays as kubectl renders them, the Dockerfile's settings and the Grafana dashboard.

`make deploy-check` validates every overlay against the Kubernetes 1.32 schemas; this checks what a schema cannot:
that each container's settings, as the program would load them from the image's variables, the pod's variables
(downward API and $(VAR) references included), its mounted ConfigMaps and its flags, are valid settings and agree with
the manifest (ports, probes, writable volumes under a read-only root, the termination budget, the memory limit
against the broker's byte cap), that every pod of the sharded StatefulSet has its own inputs, and that every metric
the dashboard queries is one the program exports.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from rxstreamer.broker.server import STOP_GRACE
from rxstreamer.config import DECLARATIONS, ENV_CONFIG, ENV_NESTING, ENV_PREFIX, Settings, load_settings
from rxstreamer.durations import parse_size
from tests.processes import REPO_ROOT, child_env

DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = sorted(path.name for path in (DEPLOY / "overlays").iterdir() if path.is_dir())
DASHBOARD = DEPLOY / "grafana" / "rxstreamer.json"
STREAMER_METRICS_PORT = 9464
BROKER_METRICS_PORT = 9465
# After SIGTERM, beyond shutdown.timeout (streamer) or the gRPC stop grace (broker): closing the channel, the final
# checkpoint's fsync, the database's close and the summary line. Generous: each takes milliseconds when disks are fine.
STOP_MARGIN_S = 5.0

# What the program exports (the brief of the metrics endpoint), with each metric's labels; a histogram also has the
# label `le` on its `_bucket` series. Every name is also looked for in the package's source, so a renamed metric
# fails here as well as in the dashboard.
METRICS: dict[str, set[str]] = {
    "rxstreamer_rows_read_total": set(),
    "rxstreamer_rows_published_total": set(),
    "rxstreamer_rows_rejected_total": {"reason"},
    "rxstreamer_rows_filtered_total": set(),
    "rxstreamer_rows_copied_total": set(),
    "rxstreamer_rows_in_other_shards_total": set(),
    "rxstreamer_rows_out_of_order_total": set(),
    "rxstreamer_behind_schedule_seconds": set(),
    "rxstreamer_rows_in_flight": set(),
    "rxstreamer_batches_published_total": set(),
    "rxstreamer_duplicates_total": set(),
    "rxstreamer_publish_attempts_total": {"outcome"},
    "rxstreamer_publish_duration_seconds": set(),
    "rxstreamer_batches_in_flight": set(),
    "rxstreamer_queue_up": set(),
    "rxstreamer_checkpoint_sequence": set(),
    "rxstreamer_pacing_lateness_seconds": set(),
    "rxstreamer_newest_row_lag_seconds": set(),
    "rxstreamer_scrape_target_up": {"target"},
    "rxstreamer_scrapes_total": {"target", "outcome"},
    "rxstreamer_broker_messages_total": {"topic"},
    "rxstreamer_broker_bytes_total": {"topic"},
    "rxstreamer_broker_duplicates_total": {"topic"},
    "rxstreamer_broker_rejections_total": {"reason"},
    "rxstreamer_broker_retained_messages": {"topic"},
    "rxstreamer_broker_retained_bytes": {"topic"},
    "rxstreamer_broker_subscribers": set(),
}
HISTOGRAMS = {"rxstreamer_publish_duration_seconds", "rxstreamer_pacing_lateness_seconds"}
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"instance", "job"}


# --- rendering --------------------------------------------------------------------------------------------------


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (make deploy-check says so and fails)")
    return found


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's objects, as `kubectl kustomize` renders them."""
    objects = {}
    for overlay in OVERLAYS:
        finished = subprocess.run(
            [kubectl(), "kustomize", str(DEPLOY / "overlays" / overlay)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert finished.returncode == 0, f"{overlay}: {finished.stderr}"
        objects[overlay] = [item for item in yaml.safe_load_all(finished.stdout) if item]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [item for item in by_kind(objects, kind) if item["metadata"]["name"] == name]
    assert len(matches) == 1, f"no single {kind} {name} in {[item['metadata']['name'] for item in objects]}"
    return matches[0]


def workloads(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] in ("Deployment", "StatefulSet")]


def pod_names(workload: dict[str, Any]) -> list[str]:
    """The pods' names where the manifest can see them (a StatefulSet's are stable; a Deployment's are not)."""
    name = workload["metadata"]["name"]
    if workload["kind"] == "StatefulSet":
        return [f"{name}-{ordinal}" for ordinal in range(workload["spec"]["replicas"])]
    return [f"{name}-5d4f8b9c7-x2x9q"]


# --- the image ----------------------------------------------------------------------------------------------------


def dockerfile_runtime() -> list[tuple[str, str]]:
    """The last stage's instructions, continuation lines joined, comments dropped."""
    lines = [line for line in (REPO_ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")]
    logical = re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines()
    stages: list[list[tuple[str, str]]] = []
    for line in filter(str.strip, logical):
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages[-1]


def image_environment() -> dict[str, str]:
    variables: dict[str, str] = {}
    for instruction, arguments in dockerfile_runtime():
        if instruction == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                variables[name] = value
    return variables


def setting_of(variable: str) -> str:
    return variable.removeprefix(ENV_PREFIX).lower().replace(ENV_NESTING, ".")


# --- a container's settings, as the program would load them --------------------------------------------------------


@dataclass(frozen=True)
class Container:
    workload: dict[str, Any]
    pod: str
    spec: dict[str, Any]
    env: dict[str, str]
    settings: Settings

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.workload["spec"]["template"]["spec"]
        return spec

    @property
    def command(self) -> str:
        command: str = self.spec["args"][0]
        return command

    def port(self, name: str) -> int:
        ports = [port["containerPort"] for port in self.spec.get("ports", []) if port["name"] == name]
        assert len(ports) == 1, f"{self.pod}: no port named {name}"
        port: int = ports[0]
        return port


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) references to variables defined before (an unknown one stays as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda match: env.get(match.group(1), match.group(0)), value)


NAME_FIELD = "metadata.name"
# The label the StatefulSet controller puts on each pod (Kubernetes 1.28 and newer): its ordinal.
POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"


def container_env(objects: list[dict[str, Any]], spec: dict[str, Any], pod: str) -> dict[str, str]:
    """The image's variables, then envFrom's ConfigMaps, then env (downward API: the pod's name, or its ordinal), as
    the kubelet builds them."""
    env = dict(image_environment())
    for source in spec.get("envFrom", []):
        env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in spec.get("env", []):
        if "valueFrom" in variable:
            field_path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            assert field_path in (NAME_FIELD, POD_INDEX_FIELD), variable
            env[variable["name"]] = pod if field_path == NAME_FIELD else pod.rpartition("-")[2]
        else:
            env[variable["name"]] = expand(variable["value"], env)
    return env


def flag_overrides(args: list[str]) -> dict[str, object]:
    """The setting flags of `rxstreamer COMMAND --flag value ...`, by setting name."""
    command, rest = args[0], list(args[1:])
    flags = {decl.flag: name for name, decl in DECLARATIONS.items() if decl.flag and command in decl.commands}
    overrides: dict[str, object] = {}
    while rest:
        flag = rest.pop(0)
        switch = flag.replace("--no-", "--", 1)  # a boolean setting's flag takes no value: --loop / --no-loop
        if switch in flags and isinstance(DECLARATIONS[flags[switch]].default, bool):
            overrides[flags[switch]] = flag == switch
            continue
        assert flag in flags, f"{flag} is no setting flag of `rxstreamer {command}`"
        assert rest, f"{flag} has no value: {args}"
        overrides[flags[flag]] = rest.pop(0)
    return overrides


def mounted_config(
    objects: list[dict[str, Any]], pod_spec: dict[str, Any], spec: dict[str, Any], path: str, root: Path
) -> Path:
    """Where ``path`` inside the container is, once the ConfigMap volume mounted over it is written under ``root``."""
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    for mount in spec.get("volumeMounts", []):
        prefix: str = mount["mountPath"].rstrip("/") + "/"
        volume = volumes.get(mount["name"], {})
        if path.startswith(prefix) and "configMap" in volume:
            assert "subPath" not in mount
            directory = root / str(mount["name"])
            directory.mkdir(parents=True, exist_ok=True)
            for key, text in named(objects, "ConfigMap", volume["configMap"]["name"])["data"].items():
                (directory / key).write_text(text)
            return directory / path.removeprefix(prefix)
    raise AssertionError(f"{path} is on no ConfigMap volume")


def containers(objects: list[dict[str, Any]], root: Path) -> Iterator[Container]:
    """Every container of every pod the overlay makes, with the settings it would run with."""
    for workload in workloads(objects):
        pod_spec = workload["spec"]["template"]["spec"]
        for pod in pod_names(workload):
            for spec in pod_spec["containers"]:
                env = container_env(objects, spec, pod)
                for variable in env:
                    if variable.startswith(ENV_PREFIX) and variable != ENV_CONFIG:
                        assert setting_of(variable) in DECLARATIONS, f"{pod}: {variable} is no setting"
                environ = dict(env)
                if ENV_CONFIG in env:
                    where = root / pod / spec["name"]
                    environ[ENV_CONFIG] = str(mounted_config(objects, pod_spec, spec, env[ENV_CONFIG], where))
                settings = load_settings(overrides=flag_overrides(spec["args"]), environ=environ)
                yield Container(workload, pod, spec, env, settings)


@pytest.fixture(scope="module")
def loaded(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Container]]:
    root = tmp_path_factory.mktemp("deploy")
    return {overlay: list(containers(objects, root / overlay)) for overlay, objects in rendered.items()}


def under_writable_volume(container: Container, path: Path) -> bool:
    """Whether ``path`` is on a volume mounted read-write (an emptyDir or a claim): the root filesystem is not."""
    claims = {claim["metadata"]["name"] for claim in container.workload["spec"].get("volumeClaimTemplates", [])}
    empty_dirs = {volume["name"] for volume in container.pod_spec.get("volumes", []) if "emptyDir" in volume}
    for mount in container.spec.get("volumeMounts", []):
        if mount.get("readOnly") or mount["name"] not in claims | empty_dirs:
            continue
        if path.is_relative_to(mount["mountPath"]):
            return True
    return False


def memory_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


# --- the overlays -------------------------------------------------------------------------------------------------


def test_there_are_the_four_overlays() -> None:
    assert OVERLAYS == ["nats", "reference", "replay", "sharded"]


def test_every_overlay_passes_kubernetes_validate_strictly(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """What `make deploy-check` runs, here too, so that pytest alone catches it: nothing printed, exit 0."""
    validate = Path(sys.executable).parent / "kubernetes-validate"
    if not validate.exists():
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[dev]')")
    for overlay in OVERLAYS:
        manifest = yaml.safe_dump_all(rendered[overlay])
        finished = subprocess.run(
            [str(validate), "--strict", "-k", "1.32", "--quiet", "-"],
            input=manifest, capture_output=True, text=True, timeout=60, check=False, env=child_env(),
        )  # fmt: skip
        assert (finished.returncode, finished.stdout + finished.stderr) == (0, ""), overlay


def test_each_overlay_has_the_workloads_it_describes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {
        overlay: sorted(f"{item['kind']}/{item['metadata']['name']}" for item in workloads(objects))
        for overlay, objects in rendered.items()
    }
    assert kinds == {
        "nats": ["Deployment/rxstreamer"],
        "reference": ["Deployment/rxstreamer", "StatefulSet/rxstreamer-mq"],
        "replay": ["StatefulSet/rxstreamer-mq", "StatefulSet/rxstreamer-replay"],
        "sharded": ["StatefulSet/rxstreamer-mq", "StatefulSet/rxstreamer-sharded"],
    }


def test_every_container_runs_locked_down(loaded: dict[str, list[Container]]) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, the runtime's seccomp profile,
    no service account token, requests and limits for CPU and memory, a writable /tmp."""
    for container in (item for items in loaded.values() for item in items):
        pod_security = container.pod_spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True
        assert pod_security["runAsUser"] == 10001
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container.pod_spec["automountServiceAccountToken"] is False
        security = container.spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        resources = container.spec["resources"]
        assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
        assert under_writable_volume(container, Path("/tmp/x")), container.pod


def test_ports_probes_and_scrape_annotations_agree_with_the_settings(loaded: dict[str, list[Container]]) -> None:
    """The metrics endpoint listens where the probes and Prometheus look: 9464 for streamers, 9465 for the broker;
    /readyz for readiness, /healthz for liveness; the broker's gRPC port is the one it listens on."""
    for container in (item for items in loaded.values() for item in items):
        expected = BROKER_METRICS_PORT if container.command == "mq" else STREAMER_METRICS_PORT
        host, _, port = container.settings.observability.listen.rpartition(":")
        assert (host, int(port)) == ("0.0.0.0", expected), container.pod
        assert container.port("metrics") == expected
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert container.spec[probe]["httpGet"] == {"path": path, "port": "metrics"}, (container.pod, probe)
        annotations = container.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(expected),
            "prometheus.io/path": "/metrics",
        }
        if container.command == "mq":
            assert container.settings.broker.listen == f"0.0.0.0:{container.port('grpc')}"


def test_state_is_on_writable_volumes(loaded: dict[str, list[Container]]) -> None:
    """Checkpoints and the broker's database are on volumes (the root filesystem is read-only); the broker's on a
    claim of its own, written with fsync before every acknowledgement."""
    for container in (item for items in loaded.values() for item in items):
        settings = container.settings
        if container.command == "mq":
            assert settings.broker.data_dir is not None
            assert settings.broker.fsync == "always"
            assert under_writable_volume(container, settings.broker.data_dir)
            claims = [claim["metadata"]["name"] for claim in container.workload["spec"]["volumeClaimTemplates"]]
            mounts = {mount["name"]: mount["mountPath"] for mount in container.spec["volumeMounts"]}
            assert any(settings.broker.data_dir.is_relative_to(mounts[claim]) for claim in claims)
        else:
            assert settings.telemetry.checkpoint_path is not None
            assert under_writable_volume(container, settings.telemetry.checkpoint_path.parent)


def test_the_grace_period_covers_the_whole_stop(loaded: dict[str, list[Container]]) -> None:
    """terminationGracePeriodSeconds > preStop + the program's own stop (shutdown.timeout for the publish in flight,
    or the broker's grace for in-flight RPCs) + a margin for the final checkpoint and closing."""
    for container in (item for items in loaded.values() for item in items):
        pre_stop = container.spec.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        stop = STOP_GRACE if container.command == "mq" else container.settings.shutdown.timeout
        budget = pre_stop + stop + STOP_MARGIN_S
        assert container.pod_spec["terminationGracePeriodSeconds"] > budget, (container.pod, budget)


def test_the_broker_pods_memory_limit_covers_what_it_may_retain(loaded: dict[str, list[Container]]) -> None:
    """Retained payloads stay in memory: the limit leaves at least half of broker.max_total_bytes plus 64 MiB over
    it (measured: about 55 MB for the process and 0.9 KB per message), and the default 1 GiB cap is lowered."""
    brokers = [container for items in loaded.values() for container in items if container.command == "mq"]
    assert brokers
    for container in brokers:
        cap = container.settings.broker.max_total_bytes
        assert cap < parse_size("1GiB")
        limit = memory_bytes(container.spec["resources"]["limits"]["memory"])
        assert limit >= cap * 1.5 + (64 << 20), (cap, limit)


def test_streamers_publish_where_the_overlay_says(
    rendered: dict[str, list[dict[str, Any]]], loaded: dict[str, list[Container]]
) -> None:
    """reference and sharded: to the broker's Service, on a port that reaches the broker's gRPC port; nats: to the
    NATS servers of the settings, with no broker at all."""
    for overlay, items in loaded.items():
        objects = rendered[overlay]
        for container in (item for item in items if item.command == "run"):
            address = container.settings.message_queue.address
            if overlay == "nats":
                assert address.startswith("nats://")
                assert len(address.split(",")) == 3
                assert not [item for item in items if item.command == "mq"]
                continue
            host, _, port = address.rpartition(":")
            service = named(objects, "Service", host)
            broker = next(item for item in items if item.command == "mq")
            labels = broker.workload["spec"]["template"]["metadata"]["labels"]
            assert service["spec"]["selector"].items() <= labels.items()
            ports = [entry for entry in service["spec"]["ports"] if entry["port"] == int(port)]
            assert len(ports) == 1
            assert broker.port(ports[0]["targetPort"]) == int(broker.settings.broker.listen.rpartition(":")[2])


def test_a_deployment_is_one_producer_and_never_two(loaded: dict[str, list[Container]]) -> None:
    """One pod, replaced by Recreate: two pods with the same settings would publish the same scrapes twice. Its
    producer id follows the pod's name (telemetry.instance empty: the host name), as its checkpoint on the pod's
    emptyDir does."""
    for container in (item for items in loaded.values() for item in items):
        if container.workload["kind"] != "Deployment":
            continue
        assert container.workload["spec"]["replicas"] == 1
        assert container.workload["spec"]["strategy"] == {"type": "Recreate"}
        assert container.settings.telemetry.instance == ""
        state = {volume["name"]: volume for volume in container.pod_spec["volumes"]}["state"]
        assert "emptyDir" in state


def test_each_shard_is_its_own_producer_with_its_own_inputs(loaded: dict[str, list[Container]]) -> None:
    """The sharded StatefulSet: each pod's instance is its name, its file of inputs is the one named after it, no
    target is scraped by two shards, and a pod past the files the ConfigMap has is refused at start."""
    shards = [item for item in loaded["sharded"] if item.workload["metadata"]["name"] == "rxstreamer-sharded"]
    assert [shard.pod for shard in shards] == ["rxstreamer-sharded-0", "rxstreamer-sharded-1"]
    seen: set[str] = set()
    for shard in shards:
        assert shard.settings.telemetry.instance == shard.pod
        assert shard.env[ENV_CONFIG] == f"/etc/rxstreamer/shards/{shard.pod}.toml"
        targets = shard.settings.telemetry.metrics_path
        assert isinstance(targets, tuple)
        assert targets
        assert seen.isdisjoint(targets)
        seen.update(targets)
        assert shard.settings.telemetry.start_over is True
        claims = [claim["metadata"]["name"] for claim in shard.workload["spec"]["volumeClaimTemplates"]]
        assert claims == ["state"]


def test_each_replay_pod_sends_the_shard_of_its_ordinal(
    rendered: dict[str, list[dict[str, Any]]], loaded: dict[str, list[Container]]
) -> None:
    """The replay StatefulSet: pod i is shard i of N, N being its replicas, so the pods send the recording once between
    them; each is one process (no --workers: its own endpoint and limit), loops the recording mounted from its
    ConfigMap at the recording's own pace, stamped with the time of sending, and keeps its checkpoint on a claim."""
    pods = [item for item in loaded["replay"] if item.workload["metadata"]["name"] == "rxstreamer-replay"]
    replicas = pods[0].workload["spec"]["replicas"]
    assert [pod.pod for pod in pods] == [f"rxstreamer-replay-{ordinal}" for ordinal in range(replicas)]
    for ordinal, pod in enumerate(pods):
        telemetry = pod.settings.telemetry
        assert telemetry.shard == f"{ordinal}/{replicas}", pod.pod
        assert telemetry.workers == 1
        assert (telemetry.pace, telemetry.loop, telemetry.timestamps) == ("original", True, "processing")
        recording = telemetry.metrics_path
        assert isinstance(recording, Path)
        volumes = {volume["name"]: volume for volume in pod.pod_spec["volumes"]}
        mount = next(m for m in pod.spec["volumeMounts"] if recording.is_relative_to(m["mountPath"]))
        config_map = named(rendered["replay"], "ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        text = config_map["data"][str(recording.relative_to(mount["mountPath"]))]
        assert text.startswith("timestamp,metric_name,"), text[:80]
        assert len(text.encode()) < 256 << 10  # `kubectl apply` keeps a copy in an annotation of at most 256 KiB
        claims = [claim["metadata"]["name"] for claim in pod.workload["spec"]["volumeClaimTemplates"]]
        assert claims == ["state"]


def test_the_nats_overlay_changes_only_the_queue(loaded: dict[str, list[Container]]) -> None:
    """streamer.local.toml is read over the base's streamer.toml: the queue changes, everything else stays."""
    nats = next(item for item in loaded["nats"] if item.command == "run")
    reference = next(item for item in loaded["reference"] if item.command == "run")
    assert nats.settings.message_queue.nats.stream == "GPU_TELEMETRY"
    assert nats.settings.telemetry == reference.settings.telemetry
    assert nats.settings.message_queue.address != reference.settings.message_queue.address


# --- the image's settings and health check ----------------------------------------------------------------------


def test_the_images_variables_are_settings() -> None:
    """Every RXSTREAMER_ variable the Dockerfile sets names a setting, and the endpoint is on in the container."""
    variables = image_environment()
    for variable in variables:
        if variable.startswith(ENV_PREFIX):
            assert setting_of(variable) in DECLARATIONS, variable
    settings = load_settings(environ={key: value for key, value in variables.items() if key.startswith(ENV_PREFIX)})
    assert settings.observability.listen == f"0.0.0.0:{STREAMER_METRICS_PORT}"
    assert settings.broker.listen == "0.0.0.0:50051"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("listen", "status", "healthy"), [
    ("0.0.0.0:{port}", 200, True), ("127.0.0.1:{port}", 200, True), ("[::]:{port}", 200, True),
    ("0.0.0.0:{port}", 503, False),
])  # fmt: skip
def test_the_images_health_check_asks_healthz_on_the_configured_port(listen: str, status: int, healthy: bool) -> None:
    """The HEALTHCHECK command (python's urllib: slim has no curl) reads the port from the image's variable."""
    checks = [arguments for instruction, arguments in dockerfile_runtime() if instruction == "HEALTHCHECK"]
    assert len(checks) == 1
    command = json.loads(checks[0].partition(" CMD ")[2])
    assert command[0] == "python"
    handler = type("Health", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        variable = {"RXSTREAMER_OBSERVABILITY__LISTEN": listen.format(port=server.server_address[1])}
        finished = subprocess.run(
            [sys.executable, *command[1:]], env={**child_env(), **variable}, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert (finished.returncode == 0) is healthy, finished.stderr


# --- the dashboard ------------------------------------------------------------------------------------------------


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def metric_names(expr: str) -> set[str]:
    """The rxstreamer metrics an expression reads, a histogram's _bucket/_sum/_count series by the histogram."""
    names = set()
    for name in re.findall(r"\brxstreamer_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def test_the_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels(dashboard["panels"]))
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["description"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_the_dashboard_queries_only_metrics_the_program_exports() -> None:
    """Every metric an expression (or a variable's query) names is an exported one, with labels it has; every
    exported metric has a panel; and each name is still written in the package's source."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"] for panel in dashboard_panels(dashboard["panels"]) for target in panel.get("targets", [])
    ]
    expressions += [
        variable["query"]["query"] for variable in dashboard["templating"]["list"] if variable["type"] == "query"
    ]
    used: set[str] = set()
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        assert names <= set(METRICS), f"{sorted(names - set(METRICS))} in {expr}"
        used |= names
        labels = set().union(*(METRICS[name] for name in names)) | TARGET_LABELS
        if names & HISTOGRAMS:
            labels.add("le")
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {label.strip() for label in grouping.split(",")}
            assert grouped <= labels, f"{sorted(grouped - labels)} in {expr}"
    assert used == set(METRICS), f"no panel for {sorted(set(METRICS) - used)}"
    source = "\n".join(path.read_text() for path in (REPO_ROOT / "rxstreamer").rglob("*.py"))
    assert [name for name in METRICS if f'"{name}"' not in source] == []

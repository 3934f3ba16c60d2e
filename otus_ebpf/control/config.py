"""The YAML config file: node, metrics, control socket, defaults and tasks.

The file is read with yaml's safe composer, so every value keeps its line,
and checked whole: every problem is collected and reported at once as
``file:line: key.path: what is wrong`` (``otus-ebpf validate FILE`` exits 2
on any). ``defaults`` is merged under every task, key by key and section by
section. ``OTUS_``-prefixed environment variables override the top-level
scalars (``ENV_OVERRIDES``); nothing else reads the environment. The schema
is documented in docs/CONFIG.md.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from otus_ebpf.capture.sources import CaptureDirection, CaptureMode
from otus_ebpf.control.bounds import (
    HEP_CAPTURE_ID,
    KAFKA_BACKLOG_MB,
    KAFKA_BATCH,
    KAFKA_LINGER_MS,
    KAFKA_QUEUE_KB,
    QUEUE_RECORDS,
    RING_MB,
    ROTATE_AGE_S,
    ROTATE_MB,
    STATS_INTERVAL_S,
    Bound,
    parse_float,
    parse_int,
)
from otus_ebpf.errors import SetupError
from otus_ebpf.files import NotRegularFile, read_bounded
from otus_ebpf.kernel.abi import Network
from otus_ebpf.kernel.attach import AttachMethod, XdpMode
from otus_ebpf.kernel.settings import (
    DEFAULT_MEDIA_SNAPLEN,
    DEFAULT_RING_MB,
    DEFAULT_SIP_PORTS,
    DEFAULT_SNAPLEN,
    MAX_SHARDS,
    MAX_SNAPLEN,
    MIN_SNAPLEN,
    Delivery,
    KernelSettings,
    MediaMode,
)
from otus_ebpf.options import AttachOptions, Dispatch, Strategy
from otus_ebpf.outputs.hep_transport import HepCollector, parse_collector
from otus_ebpf.outputs.kafka_producer import COMPRESSIONS, KafkaSecurity, KafkaSettings
from otus_ebpf.secret import read_secret
from userspace.calls import CallLimits
from userspace.numbers import ascii_int
from userspace.reassembly import ReassemblyLimits
from userspace.reporters import Rotation
from userspace.reporters.hep import HepIdentity
from userspace.reporters.jsonl import FsyncPolicy
from userspace.reporters.kafka import BacklogLimits, KafkaRouting, KeyChoice, OverflowPolicy
from userspace.reporters.pcap import PcapFormat
from userspace.tcp import TcpLimits

MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_NODES = 100_000  # values in the file once aliases are expanded
MAX_WHOLE = 1 << 62  # no whole-number setting means more
DEFAULT_METRICS_LISTEN = "127.0.0.1:9091"
DEFAULT_CONTROL_SOCKET = "/run/otus-ebpf/control.sock"
# The only environment the config reads: variable -> key path it overrides.
ENV_OVERRIDES = {
    "OTUS_NODE_NAME": "node.name",
    "OTUS_METRICS_LISTEN": "metrics.listen",
    "OTUS_CONTROL_SOCKET": "control.socket",
}
E = TypeVar("E", bound=Enum)
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the problem has no place in the file (an environment variable)
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}"


class ConfigInvalid(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TaskConfig:
    name: str
    options: AttachOptions
    dispatch: Dispatch = Dispatch.BINDING


@dataclass(frozen=True, slots=True)
class Config:
    node_name: str
    metrics_listen: str | None  # None: no metrics endpoint
    control_socket: str
    tasks: tuple[TaskConfig, ...] = ()
    source: str = "<built-in defaults>"


def default_workers() -> int:
    """The CPUs this process may run on (its affinity, not the host's count), at most the shards."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_SHARDS))


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the file; raises ConfigInvalid with every problem found."""
    return parse(read_text(path), str(path), os.environ if environ is None else environ)


def read_text(path: Path) -> str:
    """The file as text: at most MAX_CONFIG_BYTES of UTF-8, else ConfigInvalid in one line."""
    def refuse(message: str) -> ConfigInvalid:
        return ConfigInvalid([Problem(str(path), 0, "(file)", message)])

    try:
        data = read_bounded(path, MAX_CONFIG_BYTES)
    except NotRegularFile:
        raise refuse("not a regular file") from None
    except OSError as exc:
        raise refuse(f"cannot read: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise refuse(f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ConfigInvalid([Problem(str(path), line, "(file)",
                                     f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")]
                            ) from None


def parse(text: str, file: str, environ: Mapping[str, str]) -> Config:
    checker = _Checker(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigInvalid([Problem(file, line, "(syntax)", f"not valid YAML: {problem}")]) from None
    shape = _shape_problem(root)
    if shape is not None:
        node, message = shape
        raise ConfigInvalid([Problem(file, node.start_mark.line + 1, "(syntax)", message)])
    config = checker.config(root, environ)
    if checker.problems:
        raise ConfigInvalid(sorted(checker.problems, key=lambda p: p.line))
    return config


class _Checker:
    """Walks the composed YAML; each accessor records a problem and returns a
    fallback instead of raising, so one pass finds everything."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def problem(self, node: yaml.Node | None, path: str, message: str) -> None:
        mark = node.start_mark if node is not None else None
        if mark is not None and mark.name.startswith("$"):  # a value from the environment
            self.problems.append(Problem(mark.name, 0, path, message))
            return
        line = mark.line + 1 if mark is not None else 0
        self.problems.append(Problem(self.file, line, path or "(top level)", message))

    # -- structure --------------------------------------------------------

    def mapping(self, node: yaml.Node | None, path: str, allowed: tuple[str, ...]) -> dict[str, yaml.Node]:
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, path, "must be a mapping of keys to values")
            return {}
        found: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = _join(path, str(key))
            if key not in allowed:
                self.problem(key_node, where, f"unknown key (expected one of: {', '.join(allowed)})")
            elif key in found:
                self.problem(key_node, where, "given twice")
            else:
                found[key] = value_node
        return found

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node]:
        if node is None or _is_null(node):
            return []
        if isinstance(node, yaml.ScalarNode):
            return [node]  # one value where a list is expected: a list of one
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, path, "must be a list")
            return []
        return list(node.value)

    # -- scalars ----------------------------------------------------------

    def scalar(self, node: yaml.Node, path: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "must be a single value")
            return None
        return str(node.value)

    def given(self, node: yaml.Node | None, path: str) -> str | None:
        """The value of a key that is there and a single value; None otherwise (a problem said if wrong)."""
        return None if node is None else self.scalar(node, path)

    def string(self, node: yaml.Node | None, path: str, default: str) -> str:
        value = self.given(node, path)
        if value is None:
            return default
        if not value.strip():
            self.problem(node, path, "must not be empty")
            return default
        return value

    def optional_string(self, node: yaml.Node | None, path: str) -> str | None:
        return None if node is None or _is_null(node) else self.string(node, path, "")

    def integer(self, node: yaml.Node | None, path: str, default: int, low: int,
                high: int = MAX_WHOLE) -> int:
        value = self.given(node, path)
        if value is None:
            return default
        try:
            return parse_int(value, Bound(low, high))
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return default

    def number(self, node: yaml.Node | None, path: str, default: float, bound: Bound) -> float:
        value = self.given(node, path)
        if value is None:
            return default
        try:
            return parse_float(value, bound)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return default

    def bounded(self, node: yaml.Node | None, path: str, default: int, bound: Bound) -> int:
        return self.integer(node, path, default, int(bound.low), int(bound.high))

    def boolean(self, node: yaml.Node | None, path: str, default: bool) -> bool:
        value = self.given(node, path)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "yes", "on"):
            return True
        if lowered in ("false", "no", "off"):
            return False
        self.problem(node, path, f"must be true or false, not {value!r}")
        return default

    def choice(self, node: yaml.Node | None, path: str, enum: type[E], default: E) -> E:
        value = self.given(node, path)
        if value is None:
            return default
        for member in enum:
            if member.value == value:
                return member
        self.problem(node, path, f"must be one of {', '.join(str(m.value) for m in enum)}, not {value!r}")
        return default

    def one_of(self, node: yaml.Node | None, path: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(node, path, default)
        if value not in options:
            self.problem(node, path, f"must be one of {', '.join(options)}, not {value!r}")
            return default
        return value

    def listen_address(self, node: yaml.Node | None, path: str, default: str) -> str | None:
        value = self.string(node, path, default) if node is None or not _is_null(node) else ""
        if value in ("", "off"):
            return None
        host, _, port = value.rpartition(":")
        number = ascii_int(port, max_digits=5)
        if not host or number is None or not 0 < number < 65536:
            self.problem(node, path, f"must be HOST:PORT (or off), not {value!r}")
            return default
        return value

    def secret_file(self, node: yaml.Node | None, path: str) -> str | None:
        name = self.optional_string(node, path)
        if name is None:
            return None
        try:
            return read_secret(name)
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return None

    # -- sections -----------------------------------------------------------

    def config(self, root: yaml.Node | None, environ: Mapping[str, str]) -> Config:
        top = self.mapping(root, "", ("node", "metrics", "control", "defaults", "tasks"))
        node = self.mapping(top.get("node"), "node", ("name",))
        metrics = self.mapping(top.get("metrics"), "metrics", ("listen",))
        control = self.mapping(top.get("control"), "control", ("socket",))
        sections = {"node": node, "metrics": metrics, "control": control}
        for variable, key_path in ENV_OVERRIDES.items():
            if variable in environ:
                section, key = key_path.split(".")
                mark = yaml.Mark(f"${variable}", 0, -1, 0, None, 0)
                sections[section][key] = yaml.ScalarNode(_STR_TAG, environ[variable], mark, mark)
        defaults = top.get("defaults")
        if isinstance(defaults, yaml.MappingNode):
            self.task(defaults, "defaults", partial=True)  # its problems, said once, under its own name
            in_defaults = len(self.problems)
            tasks = tuple(self.tasks(top.get("tasks"), defaults))
            first, last = defaults.start_mark.line + 1, defaults.end_mark.line + 1
            self.problems[in_defaults:] = [p for p in self.problems[in_defaults:]
                                           if not (first <= p.line <= last and p.path.startswith("tasks["))]
        else:
            if defaults is not None and not _is_null(defaults):
                self.problem(defaults, "defaults", "must be a mapping of task keys to values")
            tasks = tuple(self.tasks(top.get("tasks"), None))
        return Config(
            node_name=self.string(node.get("name"), "node.name", socket.gethostname()),
            metrics_listen=self.listen_address(metrics.get("listen"), "metrics.listen",
                                               DEFAULT_METRICS_LISTEN),
            control_socket=self.string(control.get("socket"), "control.socket", DEFAULT_CONTROL_SOCKET),
            tasks=tasks, source=self.file,
        )

    def tasks(self, node: yaml.Node | None, defaults: yaml.Node | None) -> list[TaskConfig]:
        tasks, names = [], set()
        for i, task_node in enumerate(self.sequence(node, "tasks")):
            path = f"tasks[{i}]"
            merged = _merge(defaults, task_node) if isinstance(task_node, yaml.MappingNode) else task_node
            task = self.task(merged, path)
            if task is None:
                continue
            if task.name in names:
                self.problem(task_node, f"{path}.name", f"task {task.name!r} is defined twice")
            names.add(task.name)
            tasks.append(task)
        return tasks

    def task(self, node: yaml.Node, path: str, partial: bool = False) -> TaskConfig | None:
        """A task; ``partial`` (the defaults) needs neither a name nor interfaces."""
        keys = self.mapping(node, path, TASK_KEYS)
        if not keys and isinstance(node, yaml.MappingNode) and not partial:
            self.problem(node, path, "a task needs at least a name and interfaces")
            return None
        if "name" not in keys and not partial:
            self.problem(node, path, "missing key: name")
        name = self.string(keys.get("name"), f"{path}.name", f"task-{path}")
        interfaces = [self.string(n, f"{path}.interfaces[{j}]", "?")
                      for j, n in enumerate(self.sequence(keys.get("interfaces"), f"{path}.interfaces"))]
        if not interfaces and not partial:
            self.problem(keys.get("interfaces", node), f"{path}.interfaces",
                         "at least one interface is needed")
        workers = self.integer(keys.get("workers"), f"{path}.workers", default_workers(), 1, MAX_SHARDS)
        kernel = self.kernel(keys.get("filter"), f"{path}.filter", workers,
                             self.choice(keys.get("delivery"), f"{path}.delivery", Delivery, Delivery.AUTO))
        options = AttachOptions(
            interfaces=tuple(dict.fromkeys(interfaces)),
            mode=self.choice(keys.get("mode"), f"{path}.mode", CaptureMode, CaptureMode.AUTO),
            direction=self.choice(keys.get("direction"), f"{path}.direction", CaptureDirection,
                                  CaptureDirection.BOTH),
            xdp_mode=self.choice(keys.get("xdp_mode"), f"{path}.xdp_mode", XdpMode, XdpMode.AUTO),
            method=self.choice(keys.get("attach_method"), f"{path}.attach_method", AttachMethod,
                               AttachMethod.AUTO),
            force=self.boolean(keys.get("force"), f"{path}.force", False),
            kernel=kernel,
            reassembly=self.reassembly(keys.get("reassembly"), f"{path}.reassembly"),
            tcp=self.tcp(keys.get("tcp"), f"{path}.tcp"),
            calls=self.calls(keys.get("calls"), f"{path}.calls"),
            stats_interval_s=self.number(keys.get("stats_interval_s"), f"{path}.stats_interval_s", 5.0,
                                         STATS_INTERVAL_S),
        )
        options = self.outputs(keys.get("outputs"), f"{path}.outputs", options, name)
        dispatch = self.choice(keys.get("dispatch"), f"{path}.dispatch", Dispatch, Dispatch.BINDING)
        strategy = self.choice(keys.get("strategy"), f"{path}.strategy", Strategy, Strategy.FLOW_HASH)
        options = _replace(options, {"dispatch": dispatch, "strategy": strategy})
        return TaskConfig(name, options, dispatch)

    def kernel(self, node: yaml.Node | None, path: str, workers: int, delivery: Delivery) -> KernelSettings:
        keys = self.mapping(node, path, ("sip_ports", "signature", "include", "exclude", "snaplen",
                                         "media_snaplen", "ring_mb", "media"))
        ports = tuple(self.integer(n, f"{path}.sip_ports[{i}]", 5060, 1, 65535)
                      for i, n in enumerate(self.sequence(keys.get("sip_ports"), f"{path}.sip_ports")))
        snaplen = self.integer(keys.get("snaplen"), f"{path}.snaplen", DEFAULT_SNAPLEN, MIN_SNAPLEN,
                               MAX_SNAPLEN)
        ring_mb = self.bounded(keys.get("ring_mb"), f"{path}.ring_mb", DEFAULT_RING_MB, RING_MB)
        if ring_mb & (ring_mb - 1):
            self.problem(keys.get("ring_mb"), f"{path}.ring_mb", f"must be a power of two, not {ring_mb}")
            ring_mb = DEFAULT_RING_MB
        return KernelSettings(
            sip_ports=ports or DEFAULT_SIP_PORTS,
            signature=self.boolean(keys.get("signature"), f"{path}.signature", False),
            include=self.networks(keys.get("include"), f"{path}.include"),
            exclude=self.networks(keys.get("exclude"), f"{path}.exclude"),
            snaplen=snaplen,
            media_snaplen=self.integer(keys.get("media_snaplen"), f"{path}.media_snaplen",
                                       min(DEFAULT_MEDIA_SNAPLEN, snaplen), 0, snaplen),
            ring_mb=ring_mb, shards=workers, delivery=delivery,
            media=None if keys.get("media") is None else
            self.choice(keys.get("media"), f"{path}.media", MediaMode, MediaMode.STATS),
        )

    def networks(self, node: yaml.Node | None, path: str) -> tuple[Network, ...]:
        networks = []
        for i, item in enumerate(self.sequence(node, path)):
            text = self.scalar(item, f"{path}[{i}]")
            if text is None:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                self.problem(item, f"{path}[{i}]", f"not an IPv4/IPv6 network: {text!r}")
        return tuple(networks)

    def limits(self, node: yaml.Node | None, path: str, defaults: Any) -> dict[str, Any]:
        """A limits dataclass's fields, each within the ``range`` its declaration gives:
        whole numbers, or seconds (``_s``)."""
        fields = {f.name: f for f in dataclasses.fields(defaults)}
        keys = self.mapping(node, path, tuple(fields))
        values: dict[str, Any] = {}
        for name, value_node in keys.items():
            default = getattr(defaults, name)
            bound = Bound(*fields[name].metadata["range"])
            if name.endswith("_s"):
                values[name] = self.number(value_node, f"{path}.{name}", default, bound)
            else:
                values[name] = self.bounded(value_node, f"{path}.{name}", default, bound)
        return values

    def reassembly(self, node: yaml.Node | None, path: str) -> ReassemblyLimits:
        return ReassemblyLimits(**self.limits(node, path, ReassemblyLimits()))

    def tcp(self, node: yaml.Node | None, path: str) -> TcpLimits:
        return TcpLimits(**self.limits(node, path, TcpLimits()))

    def calls(self, node: yaml.Node | None, path: str) -> CallLimits:
        return CallLimits(**self.limits(node, path, CallLimits()))

    def rotation(self, keys: dict[str, yaml.Node], path: str) -> Rotation:
        max_mb = self.number(keys.get("max_mb"), f"{path}.max_mb", 0.0, ROTATE_MB)
        max_age = self.number(keys.get("max_age_s"), f"{path}.max_age_s", 0.0, ROTATE_AGE_S)
        return Rotation(None if not max_mb else int(max_mb * 2**20), max_age or None)

    def outputs(self, node: yaml.Node | None, path: str, options: AttachOptions, task: str) -> AttachOptions:
        keys = self.mapping(node, path, ("jsonl", "pcap", "kafka", "hep", "fallback", "queue_records",
                                         "per_worker_files"))
        jsonl = self.mapping(keys.get("jsonl"), f"{path}.jsonl", ("path", "max_mb", "max_age_s", "fsync"))
        pcap = self.mapping(keys.get("pcap"), f"{path}.pcap", ("path", "format", "max_mb", "max_age_s",
                                                               "per_call_dir"))
        changes: dict[str, Any] = {
            "out": self.optional_string(jsonl.get("path"), f"{path}.jsonl.path"),
            "out_rotation": self.rotation(jsonl, f"{path}.jsonl"),
            "out_fsync": self.choice(jsonl.get("fsync"), f"{path}.jsonl.fsync", FsyncPolicy,
                                     FsyncPolicy.NEVER),
            "pcap": self.optional_string(pcap.get("path"), f"{path}.pcap.path"),
            "pcap_rotation": self.rotation(pcap, f"{path}.pcap"),
            "pcap_format": self.choice(pcap.get("format"), f"{path}.pcap.format", PcapFormat,
                                       PcapFormat.PCAP),
            "pcap_per_call": self.optional_string(pcap.get("per_call_dir"), f"{path}.pcap.per_call_dir"),
            "fallback": self.optional_string(keys.get("fallback"), f"{path}.fallback"),
            "queue_records": self.bounded(keys.get("queue_records"), f"{path}.queue_records",
                                          options.queue_records, QUEUE_RECORDS),
            "per_worker_files": self.boolean(keys.get("per_worker_files"), f"{path}.per_worker_files", False),
        }
        if "kafka" in keys:
            changes |= self.kafka(keys["kafka"], f"{path}.kafka", task)
        if "hep" in keys:
            changes |= self.hep(keys["hep"], f"{path}.hep")
        return _replace(options, changes)

    def kafka(self, node: yaml.Node, path: str, task: str) -> dict[str, Any]:
        keys = self.mapping(node, path, KAFKA_KEYS)
        if "brokers" not in keys:
            self.problem(node, path, "missing key: brokers")
        security = self.mapping(keys.get("security"), f"{path}.security", SECURITY_KEYS)
        s = f"{path}.security"
        settings = KafkaSettings(
            brokers=self.string(keys.get("brokers"), f"{path}.brokers", "localhost:9092"),
            linger_ms=self.bounded(keys.get("linger_ms"), f"{path}.linger_ms", 20, KAFKA_LINGER_MS),
            batch_messages=self.bounded(keys.get("batch"), f"{path}.batch", 10_000, KAFKA_BATCH),
            compression=self.one_of(keys.get("compression"), f"{path}.compression", COMPRESSIONS, "lz4"),
            acks=self.one_of(keys.get("acks"), f"{path}.acks", ("all", "1", "0"), "all"),
            queue_kbytes=self.bounded(keys.get("queue_kb"), f"{path}.queue_kb", 64 << 10, KAFKA_QUEUE_KB),
            start_anyway=self.boolean(keys.get("start_anyway"), f"{path}.start_anyway", False),
            security=KafkaSecurity(
                protocol=self.one_of(security.get("protocol"), f"{s}.protocol",
                                     ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"), "plaintext"),
                sasl_mechanism=self.optional_string(security.get("sasl_mechanism"), f"{s}.sasl_mechanism"),
                sasl_username=self.optional_string(security.get("sasl_username"), f"{s}.sasl_username"),
                sasl_password=self.secret_file(security.get("sasl_password_file"), f"{s}.sasl_password_file"),
                ssl_ca=self.optional_string(security.get("ssl_ca"), f"{s}.ssl_ca"),
                ssl_cert=self.optional_string(security.get("ssl_cert"), f"{s}.ssl_cert"),
                ssl_key=self.optional_string(security.get("ssl_key"), f"{s}.ssl_key"),
                ssl_key_password=self.secret_file(security.get("ssl_key_password_file"),
                                                  f"{s}.ssl_key_password_file"),
            ),
        )
        routing = KafkaRouting(
            topic=self.string(keys.get("topic"), f"{path}.topic", "otus.sip"),
            per_kind=self.boolean(keys.get("topic_per_kind"), f"{path}.topic_per_kind", False),
            key=self.choice(keys.get("key"), f"{path}.key", KeyChoice, KeyChoice.CALL_ID),
            headers=self.boolean(keys.get("headers"), f"{path}.headers", False),
            node=socket.gethostname(), task=task,
        )
        backlog = BacklogLimits(
            max_bytes=self.bounded(keys.get("backlog_mb"), f"{path}.backlog_mb", 128, KAFKA_BACKLOG_MB) << 20,
            policy=self.choice(keys.get("overflow"), f"{path}.overflow", OverflowPolicy,
                               OverflowPolicy.DROP_OLDEST),
        )
        return {"kafka": settings, "kafka_routing": routing, "kafka_backlog": backlog}

    def hep(self, node: yaml.Node, path: str) -> dict[str, Any]:
        keys = self.mapping(node, path, ("collectors", "capture_id", "node_name", "auth_key_file"))
        collectors = []
        for i, item in enumerate(self.sequence(keys.get("collectors"), f"{path}.collectors")):
            text = self.scalar(item, f"{path}.collectors[{i}]") or ""
            collector = _collector(text)
            if collector is None:
                self.problem(item, f"{path}.collectors[{i}]", f"must be [udp:|tcp:]HOST:PORT, not {text!r}")
            else:
                collectors.append(collector)
        if not collectors and "collectors" not in keys:
            self.problem(node, path, "missing key: collectors")
        identity = HepIdentity(
            capture_id=self.bounded(keys.get("capture_id"), f"{path}.capture_id", 2001, HEP_CAPTURE_ID),
            auth_key=self.secret_file(keys.get("auth_key_file"), f"{path}.auth_key_file"),
            node_name=self.string(keys.get("node_name"), f"{path}.node_name", socket.gethostname()),
        )
        return {"hep": tuple(collectors), "hep_identity": identity}


TASK_KEYS = ("name", "interfaces", "mode", "xdp_mode", "attach_method", "force", "direction", "workers",
             "dispatch", "strategy", "delivery", "filter", "reassembly", "tcp", "calls", "outputs",
             "stats_interval_s")
KAFKA_KEYS = ("brokers", "topic", "topic_per_kind", "key", "headers", "compression", "acks", "linger_ms",
              "batch", "queue_kb", "backlog_mb", "overflow", "start_anyway", "security")
SECURITY_KEYS = ("protocol", "sasl_mechanism", "sasl_username", "sasl_password_file", "ssl_ca", "ssl_cert",
                 "ssl_key", "ssl_key_password_file")


def _collector(text: str) -> HepCollector | None:
    try:
        return parse_collector(text)
    except SetupError:
        return None


def _replace(options: AttachOptions, changes: dict[str, Any]) -> AttachOptions:
    fields = {name: getattr(options, name) for name in options.__dataclass_fields__}
    return AttachOptions(**(fields | changes))


def _shape_problem(root: yaml.Node | None) -> tuple[yaml.Node, str] | None:
    """An alias that contains itself, or aliases that expand past MAX_CONFIG_NODES
    (a "billion laughs"): refused before anything walks the tree."""
    if root is None:
        return None
    seen = 0
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            return node, "an alias refers to a node that contains it (recursive alias)"
        seen += 1
        if seen > MAX_CONFIG_NODES:
            return node, f"aliases expand to more than {MAX_CONFIG_NODES} values"
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        else:
            continue
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children)
    return None


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _merge(defaults: yaml.Node | None, task: yaml.MappingNode) -> yaml.MappingNode:
    """The task's keys over the defaults', mappings merged key by key; values
    keep their own lines, so a problem in a default points at the default."""
    if not isinstance(defaults, yaml.MappingNode):
        return task
    inherited = {str(key.value): (key, value) for key, value in defaults.value}
    own: list[tuple[yaml.Node, yaml.Node]] = []
    seen: set[str] = set()
    for key_node, value_node in task.value:
        key = str(key_node.value)
        base = inherited.pop(key, None) if key not in seen else None
        seen.add(key)  # a key given twice stays twice, for mapping() to report
        both_mappings = base is not None and isinstance(base[1], yaml.MappingNode) \
            and isinstance(value_node, yaml.MappingNode)
        own.append((key_node, _merge(base[1], value_node) if both_mappings and base else value_node))
    return yaml.MappingNode(task.tag, [*inherited.values(), *own], task.start_mark, task.end_mark)


def apply_flags(options: AttachOptions, flags: dict[str, Any]) -> AttachOptions:
    """Command-line flags the operator gave, over the file's values."""
    return _replace(options, flags)


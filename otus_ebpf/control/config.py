"""The YAML config file: node, metrics, control socket, log level, defaults and tasks.

The file is read with yaml's safe composer, so every value keeps its line,
and checked whole: every problem is collected and reported at once as
``file:line: key.path: what is wrong`` (``otus-ebpf validate FILE`` exits 2
on any). The keys, their kinds, ranges and defaults are the settings'
(otus_ebpf.control.settings): this module only walks the file along them.
``defaults`` is merged under every task, key by key and section by
section. ``OTUS_``-prefixed environment variables override the top-level
settings that name one; nothing else reads the environment. The schema is
documented in docs/CONFIG.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from otus_ebpf.control.kinds import STRUCTURED, ProcessorList
from otus_ebpf.control.settings import (
    BY_NAME,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_STATE_DIR,
    Scope,
    Setting,
    build_options,
    cross_problems,
    defaults,
    of_scope,
)
from otus_ebpf.files import NotRegularFile, read_bounded
from otus_ebpf.fleet.settings import TAKEN_FILE, FleetSettings, read_key
from otus_ebpf.logs import DEFAULT_LEVEL
from otus_ebpf.options import AttachOptions, Dispatch
from otus_ebpf.outputs.kafka_producer import KafkaSecurity
from otus_ebpf.secret import read_secret

MAX_CONFIG_BYTES = 16 << 20
MAX_CONFIG_NODES = 100_000  # values in the file once aliases are expanded
MAX_TASK_NAME = 128  # a name is shown in tables, logs, heartbeats and metric labels
_STR_TAG = "tag:yaml.org,2002:str"
_INVALID = object()  # a value refused (its problem recorded): the default stands


@dataclass(frozen=True, slots=True)
class Section:
    """A mapping of the file: its keys in the settings' order, each a setting or a section."""

    children: dict[str, Setting | Section]

    def at(self, path: str) -> Section:
        found = self
        for part in path.split("."):
            child = found.children[part]
            assert isinstance(child, Section), path
            found = child
        return found


def _tree(settings: Iterable[Setting]) -> Section:
    root = Section({})
    for setting in settings:
        *sections, key = setting.key.split(".")
        where = root
        for part in sections:
            child = where.children.setdefault(part, Section({}))
            assert isinstance(child, Section), setting.key
            where = child
        where.children[key] = setting
    return root


FILE_TREE = _tree(of_scope(Scope.FILE))
TASK_TREE = _tree(of_scope(Scope.TASK))
TOP_KEYS = (*FILE_TREE.children, "defaults", "tasks")
TASK_KEYS = tuple(TASK_TREE.children)
KAFKA_KEYS = tuple(TASK_TREE.at("outputs.kafka").children)
SECURITY_KEYS = tuple(TASK_TREE.at("outputs.kafka.security").children)
# The only environment the config reads: variable -> key path it overrides.
ENV_OVERRIDES = {s.env: s.key for s in of_scope(Scope.FILE) if s.env}
__all__ = ["DEFAULT_CONTROL_SOCKET", "DEFAULT_METRICS_LISTEN", "Config", "ConfigInvalid", "Problem",
           "TaskConfig", "load", "parse", "runtime_task", "task_definition"]


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
    # Every setting's value (secret files by path), for flags to be laid over (`attach -c`).
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Config:
    node_name: str
    metrics_listen: str | None  # None: no metrics endpoint
    control_socket: str
    tasks: tuple[TaskConfig, ...] = ()
    source: str = "<built-in defaults>"
    log_level: str = DEFAULT_LEVEL
    state_dir: str = DEFAULT_STATE_DIR
    fleet: FleetSettings | None = None  # control.kafka: None without it
    # The file's defaults section as plain data: laid under the tasks created at run time.
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # Every file setting's value (the key file by path), by setting name.
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def load(path: Path, environ: Mapping[str, str] | None = None, secrets: bool = True) -> Config:
    """Read and check the file; raises ConfigInvalid with every problem found.
    ``secrets=False``: the secret files are named, not read (another host reads them)."""
    return parse(read_text(path), str(path), os.environ if environ is None else environ, secrets)


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


def runtime_task(definition: Mapping[str, Any], config: Config, label: str) -> TaskConfig:
    """A task created at run time — its definition as plain data, keyed as a file's
    task — checked over the daemon file's ``defaults`` (the node's base for every
    task), as if the file held it. ConfigInvalid with each problem as
    ``LABEL: key.path: what is wrong``."""
    document = {"node": {"name": config.node_name}, "defaults": dict(config.defaults),
                "tasks": [dict(definition)]}
    try:
        # Lines apart, so the defaults' problems are told apart; UTF-8 as is, since YAML
        # would read a \\u escaped pair of surrogates as two broken characters.
        text = json.dumps(document, allow_nan=False, indent=1, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigInvalid([Problem(label, 0, "(definition)", f"not plain JSON data: {exc}")]) from None
    try:
        parsed = parse(text, label, {})
    except ConfigInvalid as invalid:
        raise ConfigInvalid([Problem(label, 0, p.path.removeprefix("tasks[0]."), p.message)
                             for p in invalid.problems]) from None
    task = parsed.tasks[0]
    if task.name != definition.get("name"):  # the name is what delete and status find it by
        raise ConfigInvalid([Problem(label, 0, "name", "must be text as JSON carries it")])
    return task


def task_definition(path: Path, name: str) -> dict[str, Any]:
    """The task ``name`` of a config file as plain data, its file's defaults merged
    in: what a task created from a file is stored as. The file is checked whole
    first (ConfigInvalid), its secret files named, not read: they are the nodes'
    to read; KeyError when it has no such task."""
    load(path, secrets=False)
    root = yaml.compose(read_text(path), Loader=yaml.SafeLoader)
    top = {str(k.value): v for k, v in root.value} if isinstance(root, yaml.MappingNode) else {}
    tasks = top.get("tasks")
    for node in tasks.value if isinstance(tasks, yaml.SequenceNode) else []:
        if isinstance(node, yaml.MappingNode):
            definition = _plain(_merge(top.get("defaults"), node))
            if definition.get("name") == name:
                return definition
    raise KeyError(f"{path}: no task named {name!r}")


def parse(text: str, file: str, environ: Mapping[str, str], secrets: bool = True) -> Config:
    checker = _Checker(file, secrets)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # nested thousands deep: no config
        raise ConfigInvalid([Problem(file, 0, "(syntax)", "nested too deep")]) from None
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
    """Walks the composed YAML along the settings; each step records a problem
    and leaves the default in place instead of raising, so one pass finds everything."""

    def __init__(self, file: str, secrets: bool = True) -> None:
        self.file = file
        self.secrets = secrets  # read the secret files (False: only their names are checked)
        self.problems: list[Problem] = []
        self.defaults_lines = (0, -1)  # the file's defaults section, when it has one
        self.node_name: str | None = None  # node.name: the tasks' default HEP node and Kafka header

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

    def section(self, node: yaml.Node | None, path: str, section: Section, found: dict[str, Any],
                nodes: dict[str, yaml.Node], extra: tuple[str, ...] = ()) -> dict[str, yaml.Node]:
        """The settings under ``node`` into ``found`` (their nodes into ``nodes``);
        returns the keys given, ``extra`` ones (the caller's to walk) included."""
        keys = self.mapping(node, path, (*section.children, *extra))
        for key, child in section.children.items():
            where, given = _join(path, key), keys.get(key)
            if isinstance(child, Section):
                if given is not None:
                    self.section(given, where, child, found, nodes)
            elif given is not None:
                value = self.value(child, given, where)
                if value is not _INVALID:
                    found[child.name], nodes[child.name] = value, given
            elif child.required and node is not None:
                self.problem(node, path, f"missing key: {key}")
        return keys

    # -- values -------------------------------------------------------------

    def value(self, setting: Setting, node: yaml.Node, path: str) -> Any:
        if isinstance(setting.kind, STRUCTURED):  # a structure, checked whole
            try:
                return setting.kind.parse_data(yaml.safe_load(yaml.serialize(node)), self.secrets)
            except yaml.YAMLError as exc:  # a tag (!foo, !!python/...), a key that is a list
                problem = getattr(exc, "problem", None) or "tags such as !foo are not read"
                self.problem(node, path, f"not plain YAML data: {problem}")
                return _INVALID
            except ValueError as exc:
                self.problem(node, path, str(exc))
                return _INVALID
        if setting.repeatable:
            items = [self.one(setting, item, f"{path}[{i}]")
                     for i, item in enumerate(self.sequence(node, path))]
            return _INVALID if any(item is _INVALID for item in items) else tuple(items)
        if _is_null(node) and setting.default is None and not _needs_a_value(setting):
            return None
        return self.one(setting, node, path)

    def one(self, setting: Setting, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, path, "must be a single value")
            return _INVALID
        try:
            return setting.kind.parse("" if _is_null(node) else str(node.value))
        except ValueError as exc:
            self.problem(node, path, str(exc))
            return _INVALID

    # -- the file and its tasks -------------------------------------------------

    def _in_defaults(self, node: yaml.Node) -> bool:
        first, last = self.defaults_lines
        return first <= node.start_mark.line + 1 <= last

    def config(self, root: yaml.Node | None, environ: Mapping[str, str]) -> Config:
        found: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        top = self.section(root, "", FILE_TREE, found, nodes, extra=("defaults", "tasks"))
        for setting in of_scope(Scope.FILE):
            if setting.env is not None and setting.env in environ:
                mark = yaml.Mark(f"${setting.env}", 0, -1, 0, None, 0)
                text = yaml.ScalarNode(_STR_TAG, environ[setting.env], mark, mark)
                value = self.one(setting, text, setting.key)
                if value is not _INVALID:
                    found[setting.name] = value
        values = defaults(Scope.FILE) | found
        self.node_name = values["node_name"]
        defaults_node = top.get("defaults")
        if isinstance(defaults_node, yaml.MappingNode):
            self.task(defaults_node, "defaults", partial=True)  # its problems, said once, under its own name
            in_defaults = len(self.problems)
            self.defaults_lines = (defaults_node.start_mark.line + 1, defaults_node.end_mark.line + 1)
            tasks = tuple(self.tasks(top.get("tasks"), defaults_node))
            first, last = defaults_node.start_mark.line + 1, defaults_node.end_mark.line + 1
            self.problems[in_defaults:] = [p for p in self.problems[in_defaults:]
                                           if not (first <= p.line <= last and p.path.startswith("tasks["))]
        else:
            if defaults_node is not None and not _is_null(defaults_node):
                self.problem(defaults_node, "defaults", "must be a mapping of task keys to values")
            tasks = tuple(self.tasks(top.get("tasks"), None))
        return Config(node_name=values["node_name"], metrics_listen=values["metrics_listen"],
                      control_socket=values["control_socket"], tasks=tasks, source=self.file,
                      log_level=values["log_level"], state_dir=values["state_dir"],
                      fleet=self.fleet(values, nodes, root),
                      defaults=_plain(defaults_node), values=values)

    def fleet(self, values: Mapping[str, Any], nodes: Mapping[str, yaml.Node],
              root: yaml.Node | None) -> FleetSettings | None:
        if values["fleet_brokers"] is None or values["fleet_key_file"] is None or not self.secrets:
            return None  # without control.kafka; or a key missing, said by section()

        def secret(name: str, read: Callable[[str], Any]) -> Any:
            try:
                return None if values[name] is None else read(values[name])
            except ValueError as exc:
                self.problem(nodes.get(name, root), BY_NAME[name].key, str(exc))
                return None

        key = secret("fleet_key_file", read_key)
        security = KafkaSecurity(
            protocol=values["fleet_security_protocol"], sasl_mechanism=values["fleet_sasl_mechanism"],
            sasl_username=values["fleet_sasl_username"],
            sasl_password=secret("fleet_sasl_password_file", read_secret), ssl_ca=values["fleet_ssl_ca"],
            ssl_cert=values["fleet_ssl_cert"], ssl_key=values["fleet_ssl_key"],
            ssl_key_password=secret("fleet_ssl_key_password_file", read_secret))
        if key is None:
            return None
        return FleetSettings(values["fleet_brokers"], values["node_name"], key,
                             tuple(values["fleet_groups"]), values["fleet_command_topic"],
                             values["fleet_response_topic"], values["fleet_status_topic"],
                             values["fleet_read_only"], values["fleet_max_age_s"],
                             values["fleet_heartbeat_s"], str(Path(values["state_dir"]) / TAKEN_FILE),
                             security.client_config())

    def tasks(self, node: yaml.Node | None, defaults_node: yaml.Node | None) -> list[TaskConfig]:
        tasks, names = [], set()
        for i, task_node in enumerate(self.sequence(node, "tasks")):
            path = f"tasks[{i}]"
            merged = _merge(defaults_node, task_node) if isinstance(task_node, yaml.MappingNode) \
                else task_node
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
        found: dict[str, Any] = {}
        nodes: dict[str, yaml.Node] = {}
        keys = self.section(node, path, TASK_TREE, found, nodes)
        if not keys and isinstance(node, yaml.MappingNode) and not partial:
            self.problem(node, path, "a task needs at least a name and interfaces")
            return None
        if "name" not in keys and not partial:
            self.problem(node, path, "missing key: name")
        refused_interfaces = "interfaces" in keys and "interfaces" not in found
        if not found.get("interfaces") and not refused_interfaces and not partial:
            self.problem(keys.get("interfaces", node), f"{path}.interfaces",
                         "at least one interface is needed")
        values = defaults() | found
        for name, message in cross_problems(values):
            where = nodes.get(name, node)
            if not partial and self._in_defaults(where):
                where = node  # the defaults' value is wrong only with this task's: said at the task
            self.problem(where, _join(path, BY_NAME[name].key), message)
            values[name] = defaults()[name]
        if values["name"] is not None and len(values["name"]) > MAX_TASK_NAME:
            self.problem(nodes.get("name", node), _join(path, "name"),
                         f"{len(values['name'])} characters: a task name has at most {MAX_TASK_NAME}")
        task_name = values["name"] or f"task-{path}"

        def secret(setting: Setting, file: str) -> str | None:
            try:
                return read_secret(file) if self.secrets else None
            except ValueError as exc:
                self.problem(nodes.get(setting.name, node), _join(path, setting.key), str(exc))
                return None

        if "hep_node_name" not in found and self.node_name is not None:
            values["hep_node_name"] = self.node_name
        options = build_options(values, values["interfaces"], task_name, secret, self.node_name)
        shortcuts = options.processors[len(values["processors"]):]
        if shortcuts and not partial:  # select.*: built now, as the processors list was
            try:
                ProcessorList().parse_data([{s.kind: s.options} for s in shortcuts], self.secrets)
            except ValueError as exc:
                self.problem(keys.get("select", node), _join(path, "select"), str(exc))
        return TaskConfig(task_name, options, options.dispatch, values)


def _needs_a_value(setting: Setting) -> bool:
    """A key that must name something when given: an empty value (``~``) is refused, not unset."""
    return setting.required or setting.name == "name"


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


def _plain(node: yaml.Node | None) -> dict[str, Any]:
    """A checked mapping as plain data, every value as its text (``on``, ``0x10``
    or a date stay what the checker read), null as None."""
    value = _data(node) if node is not None else None
    return value if isinstance(value, dict) else {}


def _data(node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return {str(_data(k)): _data(v) for k, v in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_data(item) for item in node.value]
    return None if _is_null(node) else str(node.value)


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

"""A task's processor chain (userspace.processors), made from its settings:
each runner and each replay makes its own (a processor holds per-call state,
which in a worker is that worker's calls). Key files are read and plugins
found here; the config check made the same chain once, so a problem here is
something that changed since (a key file gone)."""

from __future__ import annotations

from otus_ebpf import logs
from otus_ebpf.errors import SetupError
from otus_ebpf.options import AttachOptions
from otus_ebpf.plugins import processor_factories
from otus_ebpf.secret import read_secret
from userspace.boundary import Boundary
from userspace.processors.build import PLUGIN_PREFIX, build
from userspace.processors.chain import ProcessorChain

_log = logs.get(__name__)


def open_chain(options: AttachOptions, boundary: Boundary) -> ProcessorChain:
    try:
        made = build(options.processors, read_secret, processor_factories())
    except ValueError as exc:
        raise SetupError(str(exc)) from None
    if (options.pcap or options.pcap_per_call) and any(spec.kind == "redact" for spec in options.processors):
        _log.warning("redaction applies to records and HEP; the capture files hold the packets as captured")
    plugins = {p.name: p for p in made if p.name.startswith(PLUGIN_PREFIX)}

    def said(name: str, exc: BaseException) -> None:
        outcome = "dropped" if plugins[name].fail_closed else "passed on unchanged"
        _log.warning(f"{name}: {type(exc).__name__}: {exc} (its batch {outcome}; every failure counted, "
                     "this kind said once)")

    return ProcessorChain(made, boundary, frozenset(plugins), said)

"""A task's processors, in order, each behind a failure boundary: a built-in
processor's bug is counted like any other (and fails the strict test
suite); a plugin's is always counted and never raised — the task goes on.
A failing processor that must not let records through unchanged
(``fail_closed``: redaction) drops its batch, counted. A plugin's first
failure of each kind is handed to ``on_plugin_failure`` (for the log)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from userspace.boundary import Boundary
from userspace.processors.api import Processor
from userspace.records import Record

MAX_SAID = 256  # (plugin, exception type) pairs said: a plugin raising ever new types says no more
PluginFailed = Callable[[str, BaseException], None]


class ProcessorChain:
    def __init__(self, processors: Sequence[Processor], boundary: Boundary,
                 plugins: frozenset[str] = frozenset(),
                 on_plugin_failure: PluginFailed | None = None) -> None:
        self.processors = list(processors)
        self._boundary = boundary
        self._plugins = plugins  # names of the processors that came from plugins
        self._on_plugin_failure = on_plugin_failure
        self._said: set[tuple[str, str]] = set()
        self.failures: Counter[str] = Counter()       # batches a processor raised on, by name
        self.failed_records: Counter[str] = Counter()  # records dropped with them (fail_closed)

    def __bool__(self) -> bool:
        return bool(self.processors)

    def process(self, records: list[Record]) -> list[Record]:
        for processor in self.processors:
            if not records:
                break
            try:
                result = processor.process(records)
                if not isinstance(result, list):
                    raise TypeError(f"process() gave a {type(result).__name__}, not a list of records")
                records = result
            except Exception as exc:  # a processor's bug stops here; the task goes on
                self.failures[processor.name] += 1
                if processor.name not in self._plugins:
                    self._boundary.failed(f"processor:{processor.name}", exc)
                else:
                    self._plugin_failed(processor.name, exc)
                if getattr(processor, "fail_closed", True):  # a plugin that does not say: closed
                    self.failed_records[processor.name] += len(records)
                    records = []
        return records

    def _plugin_failed(self, name: str, exc: Exception) -> None:
        kind = (name, type(exc).__name__)
        if self._on_plugin_failure is not None and kind not in self._said and len(self._said) < MAX_SAID:
            self._said.add(kind)
            self._on_plugin_failure(name, exc)

    def counts(self) -> dict[str, dict[str, int]]:
        """Each processor's verdicts, with ``failed`` batches and ``failed_records``."""
        found: dict[str, dict[str, int]] = {}
        for processor in self.processors:
            counts = _counts_of(processor)
            failed, dropped = self.failures.get(processor.name, 0), self.failed_records.get(processor.name, 0)
            found[processor.name] = counts | ({"failed": failed} if failed else {}) | (
                {"failed_records": dropped} if dropped else {})
        return found


def _counts_of(processor: Processor) -> dict[str, int]:
    """A plugin's counts() may raise or give odd values: its figures are left out, not the scrape."""
    try:
        counts = dict(processor.counts())
    except Exception:
        return {}
    # At most 64 verdicts of 64 characters: they become metric labels.
    return {str(k)[:64]: v for k, v in list(counts.items())[:64]
            if isinstance(v, int) and not isinstance(v, bool)}

"""otus-ebpf: the application (CLI, kernel loader, capture, outputs)."""

__version__ = "0.1.0"

from otus_ebpf.cli import entry

raise SystemExit(entry())

from otus_ebpf.cli.main import entry

raise SystemExit(entry())

"""Example otus-ebpf plugins: ``example.trunk_tag`` (otus_example_plugin.trunk)
and ``example.csv`` (otus_example_plugin.csv_reporter)."""

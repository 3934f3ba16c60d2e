from otus_ebpf.cli import main

raise SystemExit(main())

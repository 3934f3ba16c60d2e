"""The kernel side: compiling and loading bpf/otus.c with bcc, attaching it, and
reading and writing its maps and rings."""

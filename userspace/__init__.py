"""otus-ebpf's user half: pure-Python, sans-IO data plane.

Bytes and events go in, typed records come out. Nothing here opens a socket
to a NIC, reads a clock, or imports bcc, pyroute2 or ``otus_ebpf``.
"""

"""Capture: the sources of events (the eBPF rings, AF_PACKET, a pcap file), and the
processes that run the user-space pipeline over them."""

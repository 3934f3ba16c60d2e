"""Layouts of the maps user space writes; mirrors ``bpf/otus_event.h``.

Each ``*_FIELDS`` tuple lists the C struct's fields in order; the contract
test compares them with the header text. Values are packed with
``struct`` here and handed to bcc as raw bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntFlag
from typing import NamedTuple

from userspace import droplist
from userspace.event import Counter, Kind, StructFields, struct_format
from userspace.kernel_streams import MAX_CLOCKS, STREAM_FIELDS, STREAM_KEY_FIELDS, Clocks
from userspace.tls import TLS_COUNTERS_FIELDS
from userspace.tunnel import FLOW_TUNNEL_SHIFT


class ConfigFlag(IntFlag):
    SIGNATURE = 1
    INCLUDE_V4 = 2
    INCLUDE_V6 = 4
    EXCLUDE_V4 = 8
    EXCLUDE_V6 = 16
    PAUSED = 32
    MEDIA_PACKETS = 64  # every learned RTP packet goes up; else the kernel measures RTP itself
    DROP_METHODS = 128  # drop_methods holds something: SIP datagrams are checked against it
    DEDUP = 256         # a match seen within dedup_window_ms is a duplicate
    DECAP_VXLAN = 512   # one level of decapsulation, by kind (bpf/otus.c "Tunnels")
    DECAP_GENEVE = 1024
    DECAP_GRE = 2048
    DECAP_ERSPAN = 4096
    DECAP_IPIP = 8192
    MIRRORS_V4 = 16384  # tunnels opened only from the sources in mirrors_v4 / mirrors_v6
    MIRRORS_V6 = 32768
    TLS_COMMS = 65536   # TLS plaintext only from the processes named in tls_comms (bpf/otus_tls.c)


# The config flag of each tunnel kind (userspace.tunnel.TunnelKind's values).
DECAP_FLAGS = {"vxlan": ConfigFlag.DECAP_VXLAN, "geneve": ConfigFlag.DECAP_GENEVE,
               "gre": ConfigFlag.DECAP_GRE, "erspan": ConfigFlag.DECAP_ERSPAN, "ipip": ConfigFlag.DECAP_IPIP}


class PortBit(IntFlag):
    """What a UDP port is for: the bits of a "sip_ports" value (OTUS_PORT_*)."""

    SIP = 1
    VXLAN = 2
    GENEVE = 4


MAX_SHARDS = 8  # OTUS_MAX_SHARDS: ring shards, worker processes
DROP_TOKEN_LEN = droplist.TOKEN_LEN      # OTUS_DROP_TOKEN_LEN: a drop_methods key's bytes
MAX_DROP_METHODS = droplist.MAX_TOKENS   # OTUS_MAX_DROP_METHODS: the drop_methods map's entries

# One entry of the per-CPU "counters" array, per direction; user space sums the CPUs.
COUNTERS_FIELDS: StructFields = (
    ("counts", "__u64", Counter.MAX),
    ("shard_failures", "__u64", MAX_SHARDS),
)
CONFIG_FIELDS: StructFields = (
    ("flags", "__u32", 0),
    ("sip_snaplen", "__u32", 0),
    ("media_snaplen", "__u32", 0),
    ("dedup_window_ms", "__u32", 0),
    ("dedup_seed", "__u64", 0),
)
DROP_KEY_FIELDS: StructFields = (("token", "__u8", DROP_TOKEN_LEN),)
FLOW_KEY_FIELDS: StructFields = (
    ("addr", "__u8", 16),
    ("port", "__u16", 0),
    ("l4_proto", "__u8", 0),
    ("family", "__u8", 0),
)
FLOW_VALUE_FIELDS: StructFields = (
    ("kind", "__u8", 0),
    ("shard", "__u8", 0),
    ("flags", "__u8", 0),
    ("clock_count", "__u8", 0),
    ("owner", "__u32", 0),
    ("clock_types", "__u8", MAX_CLOCKS),
    ("clock_rates", "__u32", MAX_CLOCKS),
)
LPM_V4_FIELDS: StructFields = (("prefixlen", "__u32", 0), ("addr", "__u8", 4))
LPM_V6_FIELDS: StructFields = (("prefixlen", "__u32", 0), ("addr", "__u8", 16))

COUNTERS_VALUE = struct.Struct(struct_format(COUNTERS_FIELDS))
CONFIG = struct.Struct(struct_format(CONFIG_FIELDS))
FLOW_KEY = struct.Struct(struct_format(FLOW_KEY_FIELDS))
FLOW_VALUE = struct.Struct(struct_format(FLOW_VALUE_FIELDS))
LPM_V4 = struct.Struct(struct_format(LPM_V4_FIELDS))
LPM_V6 = struct.Struct(struct_format(LPM_V6_FIELDS))
DROP_KEY = struct.Struct(struct_format(DROP_KEY_FIELDS))

# Every struct above, by its C name, for the contract test.
MAP_STRUCTS: dict[str, StructFields] = {
    "otus_counters": COUNTERS_FIELDS,
    "otus_config": CONFIG_FIELDS,
    "otus_drop_key": DROP_KEY_FIELDS,
    "otus_flow_key": FLOW_KEY_FIELDS,
    "otus_flow_value": FLOW_VALUE_FIELDS,
    "otus_lpm_v4": LPM_V4_FIELDS,
    "otus_lpm_v6": LPM_V6_FIELDS,
    "otus_stream_key": STREAM_KEY_FIELDS,
    "otus_stream": STREAM_FIELDS,
    "otus_tls_counters": TLS_COUNTERS_FIELDS,
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class KernelConfig(NamedTuple):
    """The "config" map's one entry (struct otus_config)."""

    flags: ConfigFlag
    sip_snaplen: int
    media_snaplen: int
    dedup_window_ms: int
    dedup_seed: int = 0

    @classmethod
    def unpack(cls, raw: bytes) -> KernelConfig:
        flags, sip_snaplen, media_snaplen, dedup_window_ms, dedup_seed = CONFIG.unpack(raw)
        return cls(ConfigFlag(flags), sip_snaplen, media_snaplen, dedup_window_ms, dedup_seed)

    def pack(self) -> bytes:
        return CONFIG.pack(int(self.flags), self.sip_snaplen, self.media_snaplen, self.dedup_window_ms,
                           self.dedup_seed)

    def with_flag(self, flag: ConfigFlag, on: bool) -> KernelConfig:
        return self._replace(flags=(self.flags | flag) if on else (self.flags & ~flag))


def pack_drop_key(token: str) -> bytes:
    """A drop_methods key: the method or status code, zero-padded (checked by the settings)."""
    return DROP_KEY.pack(token.encode("ascii"))


def pack_flow_key(address: bytes, port: int, l4_proto: int = 17, tunnel: int = 0) -> bytes:
    """The flow map's key of a raw address (4 or 16 bytes); media runs over UDP. ``tunnel``:
    the TunnelCode of the tunnel it was announced in, 0 for none (in the family's high bits)."""
    family = (4 if len(address) == 4 else 6) | tunnel << FLOW_TUNNEL_SHIFT
    return FLOW_KEY.pack(address.ljust(16, b"\0"), port, l4_proto, family)


FLOW_SHARED = 1  # OTUS_FLOW_SHARED


def pack_flow_value(kind: Kind, shard: int, shared: bool = False, owner: int = 0,
                    clocks: Clocks = ()) -> bytes:
    """``owner``: the holding call's tag (userspace.calls); ``clocks``:
    the payload types of its SDP whose clock the kernel must know (clock_table)."""
    clocks = clocks[:MAX_CLOCKS]
    types = bytes(pt for pt, _clock in clocks).ljust(MAX_CLOCKS, b"\0")
    rates = [clock for _pt, clock in clocks] + [0] * (MAX_CLOCKS - len(clocks))
    return FLOW_VALUE.pack(int(kind), shard, FLOW_SHARED if shared else 0, len(clocks), owner, types, *rates)


def pack_lpm_key(network: Network) -> bytes:
    layout = LPM_V4 if network.version == 4 else LPM_V6
    return layout.pack(network.prefixlen, network.network_address.packed)

"""Layouts of the maps user space writes; mirrors ``bpf/otus_event.h``.

Each ``*_FIELDS`` tuple lists the C struct's fields in order; the contract
test compares them with the header text. Values are packed with
``struct`` here and handed to bcc as raw bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import IntFlag

from userspace.event import Kind, StructFields, struct_format


class ConfigFlag(IntFlag):
    SIGNATURE = 1
    INCLUDE_V4 = 2
    INCLUDE_V6 = 4
    EXCLUDE_V4 = 8
    EXCLUDE_V6 = 16
    PAUSED = 32


CONFIG_FIELDS: StructFields = (
    ("flags", "__u32", 0),
    ("sip_snaplen", "__u32", 0),
    ("media_snaplen", "__u32", 0),
    ("pad", "__u32", 0),
)
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
    ("pad", "__u8", 5),
)
LPM_V4_FIELDS: StructFields = (("prefixlen", "__u32", 0), ("addr", "__u8", 4))
LPM_V6_FIELDS: StructFields = (("prefixlen", "__u32", 0), ("addr", "__u8", 16))

CONFIG = struct.Struct(struct_format(CONFIG_FIELDS))
FLOW_KEY = struct.Struct(struct_format(FLOW_KEY_FIELDS))
FLOW_VALUE = struct.Struct(struct_format(FLOW_VALUE_FIELDS))
LPM_V4 = struct.Struct(struct_format(LPM_V4_FIELDS))
LPM_V6 = struct.Struct(struct_format(LPM_V6_FIELDS))

# Every struct above, by its C name, for the contract test.
MAP_STRUCTS: dict[str, StructFields] = {
    "otus_config": CONFIG_FIELDS,
    "otus_flow_key": FLOW_KEY_FIELDS,
    "otus_flow_value": FLOW_VALUE_FIELDS,
    "otus_lpm_v4": LPM_V4_FIELDS,
    "otus_lpm_v6": LPM_V6_FIELDS,
}

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def pack_config(flags: ConfigFlag, sip_snaplen: int, media_snaplen: int) -> bytes:
    return CONFIG.pack(int(flags), sip_snaplen, media_snaplen)


def pack_flow_key(address: Address, port: int, l4_proto: int) -> bytes:
    return FLOW_KEY.pack(address.packed.ljust(16, b"\0"), port, l4_proto, address.version)


FLOW_SHARED = 1  # OTUS_FLOW_SHARED


def pack_flow_value(kind: Kind, shard: int, shared: bool = False) -> bytes:
    return FLOW_VALUE.pack(int(kind), shard, FLOW_SHARED if shared else 0)


def pack_lpm_key(network: Network) -> bytes:
    layout = LPM_V4 if network.version == 4 else LPM_V6
    return layout.pack(network.prefixlen, network.network_address.packed)

"""Find our programs on an interface and open their maps by id.

The kernel knows which program sits on which hook and which maps it uses,
so `otus-ebpf stats` and `otus-ebpf filter` reach a running agent's maps
without pinning them or talking to the agent.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import (
    COUNTERS_VALUE,
    DROP_KEY,
    FLOW_KEY,
    FLOW_VALUE,
    LPM_V4,
    LPM_V6,
    ConfigFlag,
    KernelConfig,
    Network,
    PortBit,
    pack_drop_key,
    pack_lpm_key,
)
from otus_ebpf.kernel.attach import xdp_program
from otus_ebpf.kernel.bpfsys import (
    AttachType,
    MapInfo,
    map_delete,
    map_is_empty,
    map_keys,
    map_lookup,
    map_update,
    open_map,
    program_info,
    query_program_ids,
)
from otus_ebpf.kernel.counters import KernelCounts, read_counters
from otus_ebpf.kernel.loader import COUNTERS_MAP, SCREENS, TC_FUNCTION, XDP_FUNCTION
from otus_ebpf.kernel.maps import (
    CONFIG_MAP,
    DEDUP_MAP,
    DROP_METHODS_MAP,
    FLOWS_MAP,
    SIP_PORTS_MAP,
    TRIE_FLAGS,
)
from userspace.event import Kind

_U32 = struct.Struct("=I")


def attached_program_ids(ifindex: int) -> list[int]:
    """Our programs on this interface: XDP (any attach kind) and TCX egress."""
    candidates = [xdp_program(ifindex)[0]]
    with contextlib.suppress(OSError):  # no TCX on this kernel
        candidates += query_program_ids(ifindex, AttachType.TCX_EGRESS)
    return [pid for pid in candidates
            if pid and program_info(pid).name in (XDP_FUNCTION, TC_FUNCTION)]


@dataclass(frozen=True)
class FilterState:
    sip_ports: tuple[int, ...]
    signature: bool
    paused: bool
    include: tuple[Network, ...]
    exclude: tuple[Network, ...]
    sip_snaplen: int
    media_snaplen: int
    drop_methods: tuple[str, ...] = ()
    dedup_window_ms: int | None = None  # None: dedup off

    def lines(self) -> list[str]:
        def networks(found: tuple[Network, ...]) -> str:
            return " ".join(map(str, found)) or "-"

        dedup = "off" if self.dedup_window_ms is None else f"on, {self.dedup_window_ms} ms"
        return [f"sip ports  {' '.join(map(str, self.sip_ports)) or '-'}",
                f"signature  {'on' if self.signature else 'off'}",
                f"include    {networks(self.include)}",
                f"exclude    {networks(self.exclude)}",
                f"drop       {' '.join(self.drop_methods) or '-'}",
                f"dedup      {dedup}",
                f"snaplen    sip {self.sip_snaplen}, media {self.media_snaplen}",
                f"capture    {'paused' if self.paused else 'running'}"]


@dataclass
class LiveMaps:
    """Open fds of one attached agent's maps, by map name."""

    fds: dict[str, tuple[int, MapInfo]]

    def _map(self, name: str) -> tuple[int, MapInfo]:
        if name not in self.fds:
            raise SetupError(f"the attached program has no map {name!r} (an older otus-ebpf?)")
        return self.fds[name]

    def _read_counters(self) -> tuple[KernelCounts, list[int]]:
        fd, info = self._map(COUNTERS_MAP)
        if info.value_size != COUNTERS_VALUE.size:
            raise SetupError("the attached program's counters have another layout (an older otus-ebpf?)")
        return read_counters(fd)

    def counters(self) -> KernelCounts:
        return self._read_counters()[0]

    def counters_and_failures(self) -> tuple[KernelCounts, list[int]]:
        """Both from one read of the map: the same moment."""
        return self._read_counters()

    def shard_failures(self) -> list[int]:
        """Failed ring submits of every shard the programs can have (OTUS_MAX_SHARDS)."""
        return self._read_counters()[1]

    def flows(self) -> list[tuple[str, int, int, Kind, int]]:
        """Learned media endpoints: (address, port, L4 protocol, kind, shard)."""
        fd, info = self._map(FLOWS_MAP)
        learned = []
        for key in map_keys(fd, info.key_size):
            value = map_lookup(fd, key, info.value_size)
            if value is None:
                continue  # forgotten while we walked
            raw, port, l4_proto, family = FLOW_KEY.unpack(key)
            kind, shard, *_rest = FLOW_VALUE.unpack(value)
            address = ipaddress.ip_address(raw[:4] if family & 0x0F == 4 else raw)  # high bits: a tunnel
            learned.append((str(address), port, l4_proto, Kind(kind), shard))
        return sorted(learned)

    def filters(self) -> FilterState:
        """What the attached programs filter on now, read from their maps."""
        fd, info = self._map(SIP_PORTS_MAP)
        ports = tuple(port for port in range(info.max_entries)
                      if (map_lookup(fd, _U32.pack(port), info.value_size) or b"\0")[0] & PortBit.SIP)
        config = self._config()
        networks: dict[str, list[Network]] = {"include": [], "exclude": []}
        for which, version in TRIE_FLAGS:
            fd, info = self._map(f"{which}_v{version}")
            layout = LPM_V4 if version == 4 else LPM_V6
            for key in map_keys(fd, info.key_size):
                prefixlen, address = layout.unpack(key)
                networks[which].append(ipaddress.ip_network((address, prefixlen)))
        fd, info = self._map(DROP_METHODS_MAP)
        drop = tuple(sorted(key.rstrip(b"\0").decode("ascii", "replace")
                            for key in map_keys(fd, info.key_size)))
        flags = config.flags
        return FilterState(ports, bool(flags & ConfigFlag.SIGNATURE), bool(flags & ConfigFlag.PAUSED),
                           tuple(sorted(networks["include"], key=str)),
                           tuple(sorted(networks["exclude"], key=str)), config.sip_snaplen,
                           config.media_snaplen, drop,
                           config.dedup_window_ms if flags & ConfigFlag.DEDUP else None)

    def set_sip_port(self, port: int, enabled: bool) -> None:
        fd, info = self._map(SIP_PORTS_MAP)
        map_update(fd, _U32.pack(port), bytes([1 if enabled else 0]).ljust(info.value_size, b"\0"))

    def set_signature(self, enabled: bool) -> None:
        self._update_config_flags(ConfigFlag.SIGNATURE, enabled)

    def change_drop_method(self, token: str, add: bool) -> None:
        """``token`` checked by the caller (userspace.droplist.token_problem)."""
        fd, info = self._map(DROP_METHODS_MAP)
        if info.key_size != DROP_KEY.size:
            raise SetupError("the attached program's drop list has another layout (an older otus-ebpf?)")
        if add:
            try:
                map_update(fd, pack_drop_key(token), b"\1".ljust(info.value_size, b"\0"))
            except OSError as exc:
                if exc.errno != errno.E2BIG:
                    raise
                raise SetupError(f"the drop list is full ({info.max_entries} methods): "
                                 f"{token} was not added") from None
        else:
            with contextlib.suppress(FileNotFoundError):
                map_delete(fd, pack_drop_key(token))
        self._update_config_flags(ConfigFlag.DROP_METHODS, not map_is_empty(fd))

    def set_dedup(self, enabled: bool, window_ms: int | None = None) -> None:
        if enabled and DEDUP_MAP not in self.fds:  # only the screens have it: not loaded
            raise SetupError("dedup needs the screen programs, which are not loaded in the attached "
                             "agent (its kernel refused them, or an older otus-ebpf)")
        config = self._config().with_flag(ConfigFlag.DEDUP, enabled)
        if window_ms is not None:
            config = config._replace(dedup_window_ms=window_ms)
        self._write_config(config)

    def change_network(self, which: str, network: Network, add: bool) -> None:
        name = f"{which}_v{network.version}"
        fd, info = self._map(name)
        key = pack_lpm_key(network)
        if add:
            map_update(fd, key, b"\1".ljust(info.value_size, b"\0"))
        else:
            with contextlib.suppress(FileNotFoundError):
                map_delete(fd, key)
        self._update_config_flags(TRIE_FLAGS[which, network.version], not map_is_empty(fd))

    def _config(self) -> KernelConfig:
        fd, info = self._map(CONFIG_MAP)
        raw = map_lookup(fd, _U32.pack(0), info.value_size)
        assert raw is not None  # an array map always has index 0
        return KernelConfig.unpack(raw)

    def _write_config(self, config: KernelConfig) -> None:
        fd, _info = self._map(CONFIG_MAP)
        map_update(fd, _U32.pack(0), config.pack())

    def _update_config_flags(self, flag: ConfigFlag, enabled: bool) -> None:
        self._write_config(self._config().with_flag(flag, enabled))


@contextlib.contextmanager
def live_maps(ifindex: int, ifname: str) -> Iterator[LiveMaps]:
    """The maps of the attached programs, and of the screen programs they tail-call
    (the drop list and the duplicates' map are only theirs)."""
    program_ids = attached_program_ids(ifindex)
    if not program_ids:
        raise SetupError(f"no otus-ebpf program is attached to {ifname}")
    fds: dict[str, tuple[int, MapInfo]] = {}
    try:
        _open_maps(program_info(program_ids[0]).map_ids, fds)
        for _function, array in SCREENS:
            if array in fds:
                fd, _info = fds[array]
                raw = map_lookup(fd, _U32.pack(0), _U32.size)  # a program array answers with the id
                if raw is not None:
                    _open_maps(program_info(_U32.unpack(raw)[0]).map_ids, fds)
        yield LiveMaps(fds)
    finally:
        for fd, _info in fds.values():
            os.close(fd)


def _open_maps(map_ids: tuple[int, ...], fds: dict[str, tuple[int, MapInfo]]) -> None:
    opened = {info.id for _fd, info in fds.values()}
    for map_id in map_ids:
        if map_id not in opened:
            fd, info = open_map(map_id)
            fds[info.name] = (fd, info)

"""Typed writes to the kernel program's maps: how filters and learned flows
change at run time, with no recompile and no detach."""

from __future__ import annotations

import contextlib
import ctypes
import errno
from collections.abc import Iterable
from typing import Any

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.abi import (
    DECAP_FLAGS,
    DROP_KEY,
    MAX_DROP_METHODS,
    ConfigFlag,
    KernelConfig,
    Network,
    PortBit,
    pack_drop_key,
    pack_flow_key,
    pack_flow_value,
    pack_lpm_key,
)
from otus_ebpf.kernel.bpfsys import UpdateFlag, map_delete, map_is_empty, map_keys, map_update
from otus_ebpf.kernel.flows import FlowTableFull
from otus_ebpf.kernel.settings import DEFAULT_DEDUP_WINDOW_MS, KernelSettings
from userspace.endpoints import Endpoint
from userspace.event import Kind
from userspace.kernel_streams import Clocks
from userspace.tunnel import TunnelKind

# What a hash map update says when it is at max_entries (prealloc: E2BIG;
# without prealloc also ENOMEM when the kernel cannot allocate an element).
_TABLE_FULL = (errno.E2BIG, errno.ENOMEM, errno.ENOSPC)
CONFIG_MAP = "config"
SIP_PORTS_MAP = "sip_ports"
DROP_METHODS_MAP = "drop_methods"
DEDUP_MAP = "dedup"
FLOWS_MAP = "flows"
FLOW_PORTS_MAP = "flow_ports"
TLS_PORTS_MAP = "tls_ports"
TLS_COMMS_MAP = "tls_comms"
TLS_COMM_LEN = 16  # struct otus_comm: a comm with its NUL
_TRIES = {("include", 4): "include_v4", ("include", 6): "include_v6",
          ("exclude", 4): "exclude_v4", ("exclude", 6): "exclude_v6",
          ("mirrors", 4): "mirrors_v4", ("mirrors", 6): "mirrors_v6"}


def table(bpf: Any, name: str) -> Any:
    """A bcc table by name (bcc wants bytes)."""
    return bpf[name.encode()]
TRIE_FLAGS = {("include", 4): ConfigFlag.INCLUDE_V4, ("include", 6): ConfigFlag.INCLUDE_V6,
               ("exclude", 4): ConfigFlag.EXCLUDE_V4, ("exclude", 6): ConfigFlag.EXCLUDE_V6}
MIRROR_FLAGS = {4: ConfigFlag.MIRRORS_V4, 6: ConfigFlag.MIRRORS_V6}


def _trie_flag(slot: tuple[str, int]) -> ConfigFlag:
    """The config flag saying a trie holds something."""
    return MIRROR_FLAGS[slot[1]] if slot[0] == "mirrors" else TRIE_FLAGS[slot]


def _key(bcc_table: Any, raw: bytes) -> Any:
    return bcc_table.Key.from_buffer_copy(raw)


def _leaf(bcc_table: Any, raw: bytes) -> Any:
    return bcc_table.Leaf.from_buffer_copy(raw)


class KernelMaps:
    """Writes the filter state. The maps are the truth, not a copy kept here:
    `otus-ebpf filter` changes them from outside, and a pause, a resume or a
    reload must not undo what an operator did. So a flag is changed by
    reading the config, changing that bit and writing it back, and a network
    trie's flag follows whether the trie holds anything."""

    def __init__(self, bpf: Any, screens: bool = True, decaps: bool = True) -> None:
        self._bpf = bpf
        self._screens = screens  # False: the kernel refused the screen programs
        self._decaps = decaps    # False: it refused the tunnel programs (no kind is opened)

    def _need_screens(self, feature: str) -> None:
        if not self._screens:
            raise SetupError(f"{feature} needs the screen programs, which this kernel's verifier refused "
                             "at load (the log said why)")

    def configure(self, *, signature: bool, sip_snaplen: int, media_snaplen: int,
                  media_packets: bool = False, dedup: bool = False,
                  dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS) -> None:
        if dedup:
            self._need_screens("dedup")
        config = self._read_config()
        for flag, on in ((ConfigFlag.SIGNATURE, signature), (ConfigFlag.MEDIA_PACKETS, media_packets),
                         (ConfigFlag.DEDUP, dedup)):
            config = config.with_flag(flag, on)
        self._write_config(config._replace(sip_snaplen=sip_snaplen, media_snaplen=media_snaplen,
                                           dedup_window_ms=dedup_window_ms))

    def _read_config(self) -> KernelConfig:
        config = table(self._bpf, CONFIG_MAP)
        return KernelConfig.unpack(bytes(config[ctypes.c_int(0)]))

    def _write_config(self, value: KernelConfig) -> None:
        config = table(self._bpf, CONFIG_MAP)
        config[ctypes.c_int(0)] = _leaf(config, value.pack())

    def _set_flag(self, flag: ConfigFlag, on: bool) -> None:
        self._write_config(self._read_config().with_flag(flag, on))

    def configure_tls(self, ports: Iterable[int], comms: Iterable[str]) -> None:
        """The TLS SIP ports whose plaintext goes up, and the process names it is taken
        from (none: every probed process); bpf/otus_tls.c."""
        ports_map, comms_map = table(self._bpf, TLS_PORTS_MAP), table(self._bpf, TLS_COMMS_MAP)
        for port in ports:
            ports_map[ctypes.c_int(port)] = ctypes.c_uint8(1)
        names = [comm.encode() for comm in comms]
        for name in names:
            comms_map[_key(comms_map, name.ljust(TLS_COMM_LEN, b"\0"))] = ctypes.c_uint8(1)
        self._set_flag(ConfigFlag.TLS_COMMS, bool(names))

    def apply_filters(self, before: KernelSettings, after: KernelSettings) -> None:
        """Move the running filters from ``before`` to ``after``: ports, the
        signature flag, include/exclude networks, the drop list, duplicate
        suppression and its window (snaplens need a reload). Only what differs
        is written: an operator's own changes stay."""
        self.set_sip_ports(set(before.capture_ports) - set(after.capture_ports), enabled=False)
        self.set_sip_ports(set(after.capture_ports) - set(before.capture_ports))
        for which in ("include", "exclude"):
            old, new = set(getattr(before, which)), set(getattr(after, which))
            for network in new - old:
                self.add_network(which, network)
            for network in old - new:
                self.remove_network(which, network)
        if before.signature != after.signature:
            self._set_flag(ConfigFlag.SIGNATURE, after.signature)
        self.change_drop_methods(add=set(after.drop_methods) - set(before.drop_methods),
                                 remove=set(before.drop_methods) - set(after.drop_methods))
        if (before.dedup, before.dedup_window_ms) != (after.dedup, after.dedup_window_ms):
            self.set_dedup(after.dedup, after.dedup_window_ms)
        self.set_tunnel_ports(set(before.vxlan_ports) - set(after.vxlan_ports), PortBit.VXLAN, enabled=False)
        self.set_tunnel_ports(set(after.vxlan_ports) - set(before.vxlan_ports), PortBit.VXLAN)
        if before.decap != after.decap:
            self.set_decap(after.decap)

    def seed_dedup(self, seed: int) -> None:
        """The dedup digest's key (64 bits): set once, before the first packet."""
        self._write_config(self._read_config()._replace(dedup_seed=seed))

    def forget_seen(self) -> None:
        """Empty the dedup table: no packet seen yet. One batched write (bcc's clear()
        of an array writes its 65,536 slots a system call each)."""
        dedup = table(self._bpf, DEDUP_MAP)
        slots = len(dedup)
        dedup.items_update_batch((dedup.Key * slots)(*map(dedup.Key, range(slots))), (dedup.Leaf * slots)())

    def set_dedup(self, on: bool, window_ms: int) -> None:
        if on:
            self._need_screens("dedup")
        config = self._read_config().with_flag(ConfigFlag.DEDUP, on)
        self._write_config(config._replace(dedup_window_ms=window_ms))

    def change_drop_methods(self, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Tokens checked by the settings (userspace.droplist.token_problem); the
        flag follows whether the map holds any. A full map (an operator's own
        additions) refuses the addition: SetupError."""
        add = list(add)
        if add:
            self._need_screens("the method drop list")
        drop = table(self._bpf, DROP_METHODS_MAP)
        fd = drop.map_fd
        for token in remove:
            with contextlib.suppress(FileNotFoundError):  # an operator removed it already
                map_delete(fd, pack_drop_key(token))
        try:
            for token in add:
                map_update(fd, pack_drop_key(token), b"\1")
        except OSError as exc:
            if exc.errno not in _TABLE_FULL:
                raise
            raise SetupError(f"the kernel's drop list is full ({MAX_DROP_METHODS} methods): "
                             f"{token} was not added") from None
        finally:
            self._set_flag(ConfigFlag.DROP_METHODS, not map_is_empty(fd))

    def drop_methods(self) -> list[str]:
        drop = table(self._bpf, DROP_METHODS_MAP)
        keys = map_keys(drop.map_fd, DROP_KEY.size)
        return sorted(key.rstrip(b"\0").decode("ascii", "replace") for key in keys)

    def set_paused(self, paused: bool) -> None:
        """Paused, the programs count every packet as filtered and send nothing up;
        nothing is detached, and learned flows and filters stay as they are."""
        self._set_flag(ConfigFlag.PAUSED, paused)

    def set_sip_ports(self, ports: Iterable[int], enabled: bool = True) -> None:
        self._set_port_bit(ports, PortBit.SIP, enabled)

    def set_tunnel_ports(self, ports: Iterable[int], bit: PortBit, enabled: bool = True) -> None:
        """UDP ports of VXLAN or Geneve (``bit``): whether their kind is opened is the
        config's DECAP_* flag, so a reload that turns a kind off or on writes no port."""
        self._set_port_bit(ports, bit, enabled)

    def _set_port_bit(self, ports: Iterable[int], bit: PortBit, enabled: bool) -> None:
        """A port's value holds a bit per use (OTUS_PORT_*): one changes, the others stay."""
        ports_map = table(self._bpf, SIP_PORTS_MAP)
        for port in ports:
            index = ctypes.c_uint32(port)
            value = ports_map[index].value
            ports_map[index] = ctypes.c_uint8((value | bit) if enabled else (value & ~bit & 0xFF))

    def set_decap(self, kinds: Iterable[TunnelKind]) -> None:
        """The tunnel kinds opened; the others are not. A config flag each: reloads change it."""
        config = self._read_config()
        on = {kind.value for kind in kinds} if self._decaps else set()
        for name, flag in DECAP_FLAGS.items():
            config = config.with_flag(flag, name in on)
        self._write_config(config)

    def add_network(self, which: str, network: Network) -> None:
        """which: "include", "exclude" or "mirrors"."""
        slot = (which, network.version)
        trie = table(self._bpf, _TRIES[slot])
        trie[_key(trie, pack_lpm_key(network))] = ctypes.c_uint8(1)
        self._set_flag(_trie_flag(slot), True)

    def remove_network(self, which: str, network: Network) -> None:
        slot = (which, network.version)
        trie = table(self._bpf, _TRIES[slot])
        with contextlib.suppress(KeyError):  # an operator removed it already
            del trie[_key(trie, pack_lpm_key(network))]
        self._set_flag(_trie_flag(slot), not map_is_empty(trie.map_fd))

    def learn_flow(self, endpoint: Endpoint, kind: Kind, shard: int, shared: bool = False, owner: int = 0,
                   clocks: Clocks = (), tunnel: int = 0) -> None:
        """Add or update an endpoint; raises FlowTableFull when the map holds its maximum.
        ``shared``: calls in more than one worker hold it (OTUS_FLOW_SHARED); ``owner``
        and ``clocks``: what the kernel's stream statistics need (FlowEvent)."""
        fd = table(self._bpf, FLOWS_MAP).map_fd
        key = pack_flow_key(*endpoint, tunnel=tunnel)
        value = pack_flow_value(kind, shard, shared, owner, clocks)
        try:
            map_update(fd, key, value, UpdateFlag.NOEXIST)
        except FileExistsError:
            map_update(fd, key, value, UpdateFlag.EXIST)  # a new owner for a known endpoint
            return
        except OSError as exc:
            if exc.errno in _TABLE_FULL:
                raise FlowTableFull(f"flow map full ({exc.strerror})") from None
            raise
        self._adjust_port_users(endpoint[1], +1)

    def forget_flow(self, endpoint: Endpoint, tunnel: int = 0) -> None:
        """``tunnel``: the TunnelCode it was learned with (learn_flow)."""
        fd = table(self._bpf, FLOWS_MAP).map_fd
        try:
            map_delete(fd, pack_flow_key(*endpoint, tunnel=tunnel))
        except FileNotFoundError:
            return  # never learned (the map was full then) or already gone
        self._adjust_port_users(endpoint[1], -1)

    def _adjust_port_users(self, port: int, delta: int) -> None:
        users = table(self._bpf, FLOW_PORTS_MAP)
        index = ctypes.c_uint32(port)
        users[index] = ctypes.c_uint32(max(0, users[index].value + delta))

"""Attach the programs to an interface, and always detach them.

Preferred: BPF links (XDP link, TCX egress), owned by fds of this process,
so the kernel detaches them when the process ends in any way, SIGKILL
included. Fallback for kernels without them: netlink XDP and a clsact
filter, which outlive the process; ``detach`` removes those.
"""

from __future__ import annotations

import contextlib
import errno
import os
from enum import Enum

from pyroute2 import IPRoute, NetlinkError

from otus_ebpf.errors import SetupError
from otus_ebpf.kernel.bpfsys import AttachType, XdpFlags, link_create, program_name
from otus_ebpf.kernel.loader import TC_FUNCTION, XDP_FUNCTION


class XdpMode(Enum):
    NATIVE = "native"
    GENERIC = "generic"
    AUTO = "auto"


class AttachMethod(Enum):
    AUTO = "auto"        # links, else netlink
    LINK = "link"        # links only: nothing survives the process
    NETLINK = "netlink"  # legacy attach: survives the process, see `detach`


_MODE_FLAGS = {XdpMode.NATIVE: XdpFlags.DRV_MODE, XdpMode.GENERIC: XdpFlags.SKB_MODE}
_MODE_ORDER = {
    XdpMode.NATIVE: (XdpMode.NATIVE,),
    XdpMode.GENERIC: (XdpMode.GENERIC,),
    XdpMode.AUTO: (XdpMode.NATIVE, XdpMode.GENERIC),
}
# Errors that mean "this kernel has no such link", not "this attach failed".
_NO_LINK_SUPPORT = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)
# IFLA_XDP_ATTACHED, as pyroute2 names it → the mode flag a removal must repeat.
_ATTACHED_MODE_FLAGS = {"xdp": XdpFlags.DRV_MODE, "xdpgeneric": XdpFlags.SKB_MODE}
# clsact's egress hook, and the filter priority that marks our filter.
CLSACT_EGRESS_PARENT = 0xFFFFFFF3
OTUS_FILTER_PRIO = 0x4F54


def attach_xdp(stack: contextlib.ExitStack, prog_fd: int, ifindex: int, ifname: str,
               mode: XdpMode, method: AttachMethod, force: bool = False) -> str:
    """Attach XDP; return how (e.g. "native, bpf_link"). Detach is on ``stack``.

    A foreign XDP program already on the interface is refused, unless
    ``force`` is set: then it is removed first (netlink-attached ones only;
    a program held by another process's BPF link cannot be taken away).
    """
    foreign_id, foreign_flags = xdp_program(ifindex)
    if foreign_id:
        refuse_foreign_xdp(ifindex, ifname, force)
        name = program_name(foreign_id)
        try:
            _netlink_set_xdp(ifindex, -1, foreign_flags)
        except OSError as exc:
            raise SetupError(f"cannot remove the XDP program {name} (id {foreign_id}) on {ifname}: "
                             f"{exc.strerror} (held by another process's BPF link?)") from None
    failures: list[str] = []
    if method is not AttachMethod.NETLINK:
        for candidate in _MODE_ORDER[mode]:
            try:
                link_fd = link_create(prog_fd, ifindex, AttachType.XDP, _MODE_FLAGS[candidate])
            except OSError as exc:
                _refuse_if_busy(exc, ifname)
                failures.append(f"{candidate.value}: {exc.strerror}")
                continue
            stack.callback(os.close, link_fd)
            return f"{candidate.value}, bpf_link"
        if method is AttachMethod.LINK:
            raise SetupError(f"cannot attach XDP to {ifname} ({'; '.join(failures)})")
    for candidate in _MODE_ORDER[mode]:
        try:
            _netlink_set_xdp(ifindex, prog_fd, _MODE_FLAGS[candidate])
        except OSError as exc:
            _refuse_if_busy(exc, ifname)
            failures.append(f"{candidate.value} (netlink): {exc.strerror}")
            continue
        stack.callback(_netlink_set_xdp, ifindex, -1, _MODE_FLAGS[candidate])
        return f"{candidate.value}, netlink (survives a crash: `otus-ebpf detach {ifname}`)"
    raise SetupError(f"cannot attach XDP to {ifname} ({'; '.join(failures)})")


def refuse_foreign_xdp(ifindex: int, ifname: str, force: bool) -> None:
    """Raise unless the XDP hook is free or ``force`` allows replacing its program."""
    foreign_id, _flags = xdp_program(ifindex)
    if not foreign_id or force:
        return
    name = program_name(foreign_id)
    hint = f", `otus-ebpf detach {ifname}` removes it" if name == XDP_FUNCTION else ""
    raise SetupError(f"{ifname} already has an XDP program ({name}, id {foreign_id}); --force replaces it"
                     + hint)


def attach_tc_egress(stack: contextlib.ExitStack, prog_fd: int, ifindex: int, ifname: str,
                     method: AttachMethod) -> str:
    if method is not AttachMethod.NETLINK:
        try:
            link_fd = link_create(prog_fd, ifindex, AttachType.TCX_EGRESS)
        except OSError as exc:
            if method is AttachMethod.LINK or exc.errno not in _NO_LINK_SUPPORT:
                raise SetupError(f"cannot attach TCX egress to {ifname}: {exc.strerror}") from None
        else:
            stack.callback(os.close, link_fd)
            return "tcx, bpf_link"
    try:
        _clsact_add_filter(ifindex, prog_fd)
    except OSError as exc:
        raise SetupError(f"cannot attach clsact egress filter to {ifname}: {exc.strerror}") from None
    stack.callback(_clsact_del_filter, ifindex)
    return f"clsact, netlink (survives a crash: `otus-ebpf detach {ifname}`)"


def detach(ifindex: int, ifname: str) -> list[str]:
    """Remove what a netlink-attached agent left behind; return what was removed.

    Only our programs are touched: XDP by its program name, clsact by our
    filter priority. BPF links need no detach: they died with their process.
    """
    removed: list[str] = []
    prog_id, flags = xdp_program(ifindex)
    if prog_id and program_name(prog_id) == XDP_FUNCTION:
        _netlink_set_xdp(ifindex, -1, flags)
        removed.append(f"XDP program {prog_id} ({XDP_FUNCTION}) from {ifname}")
    with contextlib.suppress(OSError):
        _clsact_del_filter(ifindex)
        removed.append(f"clsact egress filter ({TC_FUNCTION}) from {ifname}")
    return removed


def _refuse_if_busy(exc: OSError, ifname: str) -> None:
    if exc.errno in {errno.EBUSY, errno.EEXIST}:
        raise SetupError(f"{ifname}'s XDP hook is held by another program's BPF link") from None


def _netlink_error(exc: Exception) -> OSError:
    code = getattr(exc, "code", None) or errno.EIO
    return OSError(code, os.strerror(code))


def _netlink_set_xdp(ifindex: int, prog_fd: int, flags: int) -> None:
    attrs = [("IFLA_XDP_FD", prog_fd)] + ([("IFLA_XDP_FLAGS", flags)] if flags else [])
    with IPRoute() as ipr:
        try:
            ipr.link("set", index=ifindex, xdp={"attrs": attrs})
        except NetlinkError as exc:
            raise _netlink_error(exc) from None


def xdp_program(ifindex: int) -> tuple[int, int]:
    """(program id, the mode flag needed to remove it), or (0, 0) when none."""
    with IPRoute() as ipr:
        (link,) = ipr.link("get", index=ifindex)
    xdp = link.get_attr("IFLA_XDP")
    if not xdp:
        return 0, 0
    prog_id = int(xdp.get_attr("IFLA_XDP_PROG_ID") or 0)
    return prog_id, _ATTACHED_MODE_FLAGS.get(xdp.get_attr("IFLA_XDP_ATTACHED"), 0)


def _clsact_add_filter(ifindex: int, prog_fd: int) -> None:
    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _netlink_error(exc) from None
        try:
            ipr.tc("add-filter", "bpf", ifindex, ":1", fd=prog_fd, name=TC_FUNCTION,
                   parent=CLSACT_EGRESS_PARENT, prio=OTUS_FILTER_PRIO, classid=1, direct_action=True)
        except NetlinkError as exc:
            raise _netlink_error(exc) from None


def _clsact_del_filter(ifindex: int) -> None:
    with IPRoute() as ipr:
        try:
            ipr.tc("del-filter", "bpf", ifindex, ":1", parent=CLSACT_EGRESS_PARENT, prio=OTUS_FILTER_PRIO)
        except NetlinkError as exc:
            raise _netlink_error(exc) from None

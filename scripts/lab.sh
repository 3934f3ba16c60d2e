#!/usr/bin/env bash
# The namespace lab: a UAC host and a UAS host joined by two veth pairs.
#
#   [ns ${PREFIX}-uac]  uac0 10.77.0.1/24 fd77::1/64     uac1 10.78.0.1/24 fd78::1/64
#          |  veth                                        |  veth
#   [ns ${PREFIX}-uas]  uas0 10.77.0.2/24 fd77::2/64     uas1 10.78.0.2/24 fd78::2/64
#                       ^ otus-ebpf attaches here         ^ a second link, for multi-task tests
#
#   scripts/lab.sh up|down|status       (as root; OTUS_LAB_PREFIX, default "otus")
#
# The pytest fixture (tests/support/lab.py) drives this same script, and the
# Vagrant lab mirrors the topology with VMs. Both hosts also bring up lo, so
# a broker can listen on 127.0.0.1 inside the UAS namespace.
set -euo pipefail

PREFIX=${OTUS_LAB_PREFIX:-otus}
UAC_NS="$PREFIX-uac"
UAS_NS="$PREFIX-uas"
UAC_IF=uac0
UAS_IF=uas0
UAC_V4=10.77.0.1
UAS_V4=10.77.0.2
UAC_V6=fd77::1
UAS_V6=fd77::2

die() { echo "lab: error: $*" >&2; exit 1; }

up() {
    [ "$(id -u)" -eq 0 ] || die "not root: network namespaces need root"
    down quiet
    ip netns add "$UAC_NS"
    ip netns add "$UAS_NS"
    ip -n "$UAC_NS" link add "$UAC_IF" type veth peer name "$UAS_IF" netns "$UAS_NS"
    host_up "$UAC_NS" "$UAC_IF" "$UAC_V4" "$UAC_V6"
    host_up "$UAS_NS" "$UAS_IF" "$UAS_V4" "$UAS_V6"
    # Static neighbours: no ARP/ND races in the first packets of a test.
    neighbour "$UAC_NS" "$UAC_IF" "$UAS_NS" "$UAS_IF" "$UAS_V4" "$UAS_V6"
    neighbour "$UAS_NS" "$UAS_IF" "$UAC_NS" "$UAC_IF" "$UAC_V4" "$UAC_V6"
    ip -n "$UAC_NS" link add uac1 type veth peer name uas1 netns "$UAS_NS"
    host_up "$UAC_NS" uac1 10.78.0.1 fd78::1
    host_up "$UAS_NS" uas1 10.78.0.2 fd78::2
    neighbour "$UAC_NS" uac1 "$UAS_NS" uas1 10.78.0.2 fd78::2
    neighbour "$UAS_NS" uas1 "$UAC_NS" uac1 10.78.0.1 fd78::1
    echo "lab: up: $UAC_NS/$UAC_IF $UAC_V4 <-> $UAS_NS/$UAS_IF $UAS_V4"
}

host_up() {
    local ns=$1 ifname=$2 v4=$3 v6=$4
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$v4/24" dev "$ifname"
    ip -n "$ns" addr add "$v6/64" dev "$ifname" nodad
    ip -n "$ns" link set "$ifname" up
}

neighbour() {
    local ns=$1 ifname=$2 peer_ns=$3 peer_if=$4 v4=$5 v6=$6 mac
    mac=$(ip -n "$peer_ns" -o link show "$peer_if" | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
    ip -n "$ns" neigh replace "$v4" lladdr "$mac" dev "$ifname" nud permanent
    ip -n "$ns" neigh replace "$v6" lladdr "$mac" dev "$ifname" nud permanent
}

down() {
    local ns
    for ns in "$UAC_NS" "$UAS_NS"; do
        if ip netns list | grep -qw "^$ns"; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
            ip netns del "$ns"
        fi
    done
    [ "${1:-}" = quiet ] || echo "lab: down"
}

status() {
    ip netns list | grep -E "^($UAC_NS|$UAS_NS)\b" || { echo "lab: not up"; return 1; }
    ip -n "$UAS_NS" -d link show "$UAS_IF"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

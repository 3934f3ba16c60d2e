#!/usr/bin/env bash
# Set up otus-ebpf on a Debian 12 machine, as root. Idempotent: a second run
# checks, changes nothing and takes about a second.
#   Debian packages (bcc, kernel headers, iproute2, sipp, tshark, tcpdump, tmux, vagrant, openssl,
#   kamailio with its TLS module for the TLS lab test),
#   the /lib/modules link bcc needs when the running kernel has no headers,
#   .venv importing Debian's bcc, `pip install -e .[dev]` and the example plugin package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)
VENV="$ROOT/.venv"
EXAMPLE="$ROOT/examples/otus-example-plugin"
say() { echo "setup: $*"; }
die() { echo "setup: error: $*" >&2; exit 1; }

check_host() {
    [ "$(uname -s)" = Linux ] || die "not Linux: otus-ebpf needs a Linux kernel with eBPF"
    [ "$(id -u)" -eq 0 ] || die "not root: run it with sudo (it installs packages and loads BPF programs)"
    command -v apt-get >/dev/null && [ -r /etc/debian_version ] \
        || die "not Debian: this script installs Debian's packages (bcc is only usable from python3-bpfcc)"
}

APT_UPDATED=0
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install failed for: ${missing[*]}"
}

install_packages() {
    apt_install python3 python3-venv python3-bpfcc bpfcc-tools libbpfcc \
        iproute2 sip-tester tshark tcpdump tcpreplay tmux vagrant ca-certificates openssl \
        kamailio kamailio-tls-modules \
        gcc libc6-dev python3-dev  # mypyc's C extensions (scripts/build_native.py); Kamailio: the TLS lab
    # The TLS lab test runs Kamailio itself, in a namespace; the package's own service
    # (listening on 5060 on every interface) is not wanted on the host.
    if command -v systemctl >/dev/null && systemctl is-enabled --quiet kamailio 2>/dev/null; then
        systemctl disable --quiet kamailio 2>/dev/null || say "could not disable the kamailio service"
        if systemctl is-active --quiet kamailio 2>/dev/null; then
            systemctl stop kamailio || say "could not stop the kamailio service"
        fi
    fi
}

# bcc compiles against /lib/modules/$(uname -r)/{build,source}.
install_kernel_headers() {
    local krel arch modules best
    krel=$(uname -r)
    modules="/lib/modules/$krel"
    [ -e "$modules/build" ] && [ -e "$modules/source" -o -d "$modules/build/include" ] && return 0
    [ "$APT_UPDATED" -eq 1 ] || { apt-get update -q >/dev/null || die "apt-get update failed"; APT_UPDATED=1; }
    if apt-cache show "linux-headers-$krel" >/dev/null 2>&1; then
        apt_install "linux-headers-$krel"
        return 0
    fi
    arch=$(dpkg --print-architecture)
    apt_install "linux-headers-$arch"
    best=$(find /lib/modules -mindepth 1 -maxdepth 1 -type d -name "*-$arch" \
               -exec test -e '{}/build' -a -e '{}/source' ';' -print | sort -V | tail -n 1)
    [ -n "$best" ] || die "no kernel headers with build/ and source/ under /lib/modules after installing linux-headers-$arch"
    if [ -e "$modules" ]; then
        ln -sfn "$best/build" "$modules/build"
        ln -sfn "$best/source" "$modules/source"
        say "kernel $krel has no headers of its own: linked $modules/{build,source} -> $best"
    else
        ln -s "$best" "$modules"
        say "kernel $krel has no headers of its own: linked $modules -> $best"
    fi
}

check_bpf_syscall() {
    /usr/bin/python3 - <<'PY' || exit 1
import ctypes, errno, os, platform, struct, sys
nr = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
if nr is None:
    sys.exit(f"setup: error: unsupported architecture {platform.machine()}")
libc = ctypes.CDLL(None, use_errno=True)
attr = ctypes.create_string_buffer(struct.pack("=IIII", 2, 4, 4, 1), 72)  # ARRAY map, 1 entry
fd = libc.syscall(nr, 0, attr, len(attr))  # BPF_MAP_CREATE
if fd < 0:
    e = ctypes.get_errno()
    what = "the kernel has no bpf() syscall" if e == errno.ENOSYS else f"bpf() refused: {os.strerror(e)}"
    sys.exit(f"setup: error: {what} (needs CONFIG_BPF_SYSCALL and CAP_BPF)")
os.close(fd)
PY
}

setup_venv() {
    local site bcc_dir stamp want
    [ -x "$VENV/bin/python" ] || { say "creating $VENV"; /usr/bin/python3 -m venv "$VENV"; }
    # Import Debian's bcc without the rest of Debian's site-packages.
    bcc_dir="$VENV/debian-bcc"
    if [ "$(readlink "$bcc_dir/bcc" 2>/dev/null)" != /usr/lib/python3/dist-packages/bcc ]; then
        mkdir -p "$bcc_dir"
        ln -sfn /usr/lib/python3/dist-packages/bcc "$bcc_dir/bcc"
    fi
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    [ "$(cat "$site/debian_bcc.pth" 2>/dev/null)" = "$bcc_dir" ] || echo "$bcc_dir" > "$site/debian_bcc.pth"
    "$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "the venv cannot import Debian's bcc from $bcc_dir"

    stamp="$VENV/.otus-installed"
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing otus-ebpf and its Python dependencies into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[dev]" || die "pip install -e .[dev] failed"
        echo "$want" > "$stamp"
    fi
    # The example plugin package (docs/PLUGINS.md): what `otus-ebpf plugins` lists and the plugin
    # tests run. --no-deps: its one dependency, otus-ebpf, is this checkout, installed above.
    stamp="$VENV/.otus-example-installed"
    want=$(sha256sum "$EXAMPLE/pyproject.toml" | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing the example plugin package into $VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$EXAMPLE" \
            || die "pip install -e examples/otus-example-plugin failed"
        echo "$want" > "$stamp"
    fi
    # The per-message modules as C extensions (same source); pure Python if that fails.
    "$VENV/bin/python" "$ROOT/scripts/build_native.py" | sed 's/^/setup: /'
}

main() {
    local started=$SECONDS
    check_host
    install_packages
    install_kernel_headers
    check_bpf_syscall
    setup_venv
    say "ready in $((SECONDS - started)) s ($("$VENV/bin/python" -c 'import bcc, sys; print("python", sys.version.split()[0], "+ bcc")'))"
}

main "$@"

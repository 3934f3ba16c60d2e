"""SIP over TLS, live: a Python ``ssl`` SIP server on 5061 in the UAS namespace and a
Python TLS client in the UAC namespace (both on the system's libssl.so.3, which
the agent's uprobes read) exchange a REGISTER and calls — INVITEs with SDP, some
split over three TLS records, three responses in one record, an ACK and an INFO
in one record, BYEs — and RTP to the media the decrypted SDP announced. A live
`otus-ebpf attach --tls` on the UAS side must record every message with transport
"tls", the TCP connection's real addresses and ports, and the process it was read
at: once as the client wrote it and once as the server read it (both are local
and probed), or only the server's with --tls-pid. The media is measured as
learned from that SDP. An HTTPS exchange by another process during the test,
holding a marker, appears in no output: counted in the kernel, never sent up."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.support.agent import final_stats, read_records, start_agent
from tests.support.lab import Lab
from tests.support.paths import REPO
from tests.support.procs import Background, netns_argv

TLS_PORT = 5061
HTTPS_PORT = 8443
CALLS = 6
RTP_PACKETS = 50
START_TIMEOUT_S = 15.0
PEER = [sys.executable, "-m", "tests.support.tls_peer"]
MARKER = "otus-https-marker-7f3a9c"


def message_key(record: dict[str, Any]) -> tuple[str, str, int, str]:
    kind = record["method"] if record["method"] else str(record["status"])
    return record["call_id"], kind, record["cseq"], record["cseq_method"]


def conversation(calls: int) -> Counter[tuple[str, str, int, str]]:
    """What tests/support/tls_peer.py's client and server say."""
    register = "tls-register@client.invalid"
    keys: Counter[tuple[str, str, int, str]] = Counter(
        [(register, "REGISTER", 1, "REGISTER"), (register, "200", 1, "REGISTER")])
    for call in range(calls):
        call_id = f"tls-{call}@client.invalid"
        keys.update([(call_id, kind, 1, "INVITE") for kind in ("INVITE", "100", "180", "200")]
                    + [(call_id, "ACK", 1, "ACK"), (call_id, "INFO", 2, "INFO"), (call_id, "200", 2, "INFO"),
                       (call_id, "BYE", 3, "BYE"), (call_id, "200", 3, "BYE")])
    return keys


def certificate(directory: Path) -> tuple[Path, Path]:
    require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=otus-lab"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.mark.parametrize(("workers", "only_server"), [(1, False), (2, True)],
                         ids=["both-peers", "2-workers-tls-pid"])
def test_sip_over_tls_is_recorded_as_plaintext_with_its_process(
    lab: Lab, tmp_path: Path, workers: int, only_server: bool
) -> None:
    cert, key = certificate(tmp_path)
    out = tmp_path / "sip.jsonl"
    server = Background([*PEER, "server", lab.uas_v4, str(TLS_PORT), str(cert), str(key)],
                        tmp_path / "server.log", netns=lab.uas_ns, cwd=REPO)
    https = Background([*PEER, "https-server", lab.uas_v4, str(HTTPS_PORT), str(cert), str(key)],
                       tmp_path / "https.log", netns=lab.uas_ns, cwd=REPO)
    agent = None
    try:
        server.wait_for_output("listening", START_TIMEOUT_S)
        https.wait_for_output("listening", START_TIMEOUT_S)
        extra = ["--tls", "--workers", str(workers), "--mode", "xdp"]
        if only_server:
            extra += ["--tls-pid", str(server.pid)]
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log", extra)
        fetched = subprocess.run(netns_argv(lab.uac_ns, [*PEER, "https-client", lab.uas_v4, str(HTTPS_PORT),
                                                         MARKER]),
                                 cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert fetched.returncode == 0 and "fetched" in fetched.stdout, fetched.stdout + fetched.stderr
        argv = netns_argv(lab.uac_ns, [*PEER, "client", lab.uas_v4, str(TLS_PORT), str(CALLS),
                                       str(RTP_PACKETS)])
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and f"done {CALLS} calls" in done.stdout, done.stdout + done.stderr
        time.sleep(1.5)  # the last chunks through the rings
    finally:
        agent_status = agent.stop(signal.SIGTERM) if agent is not None else None
        https.stop(signal.SIGTERM)
        server.stop(signal.SIGTERM)
    assert agent is not None and agent_status == 0, agent.output() if agent else ""

    check_records(lab, out, server.pid, only_server)
    for written in tmp_path.glob("sip*.jsonl"):  # HTTPS by another process: in no output
        assert MARKER not in written.read_text()
    assert MARKER not in agent.output()
    stats = final_stats(agent)
    assert stats["tls_other_port"] >= (0 if only_server else 2), stats  # counted in the kernel instead
    assert stats["tls_submit_failed"] == stats["tls_read_failed"] == 0, stats
    assert "errors=0" in [line for line in agent.output().splitlines() if line.startswith("otus-ebpf: ")][-1]


def check_records(lab: Lab, out: Path, server_pid: int, only_server: bool) -> None:
    """Every message once per probed process, with the connection's addresses and the
    process; the media its SDP announced measured."""
    sip = [r for r in read_records(out) if r["kind"] == "sip"]
    pids = {r["process"]["pid"] for r in sip}
    by_process = {pid: [r for r in sip if r["process"]["pid"] == pid] for pid in pids}
    expected = conversation(CALLS)
    server_view = by_process.pop(server_pid)
    assert Counter(map(message_key, server_view)) == expected, "every message, as the server read or wrote it"
    if only_server:
        assert by_process == {}, "--tls-pid: the server's plaintext only"
    else:
        [client_view] = by_process.values()  # the client's own calls, also probed
        assert Counter(map(message_key, client_view)) == expected
    for record in server_view:
        assert record["transport"] == "tls" and record["interface"] == "tls", record
        assert record["process"]["comm"].startswith("python"), record
        from_client = record["method"] is not None
        assert record["direction"] == ("ingress" if from_client else "egress"), record
        ends = (record["src"], record["dst"]) if from_client else (record["dst"], record["src"])
        assert ends == (lab.uac_v4, lab.uas_v4), record
        assert (record["dport"] if from_client else record["sport"]) == TLS_PORT, record
    streams = [r for r in read_records(out) if r["kind"] == "rtp" and r["dst"] == lab.uas_v4]
    assert {r["call_id"] for r in streams} == {f"tls-{call}@client.invalid" for call in range(CALLS)}
    assert all(r["packets"] == RTP_PACKETS for r in streams if r["final"]), streams


KAMAILIO_CONFIG = """#!KAMAILIO
debug=2
log_stderror=yes
fork=yes
children=1
tcp_children=1
enable_tls=yes
listen=tls:{address}:{port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
loadmodule "sl.so"
modparam("tls", "config", "{tls_config}")
request_route {{
    if (method == "ACK") exit;
    if (method == "INVITE") {{
        sl_send_reply("100", "Trying");
        sl_send_reply("180", "Ringing");
    }}
    sl_send_reply("200", "OK");
    exit;
}}
"""
KAMAILIO_TLS = """[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = {key}
certificate = {cert}
"""


def test_kamailio_over_tls_is_recorded_as_its_plaintext(lab: Lab, tmp_path: Path) -> None:
    """Kamailio's tls module feeds OpenSSL through memory BIOs and does the socket I/O
    itself, outside the TLS calls: its sessions are paired by the socket its process
    read just before SSL_read. Two connections one after the other: Kamailio frees the
    first's SSL object in another process, and may reuse it for the second, which must
    still be recorded under its own ports. Kamailio answers statelessly (its 200 has no
    SDP): the media is learned from the decrypted offer. --tls-comm kamailio: the
    client's own plaintext (python) stays out."""
    require_tool("kamailio")
    cert, key = certificate(tmp_path)
    tls_config = tmp_path / "tls.cfg"
    tls_config.write_text(KAMAILIO_TLS.format(cert=cert, key=key))
    config = tmp_path / "kamailio.cfg"
    config.write_text(KAMAILIO_CONFIG.format(address=lab.uas_v4, port=TLS_PORT, tls_config=tls_config))
    out = tmp_path / "sip.jsonl"
    server = Background(["kamailio", "-DD", "-E", "-f", str(config)], tmp_path / "kamailio.log",
                        netns=lab.uas_ns)
    agent = None
    try:
        server.wait_for_output("Listening on", START_TIMEOUT_S)
        time.sleep(1.0)  # its TCP workers up
        agent = start_agent(lab.uas_ns, lab.uas_if, out, tmp_path / "agent.log",
                            ["--tls", "--tls-comm", "kamailio", "--mode", "xdp"])
        argv = netns_argv(lab.uac_ns, [*PEER, "client", lab.uas_v4, str(TLS_PORT), str(CALLS),
                                       str(RTP_PACKETS)])
        for _connection in range(2):
            done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0 and f"done {CALLS} calls" in done.stdout, done.stdout + done.stderr
        time.sleep(1.5)
    finally:
        agent_status = agent.stop(signal.SIGTERM) if agent is not None else None
        server.stop(signal.SIGTERM)
    assert agent is not None and agent_status == 0, agent.output() if agent else ""
    sip = [r for r in read_records(out) if r["kind"] == "sip"]
    by_client_port: dict[int, list[dict[str, Any]]] = {}
    for record in sip:
        by_client_port.setdefault(record["sport"] if record["method"] else record["dport"], []).append(record)
    assert len(by_client_port) == 2, sorted(by_client_port)
    for records in by_client_port.values():
        assert Counter(map(message_key, records)) == conversation(CALLS), "each connection whole"
    for record in sip:
        assert record["transport"] == "tls" and record["process"]["comm"] == "kamailio", record
        from_client = record["method"] is not None
        assert record["direction"] == ("ingress" if from_client else "egress"), record
        ends = (record["src"], record["dst"]) if from_client else (record["dst"], record["src"])
        assert ends == (lab.uac_v4, lab.uas_v4), record
    streams = [r for r in read_records(out) if r["kind"] == "rtp" and r["src"] == lab.uac_v4]
    assert {r["call_id"] for r in streams} == {f"tls-{call}@client.invalid" for call in range(CALLS)}
    stats = final_stats(agent)
    assert stats["tls_unpaired"] == 0 and stats["tls_submit_failed"] == 0, stats

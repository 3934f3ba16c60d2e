"""A 5 s call's quality reaches Homer: `otus-ebpf replay` of the paced call
(tests/unit/test_media_replay.py) with a HEP collector on loopback. tshark,
with the HEP3 dissector from tests/support and its own JSON dissector, reads
what was sent; the JSON keys are checked against the ones heplify-server
decodes (sipcapture/heplify-server, metric/definition.go: rtpPaths for
payload type 34, rtcpPaths for type 5; decoder/hep.go names 34 "rtpagent"),
and every packet carries the correlation id Homer joins on (database/
postgres.go stores types other than SIP only when it is present)."""

from __future__ import annotations

import json
import socket
import subprocess
from collections import Counter
from pathlib import Path

from tests.support import calls
from tests.support.paths import AGENT
from tests.support.tshark import HEP3_LUA, hep_packets_as_pcap
from tests.unit.test_media_replay import DIALOG, DOWN, UP, timeline

HEPLIFY_RTP_PATHS = {"DELTA", "JITTER", "MOS", "PACKET_LOSS"}
HEPLIFY_RTCP_BLOCK_PATHS = {"fraction_lost", "packets_lost", "ia_jitter", "dlsr"}
SIP, RTCP, RTP_AGENT = "1", "5", "34"


def collect(tmp_path: Path, pcap: Path) -> tuple[list[bytes], int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        port = collector.getsockname()[1]
        result = subprocess.run([str(AGENT), "replay", str(pcap), "--out", str(tmp_path / "records.jsonl"),
                                 "--hep", f"udp:127.0.0.1:{port}"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        collector.settimeout(1.0)
        datagrams = []
        try:
            while True:
                datagrams.append(collector.recv(65536))
        except TimeoutError:
            pass
    return datagrams, port


def decoded(datagrams: list[bytes], port: int, tmp_path: Path) -> list[tuple[str, str, dict[str, str]]]:
    """(payload type, correlation id, JSON member -> value) per HEP packet, as tshark reads them."""
    pcap = tmp_path / "hep.pcap"
    hep_packets_as_pcap(datagrams, pcap, port)
    out = subprocess.run(["tshark", "-X", f"lua_script:{HEP3_LUA}", "-r", str(pcap), "-d",
                          f"udp.port=={port},hep3", "-T", "fields", "-E", "separator=|", "-E", "occurrence=a",
                          "-E", "aggregator=\t", "-e", "hep3.proto_type", "-e", "hep3.correlation_id",
                          "-e", "json.member_with_value"], check=True, capture_output=True, text=True).stdout
    packets = []
    for line in out.splitlines():
        proto, correlation, members = line.split("|")
        fields = dict(m.split(":", 1) for m in members.split("\t") if m)
        packets.append((proto, correlation, fields))
    return packets


def test_a_5s_call_gives_rtp_records_and_homer_reads_its_quality(tmp_path: Path) -> None:
    pcap = tmp_path / "paced.pcap"
    calls.write_pcap(pcap, timeline())
    datagrams, port = collect(tmp_path, pcap)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    rtp = [r for r in records if r["kind"] == "rtp"]
    assert sorted(r["ssrc"] for r in rtp) == sorted([UP.ssrc, DOWN.ssrc]) and all(r["final"] for r in rtp)

    packets = decoded(datagrams, port, tmp_path)
    assert Counter(proto for proto, _cid, _fields in packets) == {SIP: 6, RTP_AGENT: 2, RTCP: 1}
    assert {cid for _proto, cid, _fields in packets} == {DIALOG.call_id}
    quality = {int(fields["SSRC"]): fields for proto, _cid, fields in packets if proto == RTP_AGENT}
    for stream in (UP, DOWN):
        sent = quality[stream.ssrc]
        assert set(sent) >= HEPLIFY_RTP_PATHS
        assert all(float(sent[key]) >= 0 for key in HEPLIFY_RTP_PATHS), "heplify parses each as a float"
        assert (sent["CODEC_NAME"], sent["TYPE"], sent["CORRELATION_ID"]) == ("PCMA/8000", "HANGUP",
                                                                             DIALOG.call_id)
        assert int(sent["PACKET_LOSS"]) == stream.lost_packets and int(sent["TOTAL_PK"]) == stream.sent
        assert float(sent["DELTA"]) == 20.0 or stream is UP, "mean inter-packet time of a clean stream"
    (rtcp,) = [fields for proto, _cid, fields in packets if proto == RTCP]
    assert set(rtcp) >= HEPLIFY_RTCP_BLOCK_PATHS, "report_blocks[0] as heplify-server reads it"
    assert (int(rtcp["source_ssrc"]), int(rtcp["ia_jitter"])) == (DOWN.ssrc, 8)

"""bpf/otus_event.h and userspace/event.py are one contract."""

from __future__ import annotations

import pytest

from tests.support.contract import contract_mismatches
from tests.support.frames import ring_record
from tests.support.paths import REPO
from userspace.errors import Malformed, Truncated
from userspace.event import EVENT_HEADER, Direction, decode_event

HEADER = (REPO / "bpf" / "otus_event.h").read_text()


def test_header_and_python_definition_agree() -> None:
    assert contract_mismatches(HEADER) == []


@pytest.mark.parametrize(("before", "after"), [
    ("__u32 cap_len;", "__u16 cap_len;"),                    # a type changes
    ("__u32 flow_hash;", "__u32 flow_hash2;"),              # a name changes
    ("__u8 pad[2];", "__u8 pad[3];"),                        # the size changes
    ("__u64 jitter;", "__u32 jitter;"),                      # a kernel-kept stream field changes
    ("__u16 port;", "__u32 port;"),                          # a map key changes
    ("__u32 media_snaplen;", "__u32 media_snap;"),           # a map value is renamed
    ("__u8 kind;", "__u8 kind;\n\t__u8 extra;"),            # a field is added
    ("#define OTUS_KIND_SIP 1", "#define OTUS_KIND_SIP 2"),  # an enum value changes
    ("#define OTUS_CTR_MAX 28", "#define OTUS_CTR_MAX 29"),
    ("#define OTUS_CTR_DECAP_NESTED 26", "#define OTUS_CTR_DECAP_NESTED 25"),
    ("#define OTUS_FLAG_INNER 64", "#define OTUS_FLAG_INNER 128"),
    ("#define OTUS_PORT_GENEVE 4", "#define OTUS_PORT_GENEVE 8"),
    ("#define OTUS_CFG_DECAP_IPIP 8192", "#define OTUS_CFG_DECAP_IPIP 16384"),
    ("#define OTUS_CTR_DUPLICATE 13", "#define OTUS_CTR_DUPLICATE 12"),
    ("__u32 dedup_window_ms;", "__u32 pad;"),                 # the config's new field
    ("__u8 token[16];", "__u8 token[15];"),                  # the drop list's key
    ("#define OTUS_DEDUP_PREFIX 128", "#define OTUS_DEDUP_PREFIX 64"),
    ("#define OTUS_CSEQ_SCAN 512", "#define OTUS_CSEQ_SCAN 384"),
    ("#define OTUS_FLAG_VLAN 8", "#define OTUS_FLAG_VLAN 16"),
    ("#define OTUS_CFG_SIGNATURE 1", "#define OTUS_CFG_SIG 1"),
    ("#define OTUS_STREAM_EVENT 4", "#define OTUS_STREAM_EVENT 8"),
    ("#define OTUS_DEFAULT_CLOCK 8000", "#define OTUS_DEFAULT_CLOCK 16000"),
    ("__u64 offset;", "__u32 offset;"),                      # the TLS chunk's header
    ("#define OTUS_TLS_CALL_READ_EX 4", "#define OTUS_TLS_CALL_READ_EX 5"),
    ("#define OTUS_TLS_CTR_OTHER_PORT 6", "#define OTUS_TLS_CTR_OTHER_PORT 7"),
    ("#define OTUS_TLS_DATA 16384", "#define OTUS_TLS_DATA 8192"),
    ("#define OTUS_CFG_TLS_COMMS 65536", "#define OTUS_CFG_TLS_COMMS 1"),
])
def test_any_change_to_one_side_is_caught(before: str, after: str) -> None:
    assert before in HEADER
    assert contract_mismatches(HEADER.replace(before, after, 1)) != []


def test_swapped_fields_are_caught() -> None:
    swapped = HEADER.replace("__u32 ifindex;", "__u32 TMP;").replace(
        "__u32 orig_len;", "__u32 ifindex;").replace("__u32 TMP;", "__u32 orig_len;")
    assert contract_mismatches(swapped) != []


def test_a_line_outside_the_restricted_style_is_refused() -> None:
    with pytest.raises(ValueError, match="restricted style"):
        contract_mismatches(HEADER.replace("__u32 ifindex;", "unsigned int ifindex;"))


def test_decode_event_splits_header_and_frame() -> None:
    frame = bytes(range(60))
    event = decode_event(ring_record(frame, Direction.EGRESS, ts_ns=42, ifindex=7))
    assert (event.ts_ns, event.ifindex, event.direction, event.cap_len) == (42, 7, Direction.EGRESS, 60)
    assert event.frame == frame


def test_decode_event_rejects_short_and_inconsistent_records() -> None:
    record = ring_record(bytes(60))
    with pytest.raises(Truncated):
        decode_event(record[:EVENT_HEADER.size - 1])
    with pytest.raises(Truncated):
        decode_event(record[:-1])  # cap_len says 60, 59 follow
    bad_direction = bytearray(record)
    bad_direction[30] = 9  # the direction byte
    with pytest.raises(Malformed):
        decode_event(bytes(bad_direction))

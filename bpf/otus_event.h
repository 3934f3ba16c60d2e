/* otus_event.h — the kernel↔user contract: the record the kernel sends up,
 * the counters it keeps, and the layout of every map user space writes.
 *
 * Keep the restricted style: one field per line, __u8/__u16/__u32/__u64 and
 * arrays only, explicit padding. tests/unit/test_event_contract.py parses
 * this text and fails on any difference from the Python definitions in
 * userspace/event.py (the record) and otus_ebpf/kernel/abi.py (the maps).
 *
 * Fields are in host byte order unless the name ends in _be; packet bytes
 * after the record header and addresses in keys are raw, as on the wire.
 */
#ifndef OTUS_EVENT_H
#define OTUS_EVENT_H

/* enum otus_direction */
#define OTUS_DIR_INGRESS 0
#define OTUS_DIR_EGRESS 1

/* enum otus_kind: why the kernel sent the packet up */
#define OTUS_KIND_SIP 1
#define OTUS_KIND_RTP 2
#define OTUS_KIND_RTCP 3
#define OTUS_KIND_FRAGMENT 4
/* never from the kernel: a SIP message one worker framed (TCP, fragments)
 * and handed to the worker that owns its Call-ID (userspace.sharding) */
#define OTUS_KIND_HANDOFF 5
/* plaintext a local process wrote to or read from its TLS library (bpf/otus_tls.c):
 * the record's bytes are a struct otus_tls, then the plaintext; payload_offset
 * is where the plaintext starts, orig_len how much the call moved */
#define OTUS_KIND_TLS 6

/* enum otus_flag: bits of otus_event.flags */
#define OTUS_FLAG_FRAGMENT 1
#define OTUS_FLAG_IPV6 2
#define OTUS_FLAG_SIGNATURE 4
#define OTUS_FLAG_VLAN 8
/* flow_hash names the owner: the Call-ID's hash (SIP over UDP) or the
 * worker that learned the endpoint (media); see docs/SHARDING.md */
#define OTUS_FLAG_OWNED 16
/* the first packet of a stream the kernel measures (struct otus_stream):
 * user space learns the stream from it; its later packets stay in the map */
#define OTUS_FLAG_STREAM 32
/* the packet came inside a tunnel (one level of VXLAN, Geneve, GRE, ERSPAN
 * II/III or IP-in-IP): the offsets point into the inner packet, the copy
 * still starts at the outer frame's first byte, and user space walks the
 * outer headers again for the tunnel's kind, id and addresses */
#define OTUS_FLAG_INNER 64

/* enum otus_counter: the index into otus_counters.counts.
 * Every packet ends in exactly one verdict (NOT_IP .. DUPLICATE), so the
 * verdicts add up to SEEN; the delivery counters follow the matches. */
#define OTUS_CTR_SEEN 0
#define OTUS_CTR_NOT_IP 1
#define OTUS_CTR_TRUNCATED 2
#define OTUS_CTR_MALFORMED 3
#define OTUS_CTR_OTHER_L4 4
#define OTUS_CTR_FILTERED 5
#define OTUS_CTR_NO_MATCH 6
#define OTUS_CTR_MATCHED_SIP_PORT 7
#define OTUS_CTR_MATCHED_SIP_SIGNATURE 8
#define OTUS_CTR_MATCHED_RTP 9
#define OTUS_CTR_MATCHED_RTCP 10
#define OTUS_CTR_MATCHED_FRAGMENT 11
/* SIP over UDP whose request method or status code is in drop_methods, or a
 * response whose CSeq names such a method: not copied up */
#define OTUS_CTR_DROPPED_METHOD 12
/* a match seen within the dedup window already (OTUS_CFG_DEDUP): not copied up */
#define OTUS_CTR_DUPLICATE 13
#define OTUS_CTR_SUBMITTED 14
#define OTUS_CTR_SUBMIT_FAILED 15
#define OTUS_CTR_LOAD_FAILED 16
/* learned RTP counted in the kernel's stream statistics, not copied up */
#define OTUS_CTR_MEDIA_COUNTED 17
/* learned RTP of a new stream the full streams map could not hold: copied up */
#define OTUS_CTR_STREAMS_FULL 18
/* a match that took over a dedup slot whose packet was still within its
 * window: a copy of that packet arriving later goes up (OTUS_CFG_DEDUP) */
#define OTUS_CTR_DEDUP_DISPLACED 19
/* tunnels decapsulated (one level), by kind; the inner packet then ends in
 * one verdict as any other packet does */
#define OTUS_CTR_DECAP_VXLAN 20
#define OTUS_CTR_DECAP_GENEVE 21
#define OTUS_CTR_DECAP_GRE 22
#define OTUS_CTR_DECAP_ERSPAN 23
#define OTUS_CTR_DECAP_IPIP 24
/* a tunnel header the decapsulation refuses (VXLAN without its I flag, GRE
 * with routing or a version, an ERSPAN version or Geneve version it does not
 * know, a header cut short): the packet's verdict is MALFORMED or TRUNCATED */
#define OTUS_CTR_DECAP_BAD 25
/* a tunnel inside a tunnel: counted, not opened (one level only) */
#define OTUS_CTR_DECAP_NESTED 26
/* a tunnel from a source outside the trusted mirrors (OTUS_CFG_MIRRORS_*):
 * not opened; the packet ends as NO_MATCH (UDP) or OTHER_L4 */
#define OTUS_CTR_DECAP_UNTRUSTED 27
#define OTUS_CTR_MAX 28

/* Ring shards: worker processes, at most. */
#define OTUS_MAX_SHARDS 8

/* The per-CPU "counters" array: one entry per direction (OTUS_DIR_*), so a
 * packet finds every counter it moves with one lookup. The array lengths
 * are OTUS_CTR_MAX and OTUS_MAX_SHARDS (otus.c asserts it). */
struct otus_counters {
	__u64 counts[28];     /* by OTUS_CTR_* */
	__u64 shard_failures[8]; /* ring submits that failed, by shard */
};

/* enum otus_config_flag: bits of otus_config.flags */
#define OTUS_CFG_SIGNATURE 1
#define OTUS_CFG_INCLUDE_V4 2
#define OTUS_CFG_INCLUDE_V6 4
#define OTUS_CFG_EXCLUDE_V4 8
#define OTUS_CFG_EXCLUDE_V6 16
/* capture paused: every packet counts as filtered, none goes up */
#define OTUS_CFG_PAUSED 32
/* every learned RTP packet goes up (pcap of media, or no stream statistics
 * in the kernel); without it the kernel measures RTP itself */
#define OTUS_CFG_MEDIA_PACKETS 64
/* drop_methods holds something: SIP datagrams are checked against it */
#define OTUS_CFG_DROP_METHODS 128
/* a match seen within dedup_window_ms is a duplicate (the "dedup" map) */
#define OTUS_CFG_DEDUP 256
/* one level of decapsulation, by kind (bpf/otus.c "Tunnels"); VXLAN and
 * Geneve also need their UDP ports marked in sip_ports (OTUS_PORT_*) */
#define OTUS_CFG_DECAP_VXLAN 512
#define OTUS_CFG_DECAP_GENEVE 1024
#define OTUS_CFG_DECAP_GRE 2048
#define OTUS_CFG_DECAP_ERSPAN 4096
#define OTUS_CFG_DECAP_IPIP 8192
/* tunnels are opened only from sources in mirrors_v4 / mirrors_v6 */
#define OTUS_CFG_MIRRORS_V4 16384
#define OTUS_CFG_MIRRORS_V6 32768
/* TLS plaintext only from processes whose comm is in "tls_comms" (bpf/otus_tls.c) */
#define OTUS_CFG_TLS_COMMS 65536

/* bits of a "sip_ports" value: what a UDP port is for */
#define OTUS_PORT_SIP 1
#define OTUS_PORT_VXLAN 2
#define OTUS_PORT_GENEVE 4

struct otus_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;
	__u32 orig_len;       /* frame length on the wire */
	__u32 cap_len;        /* packet bytes that follow this header */
	__u32 flow_hash;      /* symmetric 5-tuple hash; addresses + IP id for fragments; OWNED: the owner */
	__u16 l3_offset;      /* from the start of the frame */
	__u16 l4_offset;      /* 0 for a non-first fragment */
	__u16 payload_offset; /* 0 for a non-first fragment */
	__u8 direction;       /* OTUS_DIR_* */
	__u8 kind;            /* OTUS_KIND_* */
	__u8 l4_proto;        /* IPPROTO_UDP, IPPROTO_TCP, or the fragment's protocol */
	__u8 flags;           /* OTUS_FLAG_* */
	__u8 shard;           /* the ring this record went to */
	__u8 pad;
	__u32 owner;          /* media: the flow's owner tag (struct otus_stream_key); else 0 */
};

/* The single entry of the "config" array map. */
struct otus_config {
	__u32 flags;          /* OTUS_CFG_* */
	__u32 sip_snaplen;    /* bytes of a SIP or fragment frame to copy, <= OTUS_SNAPLEN */
	__u32 media_snaplen;  /* bytes past the UDP header to copy for RTP/RTCP */
	__u32 dedup_window_ms; /* OTUS_CFG_DEDUP: how long a packet's digest stays a duplicate's */
	__u64 dedup_seed;     /* the digest's key, random, set once at load */
};

/* "drop_methods" hash map: request methods and 3-digit status codes whose SIP
 * datagrams are not copied up, each zero-padded. At most OTUS_MAX_DROP_METHODS
 * tokens of at most OTUS_DROP_TOKEN_LEN bytes (A-Z, 0-9). */
struct otus_drop_key {
	__u8 token[16];
};

#define OTUS_DROP_TOKEN_LEN 16
#define OTUS_MAX_DROP_METHODS 16
/* A response's CSeq method is looked for in its first OTUS_CSEQ_SCAN bytes
 * (userspace/droplist.py mirrors the scan). */
#define OTUS_CSEQ_SCAN 512

/* Duplicate suppression: the "dedup" table's slots (a power of two), and the
 * L4 payload bytes a packet's digest covers (userspace/dedup.py mirrors the
 * second). */
#define OTUS_DEDUP_ENTRIES 65536
#define OTUS_DEDUP_PREFIX 128

/* "flows" hash map: endpoints announced in SDP. A packet matches when its
 * source or its destination is a key. Addresses are raw; IPv4 uses the first
 * four bytes, the rest stay zero. */
struct otus_flow_key {
	__u8 addr[16];
	__u16 port;
	__u8 l4_proto;
	__u8 family;          /* 4 or 6; learned inside a tunnel: | its OTUS_TUNNEL_* << OTUS_FLOW_TUNNEL_SHIFT */
};

/* enum otus_tunnel: the kind of tunnel a flow was announced in (otus_flow_key.family's
 * high bits), in the order of the OTUS_CTR_DECAP_* counters */
#define OTUS_TUNNEL_VXLAN 1
#define OTUS_TUNNEL_GENEVE 2
#define OTUS_TUNNEL_GRE 3
#define OTUS_TUNNEL_ERSPAN 4
#define OTUS_TUNNEL_IPIP 5
#define OTUS_FLOW_TUNNEL_SHIFT 4

struct otus_flow_value {
	__u8 kind;            /* OTUS_KIND_RTP or OTUS_KIND_RTCP */
	__u8 shard;           /* the worker that learned the flow (the newest holder's) */
	__u8 flags;           /* OTUS_FLOW_* */
	__u8 clock_count;     /* entries used in clock_types and clock_rates */
	__u32 owner;          /* the holding call's tag: its streams are keyed by it */
	/* The payload types of the endpoint's SDP whose RTP clock is not
	 * OTUS_DEFAULT_CLOCK, with their clock; 0: telephone-event (RFC 4733),
	 * counted apart and kept out of the jitter. Any other type runs at
	 * OTUS_DEFAULT_CLOCK, as RFC 3551's static types do. */
	__u8 clock_types[8];
	__u32 clock_rates[8];
};

#define OTUS_MAX_CLOCKS 8
#define OTUS_DEFAULT_CLOCK 8000

/* Calls in more than one worker hold this endpoint: a packet to it goes to
 * the worker of its other end, when that end is held by one worker only. */
#define OTUS_FLOW_SHARED 1

/* "streams" hash map: RFC 3550 statistics of each RTP stream on a learned
 * flow, kept by the kernel (RTP is not copied up unless
 * OTUS_CFG_MEDIA_PACKETS). A stream is a flow, an SSRC and the owner tag of
 * the call holding the flow's endpoint, so a new SSRC or a new call is a new
 * stream. The worker that learned the flow reads and deletes it. */
struct otus_stream_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u32 ssrc;
	__u32 owner;
	__u8 family;          /* 4 or 6 */
	__u8 worker;          /* the flow's shard: the worker that reads it */
	__u8 pad[2];
};

/* The fields mirror userspace/rtp.py's RtpStream, which is the oracle the
 * kernel tests compare it with. Updated under the lock: a stream's packets
 * may arrive on several CPUs (RSS, several queues, egress on the sender's
 * CPU), and sequence tracking and jitter need every packet in turn. */
struct otus_stream {
	struct bpf_spin_lock lock;
	__u32 packets;        /* counted: not duplicates, not strays */
	__u64 bytes;          /* UDP payload bytes of the counted packets */
	__u64 first_ns;       /* arrivals, bpf_ktime_get_ns() */
	__u64 last_ns;
	__u64 last_arrival_ns; /* of the previous audio packet (OTUS_STREAM_ARRIVAL) */
	__u64 jitter;         /* RFC 3550 A.8, in the clock's units x 65536 */
	__u64 recent_lo;      /* bit i: extended seq (max - i) seen, i < 64 */
	__u64 recent_hi;      /* bits 64..100 */
	__u32 cycles;         /* sequence wraps (A.1) */
	__u32 expected_before; /* packets expected before a confirmed restart */
	__u32 reordered;
	__u32 duplicates;
	__u32 stray;          /* far outside the sequence, not confirmed by the next */
	__u32 clock_rate;     /* of the current audio payload type */
	__u32 last_timestamp; /* RTP timestamp of the previous audio packet */
	__u32 event_timestamp; /* of the last telephone-event (OTUS_STREAM_EVENT) */
	__u32 event_packets;
	__u32 events;         /* distinct telephone-events (a new timestamp each) */
	__u16 base_seq;
	__u16 max_seq;
	__u16 bad_seq;        /* the seq that would confirm a jump (OTUS_STREAM_BAD_SEQ) */
	__u8 audio_type;      /* OTUS_NO_TYPE before the first audio packet */
	__u8 state;           /* OTUS_STREAM_* */
	__u8 types[4];        /* payload types seen, in order, with their packets */
	__u32 type_packets[4];
	__u32 other_types;    /* packets of payload types past the fourth */
};

/* enum otus_stream_state: bits of otus_stream.state */
#define OTUS_STREAM_BAD_SEQ 1
#define OTUS_STREAM_ARRIVAL 2
#define OTUS_STREAM_EVENT 4
#define OTUS_NO_TYPE 255

/* "include_v4"/"exclude_v4" and "include_v6"/"exclude_v6" LPM tries:
 * a packet is filtered when either address is excluded, or when an include
 * list is configured and neither address is in it. */
struct otus_lpm_v4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct otus_lpm_v6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* TLS plaintext (bpf/otus_tls.c, compiled with OTUS_TLS): after the struct
 * otus_event of kind OTUS_KIND_TLS. One per TLS library call that moved data
 * on a connection to or from a TLS SIP port ("tls_ports"). Addresses are the
 * connection's as its socket holds them (an IPv6 socket's IPv4 peer is
 * IPv4-mapped); src is the sender's: the process for OTUS_DIR_EGRESS (a write),
 * the peer for OTUS_DIR_INGRESS (a read). */
struct otus_tls {
	__u64 offset;         /* bytes this process moved that way on the connection before */
	__u32 pid;            /* the process (tgid) */
	__u32 tid;
	__u8 comm[16];
	__u8 saddr[16];       /* raw; IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 family;          /* 4 or 6 */
	__u8 call;            /* OTUS_TLS_CALL_* */
	__u8 pad[2];
};

/* enum otus_tls_call: the library function that moved the bytes */
#define OTUS_TLS_CALL_WRITE 1
#define OTUS_TLS_CALL_READ 2
#define OTUS_TLS_CALL_WRITE_EX 3
#define OTUS_TLS_CALL_READ_EX 4

/* Plaintext bytes copied from one call at most: a TLS record's (RFC 8446 §5.1) */
#define OTUS_TLS_DATA 16384

/* enum otus_tls_counter: the index into otus_tls_counters.counts:
 * CALLS: library calls that moved plaintext; SUBMITTED: chunks sent up;
 * SUBMIT_FAILED: a full ring, the chunk lost (a gap in its stream); CUT: more
 * than OTUS_TLS_DATA in one call, the rest not copied; READ_FAILED: the
 * process's buffer could not be read; UNPAIRED: no TCP connection known for
 * the session yet; OTHER_PORT: a connection on no TLS SIP port, not sent up;
 * UNTRACKED: a call's return found no entry (the full tls_calls LRU gave it to
 * another thread), its bytes missing from its stream */
#define OTUS_TLS_CTR_CALLS 0
#define OTUS_TLS_CTR_SUBMITTED 1
#define OTUS_TLS_CTR_SUBMIT_FAILED 2
#define OTUS_TLS_CTR_CUT 3
#define OTUS_TLS_CTR_READ_FAILED 4
#define OTUS_TLS_CTR_UNPAIRED 5
#define OTUS_TLS_CTR_OTHER_PORT 6
#define OTUS_TLS_CTR_UNTRACKED 7
#define OTUS_TLS_CTR_MAX 8

/* The per-CPU "tls_counters" array's single entry. */
struct otus_tls_counters {
	__u64 counts[8];      /* by OTUS_TLS_CTR_* */
};

#endif /* OTUS_EVENT_H */

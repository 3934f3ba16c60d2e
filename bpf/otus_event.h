/* otus_event.h — the kernel↔user contract: the record the kernel sends up,
 * the counters it keeps, and the layout of every map user space writes.
 *
 * Keep the restricted style: one field per line, __u8/__u16/__u32/__u64 and
 * arrays only, explicit padding. tests/unit/test_event_contract.py parses
 * this text and fails on any difference from the Python definitions in
 * userspace/event.py (the record) and otus_ebpf/kernel_abi.py (the maps).
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

/* enum otus_flag: bits of otus_event.flags */
#define OTUS_FLAG_FRAGMENT 1
#define OTUS_FLAG_IPV6 2
#define OTUS_FLAG_SIGNATURE 4
#define OTUS_FLAG_VLAN 8
/* flow_hash names the owner: the Call-ID's hash (SIP over UDP) or the
 * worker that learned the endpoint (media); see docs/SHARDING.md */
#define OTUS_FLAG_OWNED 16

/* enum otus_counter: per-CPU array index = direction * OTUS_CTR_MAX + counter.
 * Every packet ends in exactly one verdict (NOT_IP .. MATCHED_FRAGMENT), so
 * the verdicts add up to SEEN; the delivery counters follow the matches. */
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
#define OTUS_CTR_SUBMITTED 12
#define OTUS_CTR_SUBMIT_FAILED 13
#define OTUS_CTR_LOAD_FAILED 14
#define OTUS_CTR_MAX 15

/* enum otus_config_flag: bits of otus_config.flags */
#define OTUS_CFG_SIGNATURE 1
#define OTUS_CFG_INCLUDE_V4 2
#define OTUS_CFG_INCLUDE_V6 4
#define OTUS_CFG_EXCLUDE_V4 8
#define OTUS_CFG_EXCLUDE_V6 16
/* capture paused: every packet counts as filtered, none goes up */
#define OTUS_CFG_PAUSED 32

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
	__u8 pad[5];
};

/* The single entry of the "config" array map. */
struct otus_config {
	__u32 flags;          /* OTUS_CFG_* */
	__u32 sip_snaplen;    /* bytes of a SIP or fragment frame to copy, <= OTUS_SNAPLEN */
	__u32 media_snaplen;  /* bytes past the UDP header to copy for RTP/RTCP */
	__u32 pad;
};

/* "flows" hash map: endpoints announced in SDP. A packet matches when its
 * source or its destination is a key. Addresses are raw; IPv4 uses the first
 * four bytes, the rest stay zero. */
struct otus_flow_key {
	__u8 addr[16];
	__u16 port;
	__u8 l4_proto;
	__u8 family;          /* 4 or 6 */
};

struct otus_flow_value {
	__u8 kind;            /* OTUS_KIND_RTP or OTUS_KIND_RTCP */
	__u8 shard;           /* the worker that learned the flow (the newest holder's) */
	__u8 flags;           /* OTUS_FLOW_* */
	__u8 pad[5];
};

/* Calls in more than one worker hold this endpoint: a packet to it goes to
 * the worker of its other end, when that end is held by one worker only. */
#define OTUS_FLOW_SHARED 1

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

#endif /* OTUS_EVENT_H */

/* otus_event.h — the one record the kernel sends up, and the counter layout.
 *
 * This header is a contract with userspace/event.py. Keep the restricted
 * style: one field per line, __u8/__u16/__u32/__u64 and arrays only,
 * explicit padding. tests/unit/test_event_contract.py parses this text and
 * fails on any difference from the Python definition.
 *
 * All fields are in host byte order; the packet bytes that follow the
 * header are raw, as on the wire.
 */
#ifndef OTUS_EVENT_H
#define OTUS_EVENT_H

/* enum otus_direction */
#define OTUS_DIR_INGRESS 0
#define OTUS_DIR_EGRESS 1

/* enum otus_kind: why the kernel sent the packet up */
#define OTUS_KIND_SIP 1

/* enum otus_counter: per-CPU array index = direction * OTUS_CTR_MAX + counter */
#define OTUS_CTR_SEEN 0
#define OTUS_CTR_NOT_IP 1
#define OTUS_CTR_TRUNCATED 2
#define OTUS_CTR_NOT_UDP_TCP 3
#define OTUS_CTR_MATCHED 4
#define OTUS_CTR_SUBMITTED 5
#define OTUS_CTR_SUBMIT_FAILED 6
#define OTUS_CTR_LOAD_FAILED 7
#define OTUS_CTR_MAX 8

struct otus_event {
	__u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 ifindex;
	__u32 orig_len;       /* frame length on the wire */
	__u32 cap_len;        /* packet bytes that follow this header */
	__u32 flow_hash;      /* symmetric: both directions hash the same */
	__u16 l3_offset;      /* from the start of the frame */
	__u16 l4_offset;
	__u16 payload_offset;
	__u8 direction;       /* OTUS_DIR_* */
	__u8 kind;            /* OTUS_KIND_* */
	__u8 l4_proto;        /* IPPROTO_UDP or IPPROTO_TCP */
	__u8 flags;           /* reserved, 0 */
	__u8 pad[6];
};

#endif /* OTUS_EVENT_H */

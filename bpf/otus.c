/* otus.c — XDP (ingress) and TC (egress) classification of VoIP traffic.
 *
 * Both programs share one path: parse_frame (L2-L4), classify (filters,
 * SIP ports, learned media flows, SIP signature, fragments) and
 * submit_sample (copy into the shard's ring). They differ only in how they
 * read their context. Every packet ends in exactly one verdict counter, and
 * every packet is let through: monitoring never changes traffic.
 *
 * Compiled by bcc at attach time. Sizes arrive as cflags defines
 * (OTUS_SNAPLEN, OTUS_SHARDS, OTUS_MAX_FLOWS,
 * OTUS_CALLID_ROUTING: only with worker processes, where it is used); everything that
 * changes at run time lives in maps (config, sip_ports, flows, flow_ports,
 * include/exclude tries), never in this text.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "otus_event.h"

#ifndef OTUS_SNAPLEN
#define OTUS_SNAPLEN 2048
#endif
#ifndef OTUS_DATA_LEN
#define OTUS_DATA_LEN 2048 /* a power of two >= OTUS_SNAPLEN */
#endif
#if OTUS_DATA_LEN < OTUS_SNAPLEN || (OTUS_DATA_LEN & (OTUS_DATA_LEN - 1))
#error "OTUS_DATA_LEN must be a power of two >= OTUS_SNAPLEN"
#endif
#ifndef OTUS_SHARDS
#define OTUS_SHARDS 1
#endif
/* Learned media endpoints; user space derives it from its call limit
 * (CallLimits.flow_map_entries: four per call). */
#ifndef OTUS_MAX_FLOWS
#define OTUS_MAX_FLOWS 400000
#endif
/* RTP streams the kernel measures: two per call of the call limit
 * (CallLimits.stream_table_entries). */
#ifndef OTUS_MAX_STREAMS
#define OTUS_MAX_STREAMS 200000
#endif
#if OTUS_SHARDS < 1 || OTUS_SHARDS > OTUS_MAX_SHARDS
#error "OTUS_SHARDS must be 1..OTUS_MAX_SHARDS"
#endif
#if OTUS_MAX_SHARDS & (OTUS_MAX_SHARDS - 1)
#error "OTUS_MAX_SHARDS must be a power of two: a mask bounds the shard index for the verifier"
#endif
_Static_assert(sizeof(((struct otus_counters *)0)->counts) == OTUS_CTR_MAX * sizeof(__u64),
	       "otus_counters.counts must hold OTUS_CTR_MAX counters");
_Static_assert(sizeof(((struct otus_counters *)0)->shard_failures) == OTUS_MAX_SHARDS * sizeof(__u64),
	       "otus_counters.shard_failures must hold OTUS_MAX_SHARDS shards");
/* Bytes of an egress skb we need linear to parse L2-L4 headers. */
#define OTUS_PULL_LEN 256
#define OTUS_VLAN_DEPTH 2
#define OTUS_IPV6_EXT_DEPTH 6
#define OTUS_ETH_P_8021Q 0x8100
#define OTUS_ETH_P_8021AD 0x88A8
#define OTUS_IP_MF 0x2000
#define OTUS_IP_OFFSET_MASK 0x1FFF
#define OTUS_IP6_OFFSET_MASK 0xFFF8
#define OTUS_IP6_MF 0x0001
#define OTUS_SIGNATURE_LEN 8
#define TC_ACT_UNSPEC (-1) /* clsact: default action; TCX: next program */

struct otus_sample {
	struct otus_event hdr;
	__u8 data[OTUS_DATA_LEN];
};

struct otus_parsed {
	__u32 saddr[4];       /* raw; IPv4 in [0] */
	__u32 daddr[4];
	__u32 frag_id;
	__u16 l3_offset;
	__u16 l4_offset;
	__u16 payload_offset;
	__u16 sport;
	__u16 dport;
	__u8 l4_proto;
	__u8 flags;           /* OTUS_FLAG_* */
	__u8 family;          /* 4 or 6 */
	__u8 non_first_fragment;
};

struct otus_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

struct otus_ipv6_ext {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct otus_ipv6_frag {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 identification;
};

/* The rings, one BPF ring buffer per shard, in an array of maps: user space
 * creates each ring (filter.ring_mb) and sets it at its shard's index
 * (otus_ebpf/kernel/loader.py create_rings), and reads it with libbpf's
 * ring_buffer API. bcc's BPF_ARRAY_OF_MAPS takes its inner map's type from
 * a map declared here by name: ring_template, one page, never written. */
BPF_RINGBUF_OUTPUT(ring_template, 1);
BPF_ARRAY_OF_MAPS(rings, "ring_template", OTUS_SHARDS);

BPF_PERCPU_ARRAY(counters, struct otus_counters, 2);
BPF_PERCPU_ARRAY(scratch, struct otus_sample, 1);
BPF_ARRAY(config, struct otus_config, 1);
BPF_ARRAY(sip_ports, __u8, 65536);
/* How many learned flows use each port: a cheap pre-check, so packets on
 * ports no flow uses never pay for the hash lookup. */
BPF_ARRAY(flow_ports, __u32, 65536);
/* Not preallocated: sized for a carrier's busiest hour, it costs kernel
 * memory only for the endpoints actually learned (docs/CONFIG.md). A full
 * map refuses the update (E2BIG), which user space counts. */
BPF_F_TABLE("hash", struct otus_flow_key, struct otus_flow_value, flows, OTUS_MAX_FLOWS, BPF_F_NO_PREALLOC);
/* Not preallocated either; a full map is counted (OTUS_CTR_STREAMS_FULL). */
BPF_F_TABLE("hash", struct otus_stream_key, struct otus_stream, streams, OTUS_MAX_STREAMS, BPF_F_NO_PREALLOC);
BPF_LPM_TRIE(include_v4, struct otus_lpm_v4, __u8, 4096);
BPF_LPM_TRIE(exclude_v4, struct otus_lpm_v4, __u8, 4096);
BPF_LPM_TRIE(include_v6, struct otus_lpm_v6, __u8, 4096);
BPF_LPM_TRIE(exclude_v6, struct otus_lpm_v6, __u8, 4096);

/* ``c``: the packet's direction's counters, looked up once by the hook. */
static __always_inline void count(struct otus_counters *c, __u32 counter)
{
	if (counter < OTUS_CTR_MAX)
		c->counts[counter] += 1;
}

/* murmur3 finaliser: spreads an XOR-folded tuple over all 32 bits. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* XOR is symmetric, so both directions of a conversation fold the same. */
static __always_inline __u32 address_fold(struct otus_parsed *p)
{
	return p->saddr[0] ^ p->daddr[0] ^ p->saddr[1] ^ p->daddr[1] ^
	       p->saddr[2] ^ p->daddr[2] ^ p->saddr[3] ^ p->daddr[3];
}

static __always_inline int parse_ipv4(void *data, void *data_end, __u32 *off, struct otus_parsed *p)
{
	struct iphdr *ip = data + *off;

	if ((void *)(ip + 1) > data_end)
		return OTUS_CTR_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return OTUS_CTR_MALFORMED;
	p->family = 4;
	p->l4_proto = ip->protocol;
	p->saddr[0] = ip->saddr;
	p->daddr[0] = ip->daddr;
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (OTUS_IP_MF | OTUS_IP_OFFSET_MASK)) {
		p->flags |= OTUS_FLAG_FRAGMENT;
		p->frag_id = ip->id;
		p->non_first_fragment = (frag & OTUS_IP_OFFSET_MASK) != 0;
	}
	*off += ip->ihl * 4;
	return 0;
}

/* Walks hop-by-hop, routing, destination options, AH and fragment headers
 * (RFC 8200 §4) to the upper-layer header. */
static __always_inline int parse_ipv6(void *data, void *data_end, __u32 *off, struct otus_parsed *p)
{
	struct ipv6hdr *ip6 = data + *off;

	if ((void *)(ip6 + 1) > data_end)
		return OTUS_CTR_TRUNCATED;
	if (ip6->version != 6)
		return OTUS_CTR_MALFORMED;
	p->family = 6;
	p->flags |= OTUS_FLAG_IPV6;
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	__u8 next = ip6->nexthdr;
	*off += sizeof(*ip6);

#pragma unroll
	for (int i = 0; i < OTUS_IPV6_EXT_DEPTH; i++) {
		if (next == IPPROTO_FRAGMENT) {
			struct otus_ipv6_frag *frag = data + *off;
			if ((void *)(frag + 1) > data_end)
				return OTUS_CTR_TRUNCATED;
			__u16 frag_off = bpf_ntohs(frag->frag_off);
			p->flags |= OTUS_FLAG_FRAGMENT;
			p->frag_id = frag->identification;
			p->non_first_fragment = (frag_off & OTUS_IP6_OFFSET_MASK) != 0;
			next = frag->nexthdr;
			*off += sizeof(*frag);
		} else if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
			   next == IPPROTO_DSTOPTS || next == IPPROTO_AH) {
			struct otus_ipv6_ext *ext = data + *off;
			if ((void *)(ext + 1) > data_end)
				return OTUS_CTR_TRUNCATED;
			/* AH counts 4-byte units minus 2 (RFC 4302); the rest 8-byte units minus 1. */
			*off += next == IPPROTO_AH ? (ext->hdrlen + 2) * 4 : (ext->hdrlen + 1) * 8;
			next = ext->nexthdr;
		} else {
			break;
		}
		if (p->non_first_fragment)
			break;
	}
	p->l4_proto = next;
	return 0;
}

static __always_inline int parse_l4(void *data, void *data_end, __u32 *off, struct otus_parsed *p)
{
	if (p->l4_proto == IPPROTO_UDP) {
		struct udphdr *udp = data + *off;
		if ((void *)(udp + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		p->sport = bpf_ntohs(udp->source);
		p->dport = bpf_ntohs(udp->dest);
		*off += sizeof(*udp);
		return 0;
	}
	if (p->l4_proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + *off;
		if ((void *)(tcp + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		if (tcp->doff < 5)
			return OTUS_CTR_MALFORMED;
		p->sport = bpf_ntohs(tcp->source);
		p->dport = bpf_ntohs(tcp->dest);
		*off += tcp->doff * 4;
		return 0;
	}
	return OTUS_CTR_OTHER_L4;
}

/* Parses L2 to L4. Returns 0, or the verdict counter that ends the packet.
 * A non-first fragment stops after L3: it carries no ports. */
static __always_inline int parse_frame(void *data, void *data_end, struct otus_parsed *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	int verdict;

	if ((void *)(eth + 1) > data_end)
		return OTUS_CTR_TRUNCATED;
	__u16 proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < OTUS_VLAN_DEPTH; i++) {
		if (proto != OTUS_ETH_P_8021Q && proto != OTUS_ETH_P_8021AD)
			break;
		struct otus_vlan_hdr *vlan = data + off;
		if ((void *)(vlan + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		p->flags |= OTUS_FLAG_VLAN;
		proto = bpf_ntohs(vlan->encapsulated_proto);
		off += sizeof(*vlan);
	}

	p->l3_offset = off;
	if (proto == ETH_P_IP)
		verdict = parse_ipv4(data, data_end, &off, p);
	else if (proto == ETH_P_IPV6)
		verdict = parse_ipv6(data, data_end, &off, p);
	else
		return OTUS_CTR_NOT_IP;
	if (verdict || p->non_first_fragment)
		return verdict;

	p->l4_offset = off;
	verdict = parse_l4(data, data_end, &off, p);
	if (verdict)
		return verdict;
	p->payload_offset = off;
	return 0;
}

static __always_inline int filtered_out_v4(struct otus_config *cfg, struct otus_parsed *p)
{
	struct otus_lpm_v4 src = {.prefixlen = 32}, dst = {.prefixlen = 32};

	__builtin_memcpy(src.addr, p->saddr, 4);
	__builtin_memcpy(dst.addr, p->daddr, 4);
	if ((cfg->flags & OTUS_CFG_EXCLUDE_V4) && (exclude_v4.lookup(&src) || exclude_v4.lookup(&dst)))
		return 1;
	if ((cfg->flags & OTUS_CFG_INCLUDE_V4) && !include_v4.lookup(&src) && !include_v4.lookup(&dst))
		return 1;
	return 0;
}

static __always_inline int filtered_out_v6(struct otus_config *cfg, struct otus_parsed *p)
{
	struct otus_lpm_v6 src = {.prefixlen = 128}, dst = {.prefixlen = 128};

	__builtin_memcpy(src.addr, p->saddr, 16);
	__builtin_memcpy(dst.addr, p->daddr, 16);
	if ((cfg->flags & OTUS_CFG_EXCLUDE_V6) && (exclude_v6.lookup(&src) || exclude_v6.lookup(&dst)))
		return 1;
	if ((cfg->flags & OTUS_CFG_INCLUDE_V6) && !include_v6.lookup(&src) && !include_v6.lookup(&dst))
		return 1;
	return 0;
}

/* True when the address filters say the packet is none of our business:
 * either address excluded, or an include list set and neither address in it. */
static __always_inline int filtered_out(struct otus_config *cfg, struct otus_parsed *p)
{
	return p->family == 4 ? filtered_out_v4(cfg, p) : filtered_out_v6(cfg, p);
}

static __always_inline struct otus_flow_value *learned_endpoint(struct otus_parsed *p, __u32 *addr,
								__u16 port)
{
	__u32 port_index = port;
	__u32 *users = flow_ports.lookup(&port_index);

	if (!users || *users == 0)
		return NULL;
	struct otus_flow_key key = {};
	__builtin_memcpy(key.addr, addr, 16);
	key.port = port;
	key.l4_proto = p->l4_proto;
	key.family = p->family;
	return flows.lookup(&key);
}

#define OTUS_C8(a, b, c, d, e, f, g, h)                                                         \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 | \
	 (__u64)(f) << 40 | (__u64)(g) << 48 | (__u64)(h) << 56)
#define OTUS_PREFIX(head, n) ((n) == 8 ? (head) : (head) & ((1ULL << (8 * (n))) - 1))

/* A status line or a request method at the start of a UDP payload
 * (RFC 3261 §7.1, §7.2; methods of RFC 3261, 3262, 3265, 3311, 3428,
 * 3515, 3903, 6086). Reads the first 8 bytes little-endian. */
static __always_inline int sip_signature(void *data, void *data_end, __u32 off)
{
	__u8 *payload = data + off;
	__u64 head;

	if ((void *)(payload + OTUS_SIGNATURE_LEN) > data_end)
		return 0;
	__builtin_memcpy(&head, payload, OTUS_SIGNATURE_LEN);
	return head == OTUS_C8('S', 'I', 'P', '/', '2', '.', '0', ' ') ||
	       OTUS_PREFIX(head, 7) == OTUS_C8('I', 'N', 'V', 'I', 'T', 'E', ' ', 0) ||
	       OTUS_PREFIX(head, 4) == OTUS_C8('A', 'C', 'K', ' ', 0, 0, 0, 0) ||
	       OTUS_PREFIX(head, 4) == OTUS_C8('B', 'Y', 'E', ' ', 0, 0, 0, 0) ||
	       OTUS_PREFIX(head, 7) == OTUS_C8('C', 'A', 'N', 'C', 'E', 'L', ' ', 0) ||
	       head == OTUS_C8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ') ||
	       head == OTUS_C8('R', 'E', 'G', 'I', 'S', 'T', 'E', 'R') ||
	       OTUS_PREFIX(head, 6) == OTUS_C8('P', 'R', 'A', 'C', 'K', ' ', 0, 0) ||
	       head == OTUS_C8('S', 'U', 'B', 'S', 'C', 'R', 'I', 'B') ||
	       OTUS_PREFIX(head, 7) == OTUS_C8('N', 'O', 'T', 'I', 'F', 'Y', ' ', 0) ||
	       head == OTUS_C8('P', 'U', 'B', 'L', 'I', 'S', 'H', ' ') ||
	       OTUS_PREFIX(head, 5) == OTUS_C8('I', 'N', 'F', 'O', ' ', 0, 0, 0) ||
	       OTUS_PREFIX(head, 6) == OTUS_C8('R', 'E', 'F', 'E', 'R', ' ', 0, 0) ||
	       head == OTUS_C8('M', 'E', 'S', 'S', 'A', 'G', 'E', ' ') ||
	       OTUS_PREFIX(head, 7) == OTUS_C8('U', 'P', 'D', 'A', 'T', 'E', ' ', 0);
}

/* RFC 5761 §4: an RTCP packet's second byte is its type, 192..223, which no
 * RTP payload type in use takes (so RTCP muxed on the RTP port shows too). */
static __always_inline int rtcp_payload(void *data, void *data_end, __u32 off)
{
	__u8 *payload = data + off;

	if ((void *)(payload + 2) > data_end)
		return 0;
	return payload[1] >= 192 && payload[1] <= 223;
}

/* ---- RTP stream statistics, kept here (RFC 3550 A.1, A.3, A.8) ----
 * userspace/rtp.py's RtpStream is the same algorithm in Python (AF_PACKET,
 * replay) and the oracle tests/kernel/test_stream_stats.py compares this
 * with. Jitter is fixed point (x 65536) in the stream clock's units. */
#define OTUS_SEQ_MOD 65536
#define OTUS_MAX_DROPOUT 3000
#define OTUS_MAX_MISORDER 100
#define OTUS_RECENT_HI_MASK ((1ULL << (OTUS_MAX_MISORDER + 1 - 64)) - 1)
/* An arrival gap is clamped to 2^42 ns (73 min), so gap x clock (<= 1 MHz)
 * and the transit difference stay within 64 bits. */
#define OTUS_MAX_GAP_NS (1ULL << 42)
#define OTUS_NS_PER_S 1000000000LL
/* 10^9 / 2^16 = 1953125 / 2^7: d x 65536 / 10^9 without overflow */
#define OTUS_NS_FP_DIVISOR 1953125ULL
#define OTUS_RTP_HEADER 12

struct otus_rtp_header {
	__u8 vpxcc;
	__u8 marker_type;
	__be16 seq;
	__be32 timestamp;
	__be32 ssrc;
};

/* The clock of a payload type as the flow's SDP gave it; 0: telephone-event. */
static __always_inline __u32 clock_of(struct otus_flow_value *flow, __u8 type)
{
	__u32 used = flow->clock_count;

#pragma unroll
	for (int i = 0; i < OTUS_MAX_CLOCKS; i++) {
		if (i < used && flow->clock_types[i] == type)
			return flow->clock_rates[i];
	}
	return OTUS_DEFAULT_CLOCK;
}

static __always_inline void seq_start(struct otus_stream *st, __u16 seq)
{
	st->base_seq = seq;
	st->max_seq = seq;
	st->cycles = 0;
	st->recent_lo = 1;
	st->recent_hi = 0;
	st->state &= ~OTUS_STREAM_BAD_SEQ;
}

/* A.1 with A.3's restart: 1 when the packet counts; 0 for a duplicate, or
 * a stray far outside the sequence that the next packet did not confirm. */
static __always_inline int seq_update(struct otus_stream *st, __u16 seq)
{
	if (st->packets == 0 && !(st->state & OTUS_STREAM_BAD_SEQ)) {
		seq_start(st, seq);
		return 1;
	}
	__u32 delta = (__u16)(seq - st->max_seq);

	if (delta > 0 && delta < OTUS_MAX_DROPOUT) { /* in order, perhaps after a gap */
		if (seq < st->max_seq)
			st->cycles += 1;
		st->max_seq = seq;
		if (delta >= 128) {
			st->recent_hi = 0;
			st->recent_lo = 1;
		} else if (delta >= 64) {
			st->recent_hi = st->recent_lo << (delta - 64);
			st->recent_lo = 1;
		} else {
			st->recent_hi = (st->recent_hi << delta) | (st->recent_lo >> (64 - delta));
			st->recent_lo = (st->recent_lo << delta) | 1;
		}
		st->recent_hi &= OTUS_RECENT_HI_MASK;
		st->state &= ~OTUS_STREAM_BAD_SEQ;
		return 1;
	}
	if (delta >= OTUS_SEQ_MOD - OTUS_MAX_MISORDER) { /* late: reordered or a duplicate */
		__u32 behind = OTUS_SEQ_MOD - delta;

		if (behind < 64) {
			if (st->recent_lo & (1ULL << behind)) {
				st->duplicates += 1;
				return 0;
			}
			st->recent_lo |= 1ULL << behind;
		} else {
			if (st->recent_hi & (1ULL << (behind - 64))) {
				st->duplicates += 1;
				return 0;
			}
			st->recent_hi |= 1ULL << (behind - 64);
		}
		st->reordered += 1;
		return 1;
	}
	if (delta == 0) {
		st->duplicates += 1;
		return 0;
	}
	if ((st->state & OTUS_STREAM_BAD_SEQ) && seq == st->bad_seq) { /* the sender restarted */
		st->expected_before += st->cycles * OTUS_SEQ_MOD + st->max_seq - st->base_seq + 1;
		seq_start(st, seq);
		return 1;
	}
	st->bad_seq = seq + 1;
	st->state |= OTUS_STREAM_BAD_SEQ;
	st->stray += 1;
	return 0;
}

static __always_inline void count_type(struct otus_stream *st, __u8 type)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		if (st->type_packets[i] == 0) {
			st->types[i] = type;
			st->type_packets[i] = 1;
			return;
		}
		if (st->types[i] == type) {
			st->type_packets[i] += 1;
			return;
		}
	}
	st->other_types += 1;
}

/* J x to / from, exact in 64 bits for any jitter and clocks up to 1 MHz. */
static __always_inline __u64 rescale(__u64 j, __u32 to, __u32 from)
{
	if (from == 0)
		return j;
	return (j / from) * to + (j % from) * to / from;
}

/* A.8: J += (|D| - J) / 16, D = (Rj - Ri) - (Sj - Si) in the clock's units. */
static __always_inline __u64 jitter_step(__u64 j, __u64 gap_ns, __u32 clock, __s32 sent)
{
	if (gap_ns > OTUS_MAX_GAP_NS)
		gap_ns = OTUS_MAX_GAP_NS;
	__s64 d = (__s64)(gap_ns * clock) - (__s64)sent * OTUS_NS_PER_S;
	__u64 ad = d < 0 ? -d : d;
	__u64 d_fp = ((ad / OTUS_NS_FP_DIVISOR) << 7) + (((ad % OTUS_NS_FP_DIVISOR) << 7) / OTUS_NS_FP_DIVISOR);

	if (d_fp >= j)
		return j + ((d_fp - j) >> 4);
	return j - ((j - d_fp) >> 4);
}

/* One packet into its stream; the caller holds the stream's lock. */
static __always_inline void stream_update(struct otus_stream *st, __u16 seq, __u32 ts, __u8 type,
					  __u32 clock, __u64 now, __u64 size)
{
	if (!seq_update(st, seq))
		return;
	st->packets += 1;
	st->bytes += size;
	if (now > st->last_ns)
		st->last_ns = now;
	count_type(st, type);
	if (type != st->audio_type) {
		if (clock == 0) { /* telephone-event: counted, no jitter */
			st->event_packets += 1;
			if (!(st->state & OTUS_STREAM_EVENT) || ts != st->event_timestamp) {
				st->events += 1;
				st->event_timestamp = ts;
				st->state |= OTUS_STREAM_EVENT;
			}
			return;
		}
		/* the audio changes codec: the jitter follows its clock, transit starts again */
		if (clock != st->clock_rate && st->audio_type != OTUS_NO_TYPE)
			st->jitter = rescale(st->jitter, clock, st->clock_rate);
		st->audio_type = type;
		st->clock_rate = clock;
		st->state &= ~OTUS_STREAM_ARRIVAL;
	}
	if (st->state & OTUS_STREAM_ARRIVAL) {
		if (now < st->last_arrival_ns)
			return;
		st->jitter = jitter_step(st->jitter, now - st->last_arrival_ns, st->clock_rate,
					 (__s32)(ts - st->last_timestamp));
	}
	st->last_arrival_ns = now;
	st->last_timestamp = ts;
	st->state |= OTUS_STREAM_ARRIVAL;
}

/* Learned RTP measured here. Returns 1 when the packet still goes up: the
 * first of a new stream (user space learns the stream from it, flagged
 * OTUS_FLAG_STREAM), a payload that is not RTP (user space counts it), or a
 * packet of a new stream the full map cannot hold (STREAMS_FULL: user space
 * measures it packet by packet); else 0, counted as MEDIA_COUNTED. */
static __always_inline int media_stats(void *data, void *data_end, struct otus_parsed *p,
				       struct otus_flow_value *flow, __u64 frame_len, struct otus_counters *c)
{
	struct otus_rtp_header *rtp = data + p->payload_offset;

	if ((void *)(rtp + 1) > data_end || (rtp->vpxcc >> 6) != 2)
		return 1;
	__u8 type = rtp->marker_type & 0x7f;
	__u32 clock = clock_of(flow, type);
	struct otus_stream_key key = {};
	__builtin_memcpy(key.saddr, p->saddr, 16);
	__builtin_memcpy(key.daddr, p->daddr, 16);
	key.sport = p->sport;
	key.dport = p->dport;
	key.ssrc = bpf_ntohl(rtp->ssrc);
	key.owner = flow->owner;
	key.family = p->family;
	key.worker = flow->shard;
	__u64 now = bpf_ktime_get_ns();
	int fresh = 0;

	struct otus_stream *st = streams.lookup(&key);
	if (!st) {
		struct otus_stream init = {};

		init.first_ns = now;
		init.last_ns = now; /* never read as quiet before its first update */
		init.clock_rate = OTUS_DEFAULT_CLOCK;
		init.audio_type = OTUS_NO_TYPE;
		fresh = streams.insert(&key, &init) == 0;
		st = streams.lookup(&key); /* ours, or another CPU's that won the insert */
		if (!st) {
			/* the map is full: the packet goes up as without statistics
			 * here, and user space measures its stream (counted) */
			count(c, OTUS_CTR_STREAMS_FULL);
			return 1;
		}
	}
	bpf_spin_lock(&st->lock);
	stream_update(st, bpf_ntohs(rtp->seq), bpf_ntohl(rtp->timestamp), type, clock, now,
		      frame_len - p->payload_offset);
	bpf_spin_unlock(&st->lock);
	if (fresh) {
		p->flags |= OTUS_FLAG_STREAM;
		return 1;
	}
	count(c, OTUS_CTR_MEDIA_COUNTED);
	return 0;
}

struct otus_match {
	__u32 verdict;        /* OTUS_CTR_* */
	__u32 snaplen;
	__u32 flow_hash;
	__u32 owner;          /* media: the flow's owner tag */
	__u8 kind;            /* OTUS_KIND_*; 0: nothing goes up */
	__u8 shard;
	__u8 stream;          /* the first packet of a stream the kernel measures */
};

/* Decides whether and how the packet goes up. Returns the verdict counter;
 * for matches, fills in kind, snaplen and shard (kind 0: a learned RTP packet
 * the kernel's statistics counted, which does not go up). The statistics are
 * kept here, where the flow's addresses are at hand: called from the hooks,
 * they kept the addresses live through the whole program, and the path of
 * packets that match nothing paid for the spills (scripts/bench/kernel_path.py). */
static __always_inline __u32 classify(void *data, void *data_end, __u64 frame_len, struct otus_counters *c,
				      struct otus_parsed *p, struct otus_match *m)
{
	__u32 zero = 0;
	struct otus_config *cfg = config.lookup(&zero);
	int verdict = parse_frame(data, data_end, p);

	if (verdict)
		return verdict;
	if (!cfg)
		return OTUS_CTR_NO_MATCH;
	if (cfg->flags & OTUS_CFG_PAUSED)
		return OTUS_CTR_FILTERED;
	if (cfg->flags && filtered_out(cfg, p))
		return OTUS_CTR_FILTERED;

	/* Conversation shard: addresses only, so the fragments of a datagram
	 * and the rest of its dialog meet in one worker. */
	__u32 fold = address_fold(p);
	m->shard = mix32(fold) % OTUS_SHARDS;
	m->snaplen = cfg->sip_snaplen;
	if (p->flags & OTUS_FLAG_FRAGMENT) {
		m->kind = OTUS_KIND_FRAGMENT;
		m->flow_hash = mix32(fold ^ p->frag_id ^ ((__u32)p->l4_proto << 16));
		return OTUS_CTR_MATCHED_FRAGMENT;
	}
	m->flow_hash = mix32(fold ^ (p->sport ^ p->dport) ^ ((__u32)p->l4_proto << 16));

	__u32 sport = p->sport, dport = p->dport;
	__u8 *sport_is_sip = sip_ports.lookup(&sport);
	__u8 *dport_is_sip = sip_ports.lookup(&dport);
	if ((sport_is_sip && *sport_is_sip) || (dport_is_sip && *dport_is_sip)) {
		m->kind = OTUS_KIND_SIP;
		return OTUS_CTR_MATCHED_SIP_PORT;
	}

	struct otus_flow_value *flow = learned_endpoint(p, p->daddr, p->dport);
	if (!flow) {
		flow = learned_endpoint(p, p->saddr, p->sport);
	} else if (flow->flags & OTUS_FLOW_SHARED) {
		/* A media server's port that calls in several workers announced:
		 * the call holding the other end of this flow is the one it is for. */
		struct otus_flow_value *other = learned_endpoint(p, p->saddr, p->sport);

		if (other && !(other->flags & OTUS_FLOW_SHARED))
			flow = other;
	}
	if (flow) {
		m->kind = flow->kind;
		m->shard = flow->shard < OTUS_SHARDS ? flow->shard : 0;
		/* The worker that learned it, also when one ring feeds them all. */
		m->flow_hash = flow->shard;
		m->owner = flow->owner;
		p->flags |= OTUS_FLAG_OWNED;
		m->snaplen = p->payload_offset + cfg->media_snaplen;
		/* RTCP is read whole: a report and the SDES that must follow it are
		 * past any RTP snaplen, and there are a few a second per stream. */
		if (flow->kind == OTUS_KIND_RTCP || rtcp_payload(data, data_end, p->payload_offset)) {
			m->snaplen = cfg->sip_snaplen;
		} else if (!(cfg->flags & OTUS_CFG_MEDIA_PACKETS) && p->l4_proto == IPPROTO_UDP) {
			m->stream = 1; /* not Call-ID routed: the copy's path skips the scan */
			if (!media_stats(data, data_end, p, flow, frame_len, c))
				m->kind = 0;
			else if (m->snaplen < p->payload_offset + OTUS_RTP_HEADER)
				m->snaplen = p->payload_offset + OTUS_RTP_HEADER; /* the SSRC names the stream */
		}
		return flow->kind == OTUS_KIND_RTCP ? OTUS_CTR_MATCHED_RTCP : OTUS_CTR_MATCHED_RTP;
	}

	if ((cfg->flags & OTUS_CFG_SIGNATURE) && p->l4_proto == IPPROTO_UDP &&
	    sip_signature(data, data_end, p->payload_offset)) {
		m->kind = OTUS_KIND_SIP;
		p->flags |= OTUS_FLAG_SIGNATURE;
		return OTUS_CTR_MATCHED_SIP_SIGNATURE;
	}
	return OTUS_CTR_NO_MATCH;
}


#ifdef OTUS_CALLID_ROUTING
/* Call-ID routing (docs/SHARDING.md): a SIP datagram goes to the shard
 * its Call-ID hashes to, so every message of a dialog meets in one worker
 * whatever the addresses. A byte-at-a-time state machine over the copy in
 * the sample, bounded: the header line "Call-ID:" or "i:" (any case, no
 * blanks before the colon), at most OTUS_CALLID_BLANKS blanks, and the value
 * up to CR, LF, SP or HT, or OTUS_CALLID_HASHED bytes, must all lie within
 * the first OTUS_CALLID_SCAN payload bytes and the captured ones. The value
 * is hashed with FNV-1a. userspace/sharding.py mirrors it exactly.
 *
 * For the verifier, everything the loop carries (state, count, hash) lives
 * in the sample, not in registers: every path through a step then ends in
 * the same register state, and the verifier prunes instead of walking each
 * path to the end of the loop. */
#define OTUS_CALLID_SCAN 384
#define OTUS_CALLID_HASHED 128
#define OTUS_CALLID_BLANKS 8
#define OTUS_FNV_OFFSET 2166136261u
#define OTUS_FNV_PRIME 16777619u
/* "call-id:" as a little-endian word, and the bits that fold its letters' case */
#define OTUS_CALLID_NAME 0x3a64692d6c6c6163ULL
#define OTUS_CALLID_NAME_CASE 0x0020200020202020ULL

enum {
	OTUS_SCAN_LINE,    /* in a header line: waiting for LF */
	OTUS_SCAN_START,   /* just after LF: a blank line, "i" or "c" */
	OTUS_SCAN_COMPACT, /* after "i": ':' or another header */
	OTUS_SCAN_NAME,    /* count bytes of "call-id:" matched */
	OTUS_SCAN_BLANKS,  /* after the colon: count blanks */
	OTUS_SCAN_VALUE,   /* count value bytes hashed */
	OTUS_SCAN_FOUND,
	OTUS_SCAN_NONE,
};

struct otus_scan {
	__u32 state;
	__u32 count;
	__u32 hash;
	__u32 start;
	__u32 end;
};

BPF_PERCPU_ARRAY(callid_scan, struct otus_scan, 1);

static __always_inline void scan_step(volatile struct otus_scan *sc, __u32 c)
{
	__u32 state = sc->state;

	if (state == OTUS_SCAN_LINE) {
		if (c == '\n')
			sc->state = OTUS_SCAN_START;
	} else if (state == OTUS_SCAN_START) {
		if (c == '\r' || c == '\n')
			sc->state = OTUS_SCAN_NONE; /* the blank line: no Call-ID in the header */
		else if ((c | 0x20) == 'i')
			sc->state = OTUS_SCAN_COMPACT;
		else if ((c | 0x20) == 'c') {
			sc->state = OTUS_SCAN_NAME;
			sc->count = 1;
		} else
			sc->state = OTUS_SCAN_LINE;
	} else if (state == OTUS_SCAN_COMPACT || state == OTUS_SCAN_NAME) {
		__u32 n = sc->count & 7;
		__u32 expected = state == OTUS_SCAN_COMPACT ? ':' : (OTUS_CALLID_NAME >> (n * 8)) & 0xff;
		__u32 fold = state == OTUS_SCAN_COMPACT ? 0 : (OTUS_CALLID_NAME_CASE >> (n * 8)) & 0xff;

		if ((c | fold) != expected) {
			sc->state = c == '\n' ? OTUS_SCAN_START : OTUS_SCAN_LINE;
		} else if (state == OTUS_SCAN_COMPACT || n == 7) {
			sc->state = OTUS_SCAN_BLANKS;
			sc->count = 0;
		} else {
			sc->count = n + 1;
		}
	} else if (state == OTUS_SCAN_BLANKS) {
		if (c == ' ' || c == '\t') {
			sc->count += 1;
			if (sc->count > OTUS_CALLID_BLANKS)
				sc->state = OTUS_SCAN_NONE;
		} else if (c == '\r' || c == '\n') {
			sc->state = OTUS_SCAN_NONE; /* an empty value */
		} else {
			sc->hash = (OTUS_FNV_OFFSET ^ c) * OTUS_FNV_PRIME;
			sc->count = 1;
			sc->state = OTUS_SCAN_VALUE;
		}
	} else if (state == OTUS_SCAN_VALUE) {
		if (c == '\r' || c == '\n' || c == ' ' || c == '\t') {
			sc->state = OTUS_SCAN_FOUND;
		} else {
			sc->hash = (sc->hash ^ c) * OTUS_FNV_PRIME;
			sc->count += 1;
			if (sc->count >= OTUS_CALLID_HASHED)
				sc->state = OTUS_SCAN_FOUND;
		}
	}
}

/* 1 and the hash when the datagram names its Call-ID within the bounds; 0
 * when it does not, or when the bounds cut its value (a partial value would
 * hash to the wrong owner). */
static __always_inline int call_id_hash(struct otus_sample *s, __u32 start, __u32 end, __u32 *hash)
{
	__u32 zero = 0;
	/* volatile: the compiler would otherwise carry the fields in registers */
	volatile struct otus_scan *sc = callid_scan.lookup(&zero);

	if (!sc)
		return 0;
	sc->state = OTUS_SCAN_LINE;
	sc->count = 0;
	sc->hash = 0;
	sc->start = start;
	sc->end = end;
#pragma clang loop unroll(disable)
	for (__u32 k = 0; k < OTUS_CALLID_SCAN; k++) {
		__u32 i = sc->start + k;

		/* Not break: with one way out of the loop the verifier's work stays
		 * within its limit for every shard count (a step here costs ~2 ns). */
		if (i >= sc->end || sc->state >= OTUS_SCAN_FOUND)
			continue;
		scan_step(sc, s->data[i & (OTUS_DATA_LEN - 1)]);
	}
	if (sc->state != OTUS_SCAN_FOUND)
		return 0;
	*hash = sc->hash;
	return 1;
}

/* A whole SIP datagram goes to its Call-ID's shard; fragments and TCP stay on
 * their conversation's, and user space hands their messages over. */
static __always_inline void route_by_call_id(struct otus_sample *s, struct otus_parsed *p,
					     struct otus_match *m, __u32 cap_len)
{
	__u32 hash;

	if (m->kind != OTUS_KIND_SIP || p->l4_proto != IPPROTO_UDP)
		return;
	if (!call_id_hash(s, p->payload_offset, cap_len, &hash))
		return;
	m->flow_hash = hash;
	m->shard = hash % OTUS_SHARDS;
	p->flags |= OTUS_FLAG_OWNED;
}
#endif /* OTUS_CALLID_ROUTING */

/* Bounds the copy for the verifier (u64 and a constant cap: ENVIRONMENT.md). */
static __always_inline __u64 capture_length(__u64 frame_len, __u32 snaplen)
{
	__u64 cap = frame_len < snaplen ? frame_len : snaplen;

	return cap < OTUS_SNAPLEN ? cap : OTUS_SNAPLEN;
}

static __always_inline void fill_header(struct otus_sample *s, struct otus_parsed *p,
					struct otus_match *m, __u32 direction, __u32 ifindex,
					__u32 orig_len, __u64 cap_len)
{
	s->hdr.ts_ns = bpf_ktime_get_ns();
	s->hdr.ifindex = ifindex;
	s->hdr.orig_len = orig_len;
	s->hdr.cap_len = cap_len;
	s->hdr.flow_hash = m->flow_hash;
	s->hdr.l3_offset = p->l3_offset;
	s->hdr.l4_offset = p->l4_offset;
	s->hdr.payload_offset = p->payload_offset;
	s->hdr.direction = direction;
	s->hdr.kind = m->kind;
	s->hdr.l4_proto = p->l4_proto;
	s->hdr.flags = p->flags;
	s->hdr.shard = m->shard;
	s->hdr.pad = 0;
	s->hdr.owner = m->owner;
}

static __always_inline long output(struct otus_sample *s, __u64 size, __u32 shard)
{
	void *ring = rings.lookup(&shard);

	if (!ring)
		return -1; /* no ring set at this index: a failed submit, counted */
	return bpf_ringbuf_output(ring, s, size, 0);
}

static __always_inline void submit_sample(struct otus_counters *c, struct otus_sample *s,
					  __u64 cap_len, __u32 shard)
{
	__u64 size = sizeof(struct otus_event) + cap_len;

	if (size > sizeof(*s))
		size = sizeof(*s);
	if (output(s, size, shard) == 0) {
		count(c, OTUS_CTR_SUBMITTED);
		return;
	}
	count(c, OTUS_CTR_SUBMIT_FAILED);
	c->shard_failures[shard & (OTUS_MAX_SHARDS - 1)] += 1;
}

/* Copies the frame into the sample and sends it up. ``route``: a constant
 * at each call. With Call-ID routing compiled in, a stream's first packet
 * takes a copy without the scan: the verifier, walking the scan after the
 * statistics too, went past its limit. Without it one copy is compiled: two
 * cost the path of packets that match nothing ~3 ns (kernel_path.py). */
static __always_inline void copy_up_xdp(struct xdp_md *ctx, struct otus_counters *c, struct otus_parsed *p,
					struct otus_match *m, const int route)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct otus_sample *s = scratch.lookup(&zero);

	if (!s)
		return;
	__u64 frame_len = data_end - data;
	__u64 cap_len = capture_length(frame_len, m->snaplen);
	if (cap_len < 1 || bpf_xdp_load_bytes(ctx, 0, s->data, cap_len) < 0) {
		count(c, OTUS_CTR_LOAD_FAILED);
		return;
	}
#ifdef OTUS_CALLID_ROUTING
	if (route)
		route_by_call_id(s, p, m, cap_len);
#endif
	fill_header(s, p, m, OTUS_DIR_INGRESS, ctx->ingress_ifindex, frame_len, cap_len);
	submit_sample(c, s, cap_len, m->shard);
}

static __always_inline void copy_up_tc(struct __sk_buff *skb, struct otus_counters *c, struct otus_parsed *p,
				       struct otus_match *m, const int route)
{
	__u32 zero = 0;
	struct otus_sample *s = scratch.lookup(&zero);

	if (!s)
		return;
	__u64 cap_len = capture_length(skb->len, m->snaplen);
	if (cap_len < 1 || bpf_skb_load_bytes(skb, 0, s->data, cap_len) < 0) {
		count(c, OTUS_CTR_LOAD_FAILED);
		return;
	}
#ifdef OTUS_CALLID_ROUTING
	if (route)
		route_by_call_id(s, p, m, cap_len);
#endif
	fill_header(s, p, m, OTUS_DIR_EGRESS, skb->ifindex, skb->len, cap_len);
	submit_sample(c, s, cap_len, m->shard);
}

/* The direction's counters, one lookup a packet. NULL never happens (the
 * array holds both directions) but the verifier wants the check. */
static __always_inline struct otus_counters *counters_of(__u32 direction)
{
	return counters.lookup(&direction);
}

int xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct otus_parsed p = {};
	struct otus_match m = {};
	struct otus_counters *c = counters_of(OTUS_DIR_INGRESS);

	if (!c)
		return XDP_PASS;
	count(c, OTUS_CTR_SEEN);
	__u32 verdict = classify(data, data_end, data_end - data, c, &p, &m);
	count(c, verdict);
	if (m.kind == 0)
		return XDP_PASS;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream) /* two copies, so the verifier never walks the scan after the statistics */
		copy_up_xdp(ctx, c, &p, &m, 0);
	else
#endif
		copy_up_xdp(ctx, c, &p, &m, 1);
	return XDP_PASS;
}

int tc_egress(struct __sk_buff *skb)
{
	struct otus_parsed p = {};
	struct otus_match m = {};
	struct otus_counters *c = counters_of(OTUS_DIR_EGRESS);

	if (!c)
		return TC_ACT_UNSPEC;
	count(c, OTUS_CTR_SEEN);
	/* Locally built skbs may keep headers outside the linear area; pulling
	 * them in changes the skb's layout, never its bytes. */
	if (skb->data_end - skb->data < OTUS_PULL_LEN && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < OTUS_PULL_LEN ? skb->len : OTUS_PULL_LEN);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 verdict = classify(data, data_end, skb->len, c, &p, &m);
	count(c, verdict);
	if (m.kind == 0)
		return TC_ACT_UNSPEC;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream) /* two copies, so the verifier never walks the scan after the statistics */
		copy_up_tc(skb, c, &p, &m, 0);
	else
#endif
		copy_up_tc(skb, c, &p, &m, 1);
	return TC_ACT_UNSPEC;
}

/* otus.c — XDP (ingress) and TC (egress) classification of VoIP traffic.
 *
 * Both programs share one path: parse_frame (L2-L4), classify (filters,
 * SIP ports, learned media flows, SIP signature, fragments; then the method
 * drop list and duplicate suppression, for matches only) and submit_sample
 * (copy into the shard's ring). They differ only in how they read their
 * context. Every packet ends in exactly one verdict counter, and every packet
 * is let through: monitoring never changes traffic.
 *
 * Compiled by bcc at attach time. Sizes arrive as cflags defines
 * (OTUS_SNAPLEN, OTUS_SHARDS, OTUS_MAX_FLOWS,
 * OTUS_CALLID_ROUTING: only with worker processes, where it is used); everything that
 * changes at run time lives in maps (config, sip_ports, drop_methods, flows,
 * flow_ports, include/exclude tries), never in this text.
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
/* Bounds a packet offset the verifier cannot bound (one read back from a
 * map): it tracks a packet read only when the pointer's offset fits 16 bits
 * with room to spare, and no frame we parse (at most a jumbo one) is longer. */
#define OTUS_OFFSET_MASK 0x3fff
/* The config flags that ask for an address lookup (filtered_out). */
#define OTUS_PORT_TUNNELS (OTUS_PORT_VXLAN | OTUS_PORT_GENEVE)
_Static_assert(OTUS_CTR_DECAP_IPIP - OTUS_CTR_DECAP_VXLAN == OTUS_TUNNEL_IPIP - OTUS_TUNNEL_VXLAN,
	       "a tunnel's code follows its counter (classify_inner)");
_Static_assert(OTUS_CFG_DECAP_VXLAN >> 8 == OTUS_PORT_VXLAN && OTUS_CFG_DECAP_GENEVE >> 8 == OTUS_PORT_GENEVE,
	       "match() reads a UDP tunnel kind's config flag as its port bit << 8");
#define OTUS_ADDRESS_FILTERS (OTUS_CFG_INCLUDE_V4 | OTUS_CFG_INCLUDE_V6 | OTUS_CFG_EXCLUDE_V4 | OTUS_CFG_EXCLUDE_V6)

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
	__u16 frag_off;       /* a fragment's offset field, raw (IPv6: with its M bit) */
	__u8 tunnel;          /* OTUS_TUNNEL_* of the tunnel it came in, 0 for none */
	__u8 pad;
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
/* The sources tunnels are opened from (OTUS_CFG_MIRRORS_*): switches, taps and
 * cloud mirrors; with none set, any source. */
BPF_LPM_TRIE(mirrors_v4, struct otus_lpm_v4, __u8, 1024);
BPF_LPM_TRIE(mirrors_v6, struct otus_lpm_v6, __u8, 1024);
/* Request methods and status codes whose SIP datagrams stay down (OTUS_CFG_DROP_METHODS). */
BPF_HASH(drop_methods, struct otus_drop_key, __u8, OTUS_MAX_DROP_METHODS);
/* Recent matches (duplicate()): a direct-mapped table, a digest's slot its
 * low bits, holding the digest and when it was first seen. A slot is taken
 * over by whichever digest comes next (an LRU hash map's lookup and insert
 * cost 560-720 ns a packet, this 45-55 with the clock read:
 * scripts/bench/kernel_screen.py), so a copy whose slot
 * another packet took in between goes up, as without dedup, and the taking
 * is counted (OTUS_CTR_DEDUP_DISPLACED). 65,536 slots, 1 MiB. */
struct otus_dedup_slot {
	__u64 digest;
	__u64 first_ns;       /* bpf_ktime_get_ns() of the first sighting */
};
BPF_ARRAY(dedup, struct otus_dedup_slot, OTUS_DEDUP_ENTRIES);

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
		p->frag_off = ip->frag_off;
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
			p->frag_off = frag->frag_off;
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

/* Walks 802.1Q/QinQ tags from *off, where an Ethernet type field ends. */
static __always_inline int parse_vlans(void *data, void *data_end, __u32 *off, __u16 *proto, struct otus_parsed *p)
{
#pragma unroll
	for (int i = 0; i < OTUS_VLAN_DEPTH; i++) {
		if (*proto != OTUS_ETH_P_8021Q && *proto != OTUS_ETH_P_8021AD)
			break;
		struct otus_vlan_hdr *vlan = data + *off;
		if ((void *)(vlan + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		p->flags |= OTUS_FLAG_VLAN;
		*proto = bpf_ntohs(vlan->encapsulated_proto);
		*off += sizeof(*vlan);
	}
	return 0;
}

/* Parses L3 (Ethernet type ``proto``, at ``off``) to L4. Returns 0, or the
 * verdict counter that ends the packet. A non-first fragment stops after
 * L3: it carries no ports. */
static __always_inline int parse_l3_l4(void *data, void *data_end, __u32 off, __u16 proto, struct otus_parsed *p)
{
	int verdict;

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

/* Parses L2 to L4 (parse_l3_l4's returns). */
static __always_inline int parse_frame(void *data, void *data_end, struct otus_parsed *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);

	if ((void *)(eth + 1) > data_end)
		return OTUS_CTR_TRUNCATED;
	__u16 proto = bpf_ntohs(eth->h_proto);
	int verdict = parse_vlans(data, data_end, &off, &proto, p);

	if (verdict)
		return verdict;
	return parse_l3_l4(data, data_end, off, proto, p);
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
	/* media announced inside a tunnel is matched inside that kind of tunnel only */
	key.family = p->family | p->tunnel << OTUS_FLOW_TUNNEL_SHIFT;
	return flows.lookup(&key);
}

/* A UDP tunnel port's bits that open it: the kinds on (OTUS_CFG_DECAP_VXLAN
 * and _GENEVE are the port bits << 8). Inside a tunnel, any tunnel port is a
 * nested tunnel: counted, not opened. */
static __always_inline __u8 tunnel_bits(struct otus_config *cfg, __u8 bits, const int inner)
{
	return bits & (inner ? OTUS_PORT_TUNNELS : (cfg->flags >> 8) & OTUS_PORT_TUNNELS);
}

/* Whether a packet is a UDP tunnel match() opens (the filtered path's check). */
static __always_inline int tunnel_port(struct otus_config *cfg, struct otus_parsed *p, const int inner)
{
	__u32 dport = p->dport;
	__u8 *bits = sip_ports.lookup(&dport);

	return bits && p->l4_proto == IPPROTO_UDP && !(p->flags & OTUS_FLAG_FRAGMENT) &&
	       tunnel_bits(cfg, *bits, inner);
}

/* GRE (47) and IP-in-IP (4: IPv4, 41: IPv6 inside) whose kind is on: the
 * only packets of another L4 protocol the decap program opens. */
static __always_inline int ip_tunnel(struct otus_config *cfg, struct otus_parsed *p)
{
	if (p->l4_proto == IPPROTO_GRE)
		return (cfg->flags & (OTUS_CFG_DECAP_GRE | OTUS_CFG_DECAP_ERSPAN)) != 0;
	if (p->l4_proto == IPPROTO_IPIP || p->l4_proto == IPPROTO_IPV6)
		return (cfg->flags & OTUS_CFG_DECAP_IPIP) != 0;
	return 0;
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
	struct otus_rtp_header *rtp = data + (p->payload_offset & OTUS_OFFSET_MASK);

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
	__u8 screen;          /* handed to the screen program (the drop list, dedup), or with decap to the decap program */
	__u8 response;        /* screen: a SIP status line whose code is not dropped: its CSeq is looked at */
	__u8 decap;           /* a tunnel: handed to the decap program (OTUS_PORT_* bits, or 1 for GRE, IP-in-IP) */
	__u8 pad[2];
};

/* Which rule the packet matches and how it goes up. Returns the verdict
 * counter; for matches, fills in kind, snaplen and shard, and for learned
 * media its flow (*found), and m->stream where the kernel measures it. */
static __always_inline __u32 match(void *data, void *data_end, struct otus_config *cfg, struct otus_parsed *p,
				   struct otus_match *m, struct otus_flow_value **found, const int inner)
{
	if (cfg->flags & OTUS_CFG_PAUSED)
		return OTUS_CTR_FILTERED;
	/* The address filters are for the inner addresses, not a mirror's: a tunnel
	 * goes on whatever its own (looked for only here, on the filtered path), and
	 * so do the fragments of an IP tunnel, which user space opens and judges
	 * once whole (a UDP tunnel's later fragments carry no port to know it by). */
	if ((cfg->flags & OTUS_ADDRESS_FILTERS) && filtered_out(cfg, p) && !tunnel_port(cfg, p, inner) &&
	    !(!inner && (p->flags & OTUS_FLAG_FRAGMENT) && ip_tunnel(cfg, p)))
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
	__u8 sbits = sport_is_sip ? *sport_is_sip : 0;
	__u8 dbits = dport_is_sip ? *dport_is_sip : 0;
	/* One test for any port of ours: packets that match nothing pay no more
	 * for the tunnel ports than they did for the SIP ports alone. SIP and
	 * learned media come before a tunnel: a UA or a media port that happens to
	 * be 4789 or 6081 is not taken for one, and a party cannot hide its own
	 * media by announcing a tunnel's port. */
	__u8 tunnel = 0;

	if (sbits | dbits) {
		if ((sbits | dbits) & OTUS_PORT_SIP) {
			m->kind = OTUS_KIND_SIP;
			return OTUS_CTR_MATCHED_SIP_PORT;
		}
		tunnel = p->l4_proto == IPPROTO_UDP ? tunnel_bits(cfg, dbits, inner) : 0;
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
		if (flow->kind == OTUS_KIND_RTCP || rtcp_payload(data, data_end, p->payload_offset))
			m->snaplen = cfg->sip_snaplen;
		else if (!(cfg->flags & OTUS_CFG_MEDIA_PACKETS) && p->l4_proto == IPPROTO_UDP)
			m->stream = 1; /* not Call-ID routed: the copy's path skips the scan */
		*found = flow;
		return flow->kind == OTUS_KIND_RTCP ? OTUS_CTR_MATCHED_RTCP : OTUS_CTR_MATCHED_RTP;
	}
	if (tunnel) {
		m->decap = tunnel;
		m->screen = 1; /* the hooks' one test for a tail call (below) */
		return OTUS_CTR_NO_MATCH;
	}

	if ((cfg->flags & OTUS_CFG_SIGNATURE) && p->l4_proto == IPPROTO_UDP &&
	    sip_signature(data, data_end, p->payload_offset)) {
		m->kind = OTUS_KIND_SIP;
		p->flags |= OTUS_FLAG_SIGNATURE;
		return OTUS_CTR_MATCHED_SIP_SIGNATURE;
	}
	return OTUS_CTR_NO_MATCH;
}

/* ---- The screen: a match's path when the drop list or dedup is on ----
 * Both need work per match that the programs above have no room for: the
 * verifier walks their path once for every state a packet can reach it in
 * (each VLAN, IP version, extension-header and match combination), and with
 * the Call-ID scan that already comes close to its limit of a million
 * instructions. So a match that either feature may keep down is handed to a
 * second program per hook, by tail call, with what the parse found; entered
 * in one state, it is walked once. Off, neither costs anything: the hooks go
 * on as before. The hand-off and the tail call cost a match ~70 ns with the
 * drop list's lookup (scripts/bench/kernel_screen.py). */
struct otus_handoff {
	struct otus_parsed p;
	struct otus_match m;
	struct otus_flow_value flow; /* the learned endpoint, for the RTP statistics */
	__u32 verdict;
	__u32 pad[1];
};
_Static_assert(sizeof(struct otus_handoff) % 8 == 0, "a whole number of 8-byte words, as bcc wants a per-CPU value");

BPF_PERCPU_ARRAY(handoff, struct otus_handoff, 1);
/* One program each: xdp_screen and tc_screen, set by user space (loader.py). */
BPF_PROG_ARRAY(xdp_screens, 1);
BPF_PROG_ARRAY(tc_screens, 1);

/* Whether the screen may keep this match down: dedup looks at every match,
 * the drop list at SIP over UDP (a fragment or a TCP segment does not hold a
 * whole message: only user space frames one). */
static __always_inline int screened(struct otus_config *cfg, struct otus_parsed *p, struct otus_match *m)
{
	if (cfg->flags & OTUS_CFG_DEDUP)
		return 1;
	return (cfg->flags & OTUS_CFG_DROP_METHODS) && m->kind == OTUS_KIND_SIP && p->l4_proto == IPPROTO_UDP;
}

static __always_inline void hand_off(struct otus_parsed *p, struct otus_match *m, struct otus_flow_value *flow,
				     __u32 verdict)
{
	__u32 zero = 0;
	struct otus_handoff *h = handoff.lookup(&zero);

	if (!h)
		return;
	h->p = *p;
	h->m = *m;
	if (flow)
		h->flow = *flow;
	h->verdict = verdict;
	m->screen = 1;
}

/* What is decided once a packet is parsed: ``match``, then the screen's
 * hand-off or the RTP statistics. ``inner``: a constant, 1 in the decap
 * programs (a tunnel port there is a nested tunnel, not opened). */
static __always_inline __u32 decide(void *data, void *data_end, __u64 frame_len, struct otus_config *cfg,
				    struct otus_counters *c, struct otus_parsed *p, struct otus_match *m,
				    const int inner)
{
	struct otus_flow_value *flow = NULL;
	__u32 verdict = match(data, data_end, cfg, p, m, &flow, inner);

	if (!m->kind)
		return verdict;
	if (screened(cfg, p, m)) {
		hand_off(p, m, flow, verdict); /* the statistics wait: a duplicate must not count */
		return verdict;
	}
	if (m->stream && flow) {
		if (!media_stats(data, data_end, p, flow, frame_len, c))
			m->kind = 0;
		else if (m->snaplen < p->payload_offset + OTUS_RTP_HEADER)
			m->snaplen = p->payload_offset + OTUS_RTP_HEADER; /* the SSRC names the stream */
	}
	return verdict;
}

/* Decides whether and how the packet goes up. Returns the verdict counter;
 * for matches, fills in kind, snaplen and shard (kind 0: a learned RTP packet
 * the kernel's statistics counted, which does not go up), or hands the match
 * to the screen (m->screen), or a tunnel to the decap program (m->decap).
 * The statistics are kept here, where the flow's addresses are at hand:
 * called from the hooks, they kept the addresses live through the whole
 * program, and the path of packets that match nothing paid for the spills
 * (scripts/bench/kernel_path.py). */
static __always_inline __u32 classify(void *data, void *data_end, __u64 frame_len, struct otus_counters *c,
				      struct otus_parsed *p, struct otus_match *m)
{
	__u32 zero = 0;
	struct otus_config *cfg = config.lookup(&zero);
	int verdict = parse_frame(data, data_end, p);

	if (verdict == OTUS_CTR_OTHER_L4 && cfg && ip_tunnel(cfg, p)) {
		if (cfg->flags & OTUS_CFG_PAUSED)
			return OTUS_CTR_FILTERED; /* as match() says of a UDP tunnel: nothing opened */
		if (!(p->flags & OTUS_FLAG_FRAGMENT)) {
			m->decap = 1;
			m->screen = 1;
			return verdict;
		}
		/* The first fragment of a tunnel (an underlay that fragments): it
		 * goes up as the rest of its datagram does, and user space opens the
		 * tunnel once the datagram is whole. */
		p->payload_offset = p->l4_offset;
		verdict = 0;
	}
	if (verdict)
		return verdict;
	if (!cfg)
		return OTUS_CTR_NO_MATCH;
	return decide(data, data_end, frame_len, cfg, c, p, m, 0);
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
 * hash to the wrong owner). ``*end``, the copy's length, is read back from
 * the scan's state after it, as in cseq_dropped. */
static __always_inline int call_id_hash(struct otus_sample *s, __u32 start, __u64 *end, __u32 *hash)
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
	sc->end = *end;
#pragma clang loop unroll(disable)
	for (__u32 k = 0; k < OTUS_CALLID_SCAN; k++) {
		__u32 i = sc->start + k;

		/* Not break: with one way out of the loop the verifier's work stays
		 * within its limit for every shard count (a step here costs ~2 ns). */
		if (i >= sc->end || sc->state >= OTUS_SCAN_FOUND)
			continue;
		scan_step(sc, s->data[i & (OTUS_DATA_LEN - 1)]);
	}
	*end = sc->end;
	if (*end > OTUS_SNAPLEN)
		*end = OTUS_SNAPLEN; /* never: it was a copy's length */
	if (sc->state != OTUS_SCAN_FOUND)
		return 0;
	*hash = sc->hash;
	return 1;
}

/* A whole SIP datagram goes to its Call-ID's shard; fragments and TCP stay on
 * their conversation's, and user space hands their messages over. */
static __always_inline void route_by_call_id(struct otus_sample *s, struct otus_parsed *p,
					     struct otus_match *m, __u64 *cap_len)
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

/* A response to a dropped method (the 200 OK to an OPTIONS) says which method
 * it answers only in its CSeq header (RFC 3261 §8.1.1.5, §20.16): "CSeq:"
 * (any case, no blanks before the colon) at a line's start, at most
 * OTUS_CSEQ_BLANKS blanks, 1 to OTUS_CSEQ_DIGITS digits, 1 to
 * OTUS_CSEQ_BLANKS blanks, and the method up to CR, LF, SP or HT, at most
 * OTUS_DROP_TOKEN_LEN bytes, all within the first OTUS_CSEQ_SCAN payload
 * bytes and the captured ones. A byte-at-a-time state machine over the copy,
 * built as the Call-ID scan is (its state in a map value) so that the verifier
 * prunes it; walked once in the screen, it can break out of its loop at the
 * CSeq (~4 ns a byte up to it). userspace/droplist.py mirrors it. */
#define OTUS_CSEQ_BLANKS 8
#define OTUS_CSEQ_DIGITS 10 /* the number is below 2**31 (§8.1.1.5) */
/* "cseq:" as a little-endian word, and the bits that fold its letters' case */
#define OTUS_CSEQ_NAME 0x3a71657363ULL
#define OTUS_CSEQ_NAME_CASE 0x0020202020ULL

enum {
	OTUS_CSEQ_LINE,    /* in a header line: waiting for LF */
	OTUS_CSEQ_START,   /* just after LF: a blank line, or "c" */
	OTUS_CSEQ_HEADER,  /* count bytes of "cseq:" matched */
	OTUS_CSEQ_BEFORE,  /* after the colon: count blanks */
	OTUS_CSEQ_NUMBER,  /* count digits */
	OTUS_CSEQ_BETWEEN, /* after the number: count blanks */
	OTUS_CSEQ_METHOD,  /* count method bytes kept */
	OTUS_CSEQ_FOUND,
	OTUS_CSEQ_NONE,
};

struct otus_cseq {
	__u32 state;
	__u32 count;
	__u32 start;
	__u32 end;
	__u8 method[16];      /* an otus_drop_key */
};

BPF_PERCPU_ARRAY(cseq_scan, struct otus_cseq, 1);

static __always_inline int blank(__u32 c)
{
	return c == ' ' || c == '\t';
}

static __always_inline void cseq_step(volatile struct otus_cseq *sc, __u32 c)
{
	__u32 state = sc->state;

	if (state == OTUS_CSEQ_LINE) {
		if (c == '\n')
			sc->state = OTUS_CSEQ_START;
	} else if (state == OTUS_CSEQ_START) {
		if (c == '\r' || c == '\n') {
			sc->state = OTUS_CSEQ_NONE; /* the blank line: no CSeq in the header */
		} else if ((c | 0x20) == 'c') {
			sc->state = OTUS_CSEQ_HEADER;
			sc->count = 1;
		} else {
			sc->state = OTUS_CSEQ_LINE;
		}
	} else if (state == OTUS_CSEQ_HEADER) {
		__u32 n = sc->count & 7;

		if ((c | ((OTUS_CSEQ_NAME_CASE >> (n * 8)) & 0xff)) != ((OTUS_CSEQ_NAME >> (n * 8)) & 0xff)) {
			sc->state = c == '\n' ? OTUS_CSEQ_START : OTUS_CSEQ_LINE;
		} else if (n == 4) {
			sc->state = OTUS_CSEQ_BEFORE;
			sc->count = 0;
		} else {
			sc->count = n + 1;
		}
	} else if (state == OTUS_CSEQ_BEFORE || state == OTUS_CSEQ_BETWEEN) {
		if (blank(c)) {
			sc->count += 1;
			if (sc->count > OTUS_CSEQ_BLANKS)
				sc->state = OTUS_CSEQ_NONE;
		} else if (state == OTUS_CSEQ_BEFORE && c >= '0' && c <= '9') {
			sc->state = OTUS_CSEQ_NUMBER;
			sc->count = 1;
		} else if (state == OTUS_CSEQ_BETWEEN && c != '\r' && c != '\n' && c != 0) {
			sc->method[0] = c;
			sc->state = OTUS_CSEQ_METHOD;
			sc->count = 1;
		} else {
			sc->state = OTUS_CSEQ_NONE;
		}
	} else if (state == OTUS_CSEQ_NUMBER) {
		if (c >= '0' && c <= '9') {
			sc->count += 1;
			if (sc->count > OTUS_CSEQ_DIGITS)
				sc->state = OTUS_CSEQ_NONE;
		} else if (blank(c)) {
			sc->state = OTUS_CSEQ_BETWEEN;
			sc->count = 1;
		} else {
			sc->state = OTUS_CSEQ_NONE;
		}
	} else if (state == OTUS_CSEQ_METHOD) {
		if (c == '\r' || c == '\n' || blank(c)) {
			sc->state = OTUS_CSEQ_FOUND;
		} else if (sc->count >= OTUS_DROP_TOKEN_LEN || c == 0) {
			sc->state = OTUS_CSEQ_NONE; /* too long, or a NUL the key would read as padding */
		} else {
			sc->method[sc->count & (OTUS_DROP_TOKEN_LEN - 1)] = c;
			sc->count += 1;
		}
	}
}

/* 1 when the response in the sample answers a method on the drop list.
 * ``*end``, the copy's length, is read back from the scan's state after it:
 * kept in a register across the loop, its range (which differs with how the
 * copy was bounded) made the verifier walk the loop once per range. */
static __always_inline int cseq_dropped(struct otus_sample *s, __u32 start, __u64 *end)
{
	__u32 zero = 0;
	/* volatile: the compiler would otherwise carry the fields in registers */
	volatile struct otus_cseq *sc = cseq_scan.lookup(&zero);
	struct otus_drop_key key;

	if (!sc)
		return 0;
	sc->state = OTUS_CSEQ_LINE;
	sc->count = 0;
	sc->start = start;
	sc->end = *end;
	*(volatile __u64 *)&sc->method[0] = 0;
	*(volatile __u64 *)&sc->method[8] = 0;
#pragma clang loop unroll(disable)
	for (__u32 k = 0; k < OTUS_CSEQ_SCAN; k++) {
		__u32 i = sc->start + k;

		if (i >= sc->end || sc->state >= OTUS_CSEQ_FOUND)
			break;
		cseq_step(sc, s->data[i & (OTUS_DATA_LEN - 1)]);
	}
	*end = sc->end;
	if (*end > OTUS_SNAPLEN)
		*end = OTUS_SNAPLEN; /* never: it was a copy's length */
	if (sc->state != OTUS_CSEQ_FOUND)
		return 0;
	__builtin_memcpy(&key, (void *)sc->method, sizeof(key));
	return drop_methods.lookup(&key) != NULL;
}

/* Bounds the copy for the verifier: bpf_xdp_load_bytes wants its length a u64
 * with a constant cap, or the verifier rejects the program ("R4 min value is
 * negative"). */
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

/* Copies the frame into the sample and sends it up. ``route`` and ``cseq``:
 * constants at each call. With Call-ID routing compiled in, a stream's first
 * packet takes a copy without the scan: the verifier, walking the scan after
 * the statistics too, went past its limit. Without it one copy is compiled:
 * two cost the path of packets that match nothing ~3 ns (kernel_path.py).
 * With ``cseq`` (the screen's copy), a response whose CSeq names a dropped
 * method goes no further: returns 1. */
static __always_inline int copy_up_xdp(struct xdp_md *ctx, struct otus_counters *c, struct otus_parsed *p,
				       struct otus_match *m, const int route, const int cseq)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct otus_sample *s = scratch.lookup(&zero);

	if (!s)
		return 0;
	__u64 frame_len = data_end - data;
	__u64 cap_len = capture_length(frame_len, m->snaplen);
	if (cap_len < 1 || bpf_xdp_load_bytes(ctx, 0, s->data, cap_len) < 0) {
		count(c, OTUS_CTR_LOAD_FAILED);
		return 0;
	}
	if (cseq && m->response && cseq_dropped(s, p->payload_offset, &cap_len))
		return 1;
#ifdef OTUS_CALLID_ROUTING
	if (route)
		route_by_call_id(s, p, m, &cap_len);
#endif
	fill_header(s, p, m, OTUS_DIR_INGRESS, ctx->ingress_ifindex, frame_len, cap_len);
	submit_sample(c, s, cap_len, m->shard);
	return 0;
}

static __always_inline int copy_up_tc(struct __sk_buff *skb, struct otus_counters *c, struct otus_parsed *p,
				      struct otus_match *m, const int route, const int cseq)
{
	__u32 zero = 0;
	struct otus_sample *s = scratch.lookup(&zero);

	if (!s)
		return 0;
	__u64 cap_len = capture_length(skb->len, m->snaplen);
	if (cap_len < 1 || bpf_skb_load_bytes(skb, 0, s->data, cap_len) < 0) {
		count(c, OTUS_CTR_LOAD_FAILED);
		return 0;
	}
	if (cseq && m->response && cseq_dropped(s, p->payload_offset, &cap_len))
		return 1;
#ifdef OTUS_CALLID_ROUTING
	if (route)
		route_by_call_id(s, p, m, &cap_len);
#endif
	fill_header(s, p, m, OTUS_DIR_EGRESS, skb->ifindex, skb->len, cap_len);
	submit_sample(c, s, cap_len, m->shard);
	return 0;
}

/* ---- The method drop list (drop_methods, OTUS_CFG_DROP_METHODS) ----
 * userspace/droplist.py is the same in Python (AF_PACKET, replay). */

/* The token a SIP datagram starts with, as a drop_methods key: a status
 * line's 3-digit code ("SIP/2.0" SP 3DIGIT SP, RFC 3261 §7.2), or a request's
 * method up to its SP (§7.1), at most OTUS_DROP_TOKEN_LEN bytes. Returns 2
 * for a status line, 1 for a request, 0 for neither. The list holds only
 * A-Z and digits, so anything else read here simply matches nothing; a NUL
 * would read as the key's padding, so it ends the search. */
static __always_inline int first_token(void *data, void *data_end, __u32 off, struct otus_drop_key *key)
{
	__u8 *payload = data + off;

	if ((void *)(payload + OTUS_SIGNATURE_LEN + 4) <= data_end &&
	    *(__u64 *)payload == OTUS_C8('S', 'I', 'P', '/', '2', '.', '0', ' ')) {
		if (payload[OTUS_SIGNATURE_LEN + 3] != ' ')
			return 0;
#pragma unroll
		for (int i = 0; i < 3; i++) {
			__u8 digit = payload[OTUS_SIGNATURE_LEN + i];

			if (digit < '0' || digit > '9')
				return 0; /* a status code is 3 digits (§7.2); a NUL would read as padding */
			key->token[i] = digit;
		}
		return 2;
	}
#pragma unroll
	for (int i = 0; i <= OTUS_DROP_TOKEN_LEN; i++) {
		if ((void *)(payload + i + 1) > data_end)
			return 0;
		__u8 ch = payload[i];
		if (ch == ' ')
			return i > 0;
		if (ch == 0 || i == OTUS_DROP_TOKEN_LEN)
			return 0;
		key->token[i] = ch;
	}
	return 0;
}

/* ---- Duplicate suppression (dedup, OTUS_CFG_DEDUP) ----
 * userspace/dedup.py keeps the same identity, exactly where this keeps a digest. */
#define OTUS_DIGEST_MULTIPLIER 0x9E3779B97F4A7C15ULL

/* For a given h, a bijection of w, and for a given w, of h: two packets that
 * differ in one word of what is digested never share a digest. */
static __always_inline __u64 digest_step(__u64 h, __u64 w)
{
	h = (h ^ w) * OTUS_DIGEST_MULTIPLIER;
	return h << 31 | h >> 33;
}

/* murmur3's 64-bit finaliser: every input bit moves every digest bit. */
static __always_inline __u64 digest_end(__u64 h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return h;
}

/* The L3 part of a packet's identity: what a copy of it one hop later still
 * has. IPv4: the addresses, id, fragment field, total length and protocol,
 * not the TOS, TTL, checksum or options. IPv6: the addresses, flow label,
 * payload length, upper protocol and a fragment header's offset and id, not
 * the traffic class, hop limit or other extension headers. No L2: VLAN tags
 * and MACs differ between copies. Sets *ip_end, where the IP length ends. */
static __always_inline int digest_l3(void *data, void *data_end, struct otus_parsed *p, __u64 *h,
				     __u32 *ip_end)
{
	*h = digest_step(*h, (__u64)p->saddr[0] << 32 | p->daddr[0]);
	if (p->family == 4) {
		struct iphdr *ip = data + (p->l3_offset & OTUS_OFFSET_MASK);

		if ((void *)(ip + 1) > data_end)
			return 0;
		*h = digest_step(*h, (__u64)ip->id << 48 | (__u64)ip->frag_off << 32 | (__u64)ip->tot_len << 16 |
				     ip->protocol);
		*ip_end = p->l3_offset + bpf_ntohs(ip->tot_len);
		return 1;
	}
	struct ipv6hdr *ip6 = data + (p->l3_offset & OTUS_OFFSET_MASK);

	if ((void *)(ip6 + 1) > data_end)
		return 0;
	*h = digest_step(*h, (__u64)p->saddr[1] << 32 | p->daddr[1]);
	*h = digest_step(*h, (__u64)p->saddr[2] << 32 | p->daddr[2]);
	*h = digest_step(*h, (__u64)p->saddr[3] << 32 | p->daddr[3]);
	__u32 label = (__u32)(ip6->flow_lbl[0] & 0x0F) << 16 | (__u32)ip6->flow_lbl[1] << 8 | ip6->flow_lbl[2];
	*h = digest_step(*h, (__u64)label << 32 | (__u64)ip6->payload_len << 16 | p->l4_proto);
	*h = digest_step(*h, (__u64)p->frag_id << 32 | p->frag_off);
	*ip_end = p->l3_offset + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	return 1;
}

/* The digest's work space: what its loop carries lives here, not in
 * registers, as the Call-ID scan's does, so that every path through a step
 * ends in the same verifier state (a packet pointer's checked range, or a
 * length compared with a constant, would otherwise tell each path apart, and
 * the verifier walk every one to the program's end). */
struct otus_digest {
	__u64 h;
	__u64 tail;
	__u32 start;
	__u32 n;
};

BPF_PERCPU_ARRAY(digest_scan, struct otus_digest, 1);

/* The L4 part: UDP's header, or TCP's ports, sequence and acknowledgement
 * numbers, offset, flags, window and checksum; then the first
 * OTUS_DEDUP_PREFIX payload bytes within the IP length (Ethernet pads short
 * frames). The checksum stands for the bytes past the prefix: a packet
 * sharing a genuine one's first bytes with another tail (a decoy sent first,
 * to have the genuine one taken for its copy) must also carry its checksum,
 * so it is the same datagram to the receiver too, or is discarded by both.
 * An egress skb with a partial checksum holds the pseudo-header's sum, the
 * same for each of its copies on egress. */
static __always_inline int digest_l4(void *data, void *data_end, struct otus_parsed *p, __u64 *h,
				     __u32 ip_end)
{
	__u32 zero = 0;
	/* volatile: the compiler would otherwise carry the fields in registers */
	volatile struct otus_digest *d = digest_scan.lookup(&zero);
	__u8 *l4 = data + (p->l4_offset & OTUS_OFFSET_MASK);

	if (!d)
		return 0;
	if (p->l4_proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > data_end)
			return 0;
		*h = digest_step(*h, *(__u64 *)l4);
	} else {
		if ((void *)(l4 + 18) > data_end)
			return 0;
		*h = digest_step(*h, *(__u64 *)l4);
		*h = digest_step(*h, *(__u64 *)(l4 + 8));
		*h = digest_step(*h, *(__u16 *)(l4 + 16));
	}
	/* n: the bytes digested, within the IP length, the prefix and the packet */
	__u32 n = ip_end > p->payload_offset ? ip_end - p->payload_offset : 0;
	__u64 in_packet = data_end - data > p->payload_offset ? data_end - data - p->payload_offset : 0;

	if (n > OTUS_DEDUP_PREFIX)
		n = OTUS_DEDUP_PREFIX;
	if (n > in_packet)
		n = in_packet;
	d->h = *h;
	d->tail = (__u64)(n & 7) << 56; /* the last n % 8 bytes: one word, their count in its top byte */
	d->start = p->payload_offset;
	d->n = n;
#pragma clang loop unroll(disable)
	for (__u32 k = 0; k < OTUS_DEDUP_PREFIX / 8; k++) {
		__u8 *word = data + ((d->start + 8 * k) & OTUS_OFFSET_MASK);

		/* Not break: one way out of the loop (see the Call-ID scan). */
		if (8 * k + 8 > d->n || (void *)(word + 8) > data_end)
			continue;
		d->h = digest_step(d->h, *(__u64 *)word);
	}
#pragma clang loop unroll(disable)
	for (__u32 k = 0; k < 7; k++) {
		__u8 *byte = data + ((d->start + (d->n & ~7U) + k) & OTUS_OFFSET_MASK);

		if (k >= (d->n & 7) || (void *)(byte + 1) > data_end)
			continue;
		d->tail |= (__u64)*byte << (8 * k);
	}
	*h = digest_step(d->h, d->tail);
	return 1;
}

/* 1 when this packet's digest was first seen less than the window ago. The
 * first sighting is kept, not refreshed by its copies: a window is counted
 * from the original. Two copies on two CPUs in the same few nanoseconds may
 * both find the slot without their digest and both go up. */
static __always_inline int duplicate(struct otus_config *cfg, void *data, void *data_end, struct otus_parsed *p,
				     struct otus_counters *c)
{
	/* Keyed: a sender who cannot read the seed cannot forge another packet's
	 * digest (every step of it can be undone) or aim at its slot. */
	__u64 h = cfg->dedup_seed ^ ((__u64)p->family << 8 | (p->flags & OTUS_FLAG_FRAGMENT));
	__u32 ip_end = 0;

	if (!digest_l3(data, data_end, p, &h, &ip_end))
		return 0;
	if (!p->non_first_fragment && !digest_l4(data, data_end, p, &h, ip_end))
		return 0;
	__u64 digest = digest_end(h);
	__u32 index = digest & (OTUS_DEDUP_ENTRIES - 1);
	struct otus_dedup_slot *slot = dedup.lookup(&index);

	if (!slot)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	int within = (__s64)(now - slot->first_ns) < (__s64)cfg->dedup_window_ms * 1000000;

	if (within && slot->digest == digest)
		return 1;
	if (within)
		count(c, OTUS_CTR_DEDUP_DISPLACED);
	slot->digest = digest;
	slot->first_ns = now; /* a new original, in a slot empty, stale or taken over */
	return 0;
}

/* The screen's verdict on a handed-off match, in this order: SIP over UDP
 * whose method or status code is on the drop list, a duplicate, then the RTP
 * statistics (so a copied RTP packet never counts as its stream's duplicate).
 * A response's CSeq is looked at in the copy (m->response). */
static __always_inline __u32 screen(struct otus_config *cfg, void *data, void *data_end, __u64 frame_len,
				    struct otus_counters *c, struct otus_handoff *h, struct otus_parsed *p,
				    struct otus_match *m)
{
	int token = 0;

	if ((cfg->flags & OTUS_CFG_DROP_METHODS) && m->kind == OTUS_KIND_SIP && p->l4_proto == IPPROTO_UDP) {
		struct otus_drop_key key = {};

		token = first_token(data, data_end, p->payload_offset & OTUS_OFFSET_MASK, &key);
		if (token && drop_methods.lookup(&key)) {
			m->kind = 0;
			return OTUS_CTR_DROPPED_METHOD;
		}
	}
	if ((cfg->flags & OTUS_CFG_DEDUP) && duplicate(cfg, data, data_end, p, c)) {
		m->kind = 0;
		return OTUS_CTR_DUPLICATE;
	}
	m->response = token == 2;
	if (m->stream) {
		if (!media_stats(data, data_end, p, &h->flow, frame_len, c))
			m->kind = 0;
		else if (m->snaplen < p->payload_offset + OTUS_RTP_HEADER)
			m->snaplen = p->payload_offset + OTUS_RTP_HEADER;
	}
	return h->verdict;
}

/* The screen on the handed-off match; its outcome written back to the hand-off. */
static __always_inline void screen_match(struct otus_config *cfg, void *data, void *data_end, __u64 frame_len,
					 struct otus_counters *c, struct otus_handoff *h)
{
	struct otus_parsed p = h->p;
	struct otus_match m = h->m;

	h->verdict = screen(cfg, data, data_end, frame_len, c, h, &p, &m);
	h->p.flags = p.flags;
	h->m = m;
}

/* The direction's counters, one lookup a packet. NULL never happens (the
 * array holds both directions) but the verifier wants the check. */
static __always_inline struct otus_counters *counters_of(__u32 direction)
{
	return counters.lookup(&direction);
}

int xdp_screen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct otus_handoff *h = handoff.lookup(&zero);
	struct otus_config *cfg = config.lookup(&zero);
	struct otus_counters *c = counters_of(OTUS_DIR_INGRESS);

	if (!h || !cfg || !c)
		return XDP_PASS;
	screen_match(cfg, data, data_end, data_end - data, c, h);
	/* The copy starts from what the screen wrote back, read anew: the
	 * verifier then walks the copy's scans once, not once for every way
	 * through the screen. */
	asm volatile("" ::: "memory");
	struct otus_parsed p = h->p;
	struct otus_match m = h->m;
	__u32 verdict = h->verdict;

	if (m.kind && m.stream)
		copy_up_xdp(ctx, c, &p, &m, 0, 0);
	else if (m.kind && copy_up_xdp(ctx, c, &p, &m, 1, 1))
		verdict = OTUS_CTR_DROPPED_METHOD;
	count(c, verdict);
	return XDP_PASS;
}

int tc_screen(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 zero = 0;
	struct otus_handoff *h = handoff.lookup(&zero);
	struct otus_config *cfg = config.lookup(&zero);
	struct otus_counters *c = counters_of(OTUS_DIR_EGRESS);

	if (!h || !cfg || !c)
		return TC_ACT_UNSPEC;
	screen_match(cfg, data, data_end, skb->len, c, h);
	/* The copy starts from what the screen wrote back, read anew: the
	 * verifier then walks the copy's scans once, not once for every way
	 * through the screen. */
	asm volatile("" ::: "memory");
	struct otus_parsed p = h->p;
	struct otus_match m = h->m;
	__u32 verdict = h->verdict;

	if (m.kind && m.stream)
		copy_up_tc(skb, c, &p, &m, 0, 0);
	else if (m.kind && copy_up_tc(skb, c, &p, &m, 1, 1))
		verdict = OTUS_CTR_DROPPED_METHOD;
	count(c, verdict);
	return TC_ACT_UNSPEC;
}

/* ---- Tunnels: one level of decapsulation ----
 * Mirrored traffic often arrives wrapped: VXLAN (RFC 7348) or Geneve
 * (RFC 8926) over UDP, GRE (RFC 2784, with RFC 2890's key and sequence)
 * carrying IPv4, IPv6 or Ethernet (transparent Ethernet bridging), ERSPAN
 * type II and III inside GRE, IPv4 and IPv6 inside IPv4 or IPv6. The hooks'
 * own parse recognises a tunnel only where it already stops (a UDP port
 * marked in sip_ports, IP protocol 47, 4 or 41) and only a kind that is on,
 * and hands the outer parse to a third program per hook, entered by tail
 * call: the hooks have no verifier budget for a second parse, and the
 * packets that are not tunnels pay nothing more than that check. The decap
 * program opens the tunnel header, parses the inner packet from there as
 * the hooks parse a frame, and decides, screens and copies it as they do;
 * the copy starts at the outer frame's first byte, the offsets point into
 * the inner packet (OTUS_FLAG_INNER). userspace/tunnel.py mirrors it. */
#define OTUS_ETH_P_TEB 0x6558     /* transparent Ethernet bridging: Ethernet inside */
#define OTUS_ETH_P_ERSPAN2 0x88BE /* ERSPAN type II (and I, which has no header: not opened) */
#define OTUS_ETH_P_ERSPAN3 0x22EB
#define OTUS_GRE_C 0x8000         /* checksum present */
#define OTUS_GRE_R 0x4000         /* routing present: RFC 1701, not RFC 2784 (refused) */
#define OTUS_GRE_K 0x2000         /* key present (RFC 2890) */
#define OTUS_GRE_S 0x1000         /* sequence number present (RFC 2890) */
#define OTUS_GRE_VERSION 0x0007   /* 0; 1 is PPTP's enhanced GRE (refused) */
#define OTUS_VXLAN_I 0x08         /* the VNI is valid (RFC 7348 §5): without it, refused */
/* The inner frame starts within this many bytes of the outer one: the outer
 * Ethernet, tags, IP with extension headers and tunnel header fit easily;
 * past it the tunnel is refused (counted), as userspace/tunnel.py refuses it. */
#define OTUS_INNER_MAX 1024

struct otus_tunnel {
	__u32 inner;          /* where the inner packet starts */
	__u16 proto;          /* its Ethernet type; OTUS_ETH_P_TEB: it starts with an Ethernet header */
	__u8 kind;            /* OTUS_CTR_DECAP_* */
	__u8 pad;
};

static __always_inline __u16 be16_at(__u8 *b)
{
	return (__u16)b[0] << 8 | b[1];
}

/* VXLAN or Geneve at the outer UDP payload. ``ports``: the port's bits. */
static __always_inline int open_udp_tunnel(void *data, void *data_end, struct otus_parsed *outer, __u8 ports,
					   struct otus_tunnel *t)
{
	__u32 start = outer->payload_offset & OTUS_OFFSET_MASK;
	__u8 *h = data + start;

	if ((void *)(h + 8) > data_end)
		return OTUS_CTR_TRUNCATED;
	if (ports & OTUS_PORT_GENEVE) {
		/* RFC 8926 §3.4: version 0; options in 4-byte words, at most 63 */
		if (h[0] >> 6)
			return OTUS_CTR_MALFORMED;
		t->kind = OTUS_CTR_DECAP_GENEVE;
		t->proto = be16_at(h + 2);
		t->inner = start + 8 + (h[0] & 0x3f) * 4;
		return 0;
	}
	if (!(h[0] & OTUS_VXLAN_I))
		return OTUS_CTR_MALFORMED;
	t->kind = OTUS_CTR_DECAP_VXLAN;
	t->proto = OTUS_ETH_P_TEB;
	t->inner = start + 8;
	return 0;
}

/* ERSPAN's own header after GRE's (type II: 8 bytes, version 1; type III:
 * 12, version 2, and 8 more with its O bit). Only Ethernet frames inside
 * (type III's frame type 0). */
static __always_inline int open_erspan(void *data, void *data_end, __u32 start, __u16 type, struct otus_tunnel *t)
{
	__u8 *e = data + (start & OTUS_OFFSET_MASK);

	if ((void *)(e + 12) > data_end)
		return OTUS_CTR_TRUNCATED;
	t->kind = OTUS_CTR_DECAP_ERSPAN;
	t->proto = OTUS_ETH_P_TEB;
	if (type == OTUS_ETH_P_ERSPAN2) {
		if (e[0] >> 4 != 1)
			return OTUS_CTR_MALFORMED;
		t->inner = start + 8;
		return 0;
	}
	/* bytes 10-11: P(1) FT(5) HW ID(6) D(1) Gra(2) O(1) */
	if (e[0] >> 4 != 2 || (e[10] >> 2) & 0x1f)
		return OTUS_CTR_MALFORMED;
	t->inner = start + 12 + (e[11] & 1) * 8;
	return 0;
}

/* GRE at the outer L4 offset: RFC 2784 with RFC 2890's key and sequence. */
static __always_inline int open_gre(void *data, void *data_end, struct otus_config *cfg, struct otus_parsed *outer,
				    struct otus_tunnel *t)
{
	__u32 start = outer->l4_offset & OTUS_OFFSET_MASK;
	__u8 *g = data + start;

	if ((void *)(g + 4) > data_end)
		return OTUS_CTR_TRUNCATED;
	__u16 flags = be16_at(g);
	__u16 type = be16_at(g + 2);

	if (flags & (OTUS_GRE_R | OTUS_GRE_VERSION))
		return OTUS_CTR_MALFORMED;
	start += 4 + (flags & OTUS_GRE_C ? 4 : 0) + (flags & OTUS_GRE_K ? 4 : 0) + (flags & OTUS_GRE_S ? 4 : 0);
	if (type == OTUS_ETH_P_ERSPAN2 || type == OTUS_ETH_P_ERSPAN3) {
		if (!(cfg->flags & OTUS_CFG_DECAP_ERSPAN))
			return OTUS_CTR_OTHER_L4;
		return open_erspan(data, data_end, start, type, t);
	}
	if (!(cfg->flags & OTUS_CFG_DECAP_GRE))
		return OTUS_CTR_OTHER_L4;
	t->kind = OTUS_CTR_DECAP_GRE;
	t->proto = type; /* IPv4, IPv6, Ethernet; anything else ends as NOT_IP */
	t->inner = start;
	return 0;
}

/* Whether the outer source may send tunnels: in the mirrors of its family, or
 * any source when no mirror is set. A list for the other family only trusts
 * none of this one. */
static __always_inline int trusted_mirror(struct otus_config *cfg, struct otus_parsed *outer)
{
	if (!(cfg->flags & (OTUS_CFG_MIRRORS_V4 | OTUS_CFG_MIRRORS_V6)))
		return 1;
	if (outer->family == 4) {
		struct otus_lpm_v4 key = {.prefixlen = 32};

		__builtin_memcpy(key.addr, outer->saddr, 4);
		return (cfg->flags & OTUS_CFG_MIRRORS_V4) && mirrors_v4.lookup(&key);
	}
	struct otus_lpm_v6 key = {.prefixlen = 128};

	__builtin_memcpy(key.addr, outer->saddr, 16);
	return (cfg->flags & OTUS_CFG_MIRRORS_V6) && mirrors_v6.lookup(&key);
}

/* The tunnel the hook handed over: 0 and *t, or the verdict that ends the
 * packet (MALFORMED, TRUNCATED: a refused header; OTHER_L4: a kind that is off). */
static __always_inline int open_tunnel(void *data, void *data_end, struct otus_config *cfg, struct otus_parsed *outer,
				       __u8 ports, struct otus_tunnel *t)
{
	if (outer->l4_proto == IPPROTO_UDP)
		return open_udp_tunnel(data, data_end, outer, ports, t);
	if (outer->l4_proto == IPPROTO_GRE)
		return open_gre(data, data_end, cfg, outer, t);
	t->kind = OTUS_CTR_DECAP_IPIP;
	t->proto = outer->l4_proto == IPPROTO_IPIP ? ETH_P_IP : ETH_P_IPV6;
	t->inner = outer->l4_offset;
	return 0;
}

/* The work space between the hook and its decap program: the outer parse
 * and, once the tunnel is open, where its inner packet starts. */
struct otus_decap {
	struct otus_parsed outer;
	__u32 inner;
	__u16 proto;
	__u8 ports;           /* the hook's m->decap: a UDP port's bits, 1 for an IP tunnel */
	__u8 pad;
};

BPF_PERCPU_ARRAY(decap_scratch, struct otus_decap, 1);
/* One program each: xdp_decap and tc_decap, set by user space (loader.py). */
BPF_PROG_ARRAY(xdp_decaps, 1);
BPF_PROG_ARRAY(tc_decaps, 1);

static __always_inline void hand_to_decap(struct otus_parsed *p, struct otus_match *m)
{
	__u32 zero = 0;
	struct otus_decap *d = decap_scratch.lookup(&zero);

	if (d) {
		d->outer = *p;
		d->ports = m->decap;
	}
}

/* The inner packet of the handed-over tunnel, parsed, decided and (for the
 * screen) handed off as the hooks do theirs. Returns the verdict; counts the
 * tunnel's kind, a refused header (DECAP_BAD) and a tunnel inside it
 * (DECAP_NESTED, which ends as NO_MATCH or OTHER_L4). */
static __always_inline __u32 classify_inner(void *data, void *data_end, __u64 frame_len, struct otus_counters *c,
					    struct otus_parsed *p, struct otus_match *m)
{
	__u32 zero = 0;
	struct otus_config *cfg = config.lookup(&zero);
	/* volatile: the inner offset is read back from memory, so that the
	 * verifier walks the inner parse once, from one state, for every kind */
	volatile struct otus_decap *d = decap_scratch.lookup(&zero);
	struct otus_tunnel t = {};

	if (!cfg || !d)
		return OTUS_CTR_NO_MATCH;
	/* the outer parse read where it lies, not copied: the stack has no room for it */
	struct otus_decap *handed = (struct otus_decap *)d;

	if (!trusted_mirror(cfg, &handed->outer)) {
		count(c, OTUS_CTR_DECAP_UNTRUSTED);
		return handed->outer.l4_proto == IPPROTO_UDP ? OTUS_CTR_NO_MATCH : OTUS_CTR_OTHER_L4;
	}
	int verdict = open_tunnel(data, data_end, cfg, &handed->outer, handed->ports, &t);

	if (verdict) {
		if (verdict != OTUS_CTR_OTHER_L4)
			count(c, OTUS_CTR_DECAP_BAD);
		return verdict;
	}
	count(c, t.kind);
	d->inner = t.inner;
	d->proto = t.proto;
	asm volatile("" ::: "memory");
	__u32 off = d->inner;
	__u16 proto = d->proto;

	/* a start past the frame: a Geneve option length, say, longer than the packet */
	if (off > OTUS_INNER_MAX || data + off >= data_end) {
		count(c, OTUS_CTR_DECAP_BAD);
		return OTUS_CTR_TRUNCATED;
	}
	p->flags = OTUS_FLAG_INNER;
	p->tunnel = t.kind - OTUS_CTR_DECAP_VXLAN + OTUS_TUNNEL_VXLAN;
	if (proto == OTUS_ETH_P_TEB) {
		struct ethhdr *eth = data + off;

		if ((void *)(eth + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		proto = bpf_ntohs(eth->h_proto);
		off += sizeof(*eth);
		verdict = parse_vlans(data, data_end, &off, &proto, p);
		if (verdict)
			return verdict;
	}
	verdict = parse_l3_l4(data, data_end, off, proto, p);
	if (verdict == OTUS_CTR_OTHER_L4 &&
	    (p->l4_proto == IPPROTO_GRE || p->l4_proto == IPPROTO_IPIP || p->l4_proto == IPPROTO_IPV6))
		count(c, OTUS_CTR_DECAP_NESTED);
	if (verdict)
		return verdict;
	verdict = decide(data, data_end, frame_len, cfg, c, p, m, 1);
	if (m->decap) {
		count(c, OTUS_CTR_DECAP_NESTED);
		m->decap = 0;
		m->screen = 0;
	}
	return verdict;
}

int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct otus_parsed p = {};
	struct otus_match m = {};
	struct otus_counters *c = counters_of(OTUS_DIR_INGRESS);

	if (!c)
		return XDP_PASS;
	__u32 verdict = classify_inner(data, data_end, data_end - data, c, &p, &m);
	if (m.screen)
		xdp_screens.call(ctx, 0); /* returns only without a screen program: never, as the features are refused without one */
	count(c, verdict);
	if (m.kind == 0 || m.screen)
		return XDP_PASS;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream)
		copy_up_xdp(ctx, c, &p, &m, 0, 0);
	else
#endif
		copy_up_xdp(ctx, c, &p, &m, 1, 0);
	return XDP_PASS;
}

int tc_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct otus_parsed p = {};
	struct otus_match m = {};
	struct otus_counters *c = counters_of(OTUS_DIR_EGRESS);

	if (!c)
		return TC_ACT_UNSPEC;
	__u32 verdict = classify_inner(data, data_end, skb->len, c, &p, &m);
	if (m.screen)
		tc_screens.call(skb, 0); /* returns only without a screen program: never, as the features are refused without one */
	count(c, verdict);
	if (m.kind == 0 || m.screen)
		return TC_ACT_UNSPEC;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream)
		copy_up_tc(skb, c, &p, &m, 0, 0);
	else
#endif
		copy_up_tc(skb, c, &p, &m, 1, 0);
	return TC_ACT_UNSPEC;
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
	/* One test on the path of packets that match nothing, for either tail call.
	 * Each returns only without its program: never, as what needs one is refused
	 * without it (KernelMaps). */
	if (m.screen) {
		if (m.decap) {
			hand_to_decap(&p, &m);
			xdp_decaps.call(ctx, 0);
		} else {
			xdp_screens.call(ctx, 0);
		}
	}
	count(c, verdict);
	if (m.kind == 0 || m.screen)
		return XDP_PASS;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream) /* two copies, so the verifier never walks the scan after the statistics */
		copy_up_xdp(ctx, c, &p, &m, 0, 0);
	else
#endif
		copy_up_xdp(ctx, c, &p, &m, 1, 0);
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
	if (m.screen) { /* one test for either tail call, as in xdp_ingress */
		if (m.decap) {
			hand_to_decap(&p, &m);
			tc_decaps.call(skb, 0);
		} else {
			tc_screens.call(skb, 0);
		}
	}
	count(c, verdict);
	if (m.kind == 0 || m.screen)
		return TC_ACT_UNSPEC;
#ifdef OTUS_CALLID_ROUTING
	if (m.stream) /* two copies, so the verifier never walks the scan after the statistics */
		copy_up_tc(skb, c, &p, &m, 0, 0);
	else
#endif
		copy_up_tc(skb, c, &p, &m, 1, 0);
	return TC_ACT_UNSPEC;
}

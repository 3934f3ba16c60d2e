/* otus.c — XDP (ingress) and TC (egress) capture of SIP packets.
 *
 * Both programs share one parsing path (parse_frame) and one submit path
 * (submit_sample); they differ only in how they read their context. They
 * count every packet and every outcome per CPU and always let the packet
 * through: monitoring never changes traffic.
 *
 * Compiled by bcc at attach time. Settings arrive as cflags defines
 * (OTUS_SNAPLEN, OTUS_RING_PAGES) and through BPF maps (sip_ports), never by
 * rewriting this text.
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
#ifndef OTUS_RING_PAGES
#define OTUS_RING_PAGES 1024
#endif
/* Bytes of an egress skb we need linear to parse L2-L4 headers. */
#define OTUS_PULL_LEN 128
#define OTUS_VLAN_DEPTH 2
#define OTUS_ETH_P_8021Q 0x8100
#define OTUS_ETH_P_8021AD 0x88A8
#define OTUS_IP_OFFSET_MASK 0x1FFF
#define TC_ACT_UNSPEC (-1) /* clsact: default action; TCX: next program */

struct otus_sample {
	struct otus_event hdr;
	__u8 data[OTUS_SNAPLEN];
};

struct otus_parsed {
	__u32 flow_hash;
	__u16 l3_offset;
	__u16 l4_offset;
	__u16 payload_offset;
	__u16 sport;
	__u16 dport;
	__u8 l4_proto;
};

struct otus_vlan_hdr {
	__be16 tci;
	__be16 encapsulated_proto;
};

BPF_RINGBUF_OUTPUT(events, OTUS_RING_PAGES);
BPF_PERCPU_ARRAY(counters, __u64, 2 * OTUS_CTR_MAX);
BPF_PERCPU_ARRAY(scratch, struct otus_sample, 1);
BPF_ARRAY(sip_ports, __u8, 65536);

static __always_inline void count(__u32 direction, __u32 counter)
{
	__u32 index = direction * OTUS_CTR_MAX + counter;
	__u64 *value = counters.lookup(&index);

	if (value)
		*value += 1;
}

/* murmur3 finaliser: spreads the XOR-folded tuple over all 32 bits. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Returns OTUS_CTR_MATCHED, or the counter that says why not. */
static __always_inline int parse_frame(void *data, void *data_end, struct otus_parsed *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__u16 proto;
	__u32 addr_fold;

	if ((void *)(eth + 1) > data_end)
		return OTUS_CTR_TRUNCATED;
	proto = bpf_ntohs(eth->h_proto);

#pragma unroll
	for (int i = 0; i < OTUS_VLAN_DEPTH; i++) {
		if (proto != OTUS_ETH_P_8021Q && proto != OTUS_ETH_P_8021AD)
			break;
		struct otus_vlan_hdr *vlan = data + off;
		if ((void *)(vlan + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		proto = bpf_ntohs(vlan->encapsulated_proto);
		off += sizeof(*vlan);
	}

	p->l3_offset = off;
	if (proto == ETH_P_IP) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		if (ip->ihl < 5)
			return OTUS_CTR_TRUNCATED;
		/* Non-first fragments carry no ports; the kernel issue routes them. */
		if (bpf_ntohs(ip->frag_off) & OTUS_IP_OFFSET_MASK)
			return OTUS_CTR_NOT_UDP_TCP;
		p->l4_proto = ip->protocol;
		addr_fold = ip->saddr ^ ip->daddr;
		off += ip->ihl * 4;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		p->l4_proto = ip6->nexthdr;
		addr_fold = 0;
#pragma unroll
		for (int i = 0; i < 4; i++)
			addr_fold ^= ip6->saddr.in6_u.u6_addr32[i] ^ ip6->daddr.in6_u.u6_addr32[i];
		off += sizeof(*ip6);
	} else {
		return OTUS_CTR_NOT_IP;
	}

	p->l4_offset = off;
	if (p->l4_proto == IPPROTO_UDP) {
		struct udphdr *udp = data + off;
		if ((void *)(udp + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		p->sport = bpf_ntohs(udp->source);
		p->dport = bpf_ntohs(udp->dest);
		off += sizeof(*udp);
	} else if (p->l4_proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + off;
		if ((void *)(tcp + 1) > data_end)
			return OTUS_CTR_TRUNCATED;
		if (tcp->doff < 5)
			return OTUS_CTR_TRUNCATED;
		p->sport = bpf_ntohs(tcp->source);
		p->dport = bpf_ntohs(tcp->dest);
		off += tcp->doff * 4;
	} else {
		return OTUS_CTR_NOT_UDP_TCP;
	}
	p->payload_offset = off;
	p->flow_hash = mix32(addr_fold ^ (p->sport ^ p->dport) ^ ((__u32)p->l4_proto << 16));

	__u32 sport = p->sport, dport = p->dport;
	__u8 *sport_is_sip = sip_ports.lookup(&sport);
	__u8 *dport_is_sip = sip_ports.lookup(&dport);
	if ((sport_is_sip && *sport_is_sip) || (dport_is_sip && *dport_is_sip))
		return OTUS_CTR_MATCHED;
	return OTUS_CTR_NOT_UDP_TCP;
}

/* Bounds the capture length for the verifier (u64: see ENVIRONMENT.md). */
static __always_inline __u64 capture_length(__u64 frame_len)
{
	return frame_len < OTUS_SNAPLEN ? frame_len : OTUS_SNAPLEN;
}

static __always_inline void fill_header(struct otus_sample *s, struct otus_parsed *p,
					__u32 direction, __u32 ifindex, __u32 orig_len,
					__u64 cap_len)
{
	s->hdr.ts_ns = bpf_ktime_get_ns();
	s->hdr.ifindex = ifindex;
	s->hdr.orig_len = orig_len;
	s->hdr.cap_len = cap_len;
	s->hdr.flow_hash = p->flow_hash;
	s->hdr.l3_offset = p->l3_offset;
	s->hdr.l4_offset = p->l4_offset;
	s->hdr.payload_offset = p->payload_offset;
	s->hdr.direction = direction;
	s->hdr.kind = OTUS_KIND_SIP;
	s->hdr.l4_proto = p->l4_proto;
	s->hdr.flags = 0;
}

static __always_inline void submit_sample(struct otus_sample *s, __u32 direction, __u64 cap_len)
{
	__u64 size = sizeof(struct otus_event) + cap_len;

	if (size > sizeof(*s))
		size = sizeof(*s);
	if (events.ringbuf_output(s, size, 0) == 0)
		count(direction, OTUS_CTR_SUBMITTED);
	else
		count(direction, OTUS_CTR_SUBMIT_FAILED);
}

int xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct otus_parsed p = {};
	__u32 zero = 0;

	count(OTUS_DIR_INGRESS, OTUS_CTR_SEEN);
	int verdict = parse_frame(data, data_end, &p);
	count(OTUS_DIR_INGRESS, verdict);
	if (verdict != OTUS_CTR_MATCHED)
		return XDP_PASS;

	struct otus_sample *s = scratch.lookup(&zero);
	if (!s)
		return XDP_PASS;
	__u64 frame_len = data_end - data;
	__u64 cap_len = capture_length(frame_len);
	if (cap_len < 1 || bpf_xdp_load_bytes(ctx, 0, s->data, cap_len) < 0) {
		count(OTUS_DIR_INGRESS, OTUS_CTR_LOAD_FAILED);
		return XDP_PASS;
	}
	fill_header(s, &p, OTUS_DIR_INGRESS, ctx->ingress_ifindex, frame_len, cap_len);
	submit_sample(s, OTUS_DIR_INGRESS, cap_len);
	return XDP_PASS;
}

int tc_egress(struct __sk_buff *skb)
{
	struct otus_parsed p = {};
	__u32 zero = 0;

	count(OTUS_DIR_EGRESS, OTUS_CTR_SEEN);
	/* Locally built skbs may keep headers outside the linear area. */
	if (skb->data_end - skb->data < OTUS_PULL_LEN && skb->len > skb->data_end - skb->data)
		bpf_skb_pull_data(skb, skb->len < OTUS_PULL_LEN ? skb->len : OTUS_PULL_LEN);

	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int verdict = parse_frame(data, data_end, &p);
	count(OTUS_DIR_EGRESS, verdict);
	if (verdict != OTUS_CTR_MATCHED)
		return TC_ACT_UNSPEC;

	struct otus_sample *s = scratch.lookup(&zero);
	if (!s)
		return TC_ACT_UNSPEC;
	__u64 cap_len = capture_length(skb->len);
	if (cap_len < 1 || bpf_skb_load_bytes(skb, 0, s->data, cap_len) < 0) {
		count(OTUS_DIR_EGRESS, OTUS_CTR_LOAD_FAILED);
		return TC_ACT_UNSPEC;
	}
	fill_header(s, &p, OTUS_DIR_EGRESS, skb->ifindex, skb->len, cap_len);
	submit_sample(s, OTUS_DIR_EGRESS, cap_len);
	return TC_ACT_UNSPEC;
}

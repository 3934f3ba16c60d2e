/* otus_tls.c — plaintext of SIP over TLS, read where a local process hands it
 * to its TLS library (OpenSSL 3's SSL_write, SSL_write_ex, SSL_read and
 * SSL_read_ex), with no keys and no decryption. With --tls, loader.py compiles
 * it after otus.c as one text (bcc makes programs of the main file's functions
 * only), using otus.c's rings, config and mix32; otus_ebpf/kernel/tls.py
 * attaches it.
 *
 * A call's entry probe notes the session (SSL *), the buffer and, for the _ex
 * forms, where the length will be written, per thread. The TCP socket under a
 * session is found by pairing: a socket read or write system call on the same
 * thread during a TLS call moves that call's session's records, and the 4-tuple
 * of the TCP socket behind its file descriptor is kept per (process, session)
 * in an LRU map. The return probe sends the bytes the
 * call moved up the ring of the connection's shard, with the byte offset of
 * the stream they continue (so user space sees a chunk the ring lost as a
 * gap). A session seen on a new 4-tuple (an SSL * reused after SSL_free) starts
 * its offsets again. Only connections to or from a "tls_ports" port go up;
 * with OTUS_CFG_TLS_COMMS, only processes whose comm is in "tls_comms".
 */

#define OTUS_AF_INET 2
#define OTUS_AF_INET6 10
#define OTUS_SOCK_STREAM 1
#define OTUS_TLS_CALLS 65536       /* threads inside a TLS call at once */
#define OTUS_TLS_SESSIONS 65536    /* sessions whose connection is known */

struct otus_tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 done;           /* _ex: where the library writes the length it moved */
	__u32 call;           /* OTUS_TLS_CALL_* */
	__u32 pad;
};

struct otus_tls_session {
	__u64 ssl;
	__u32 pid;
	__u32 pad;
};

struct otus_tls_conn {
	__u8 laddr[16];       /* the process's end */
	__u8 raddr[16];       /* the peer's */
	__u16 lport;
	__u16 rport;
	__u8 family;
	__u8 by_last_read;    /* paired by the socket read before an SSL_read (memory BIO) */
	__u8 pad[2];
	__u64 written;        /* stream offsets: bytes written and read so far */
	__u64 read;
};

struct otus_tls_sample {
	struct otus_event hdr;
	struct otus_tls tls;
	__u8 data[OTUS_TLS_DATA];
};

struct otus_comm {
	char comm[16];
};

/* LRU: a thread that dies inside a TLS call never runs the return probe; its entry
 * must not hold a slot for ever (a full plain hash would stop every new call) */
BPF_TABLE("lru_hash", __u64, struct otus_tls_call, tls_calls, OTUS_TLS_CALLS);
BPF_TABLE("lru_hash", struct otus_tls_session, struct otus_tls_conn, tls_conns, OTUS_TLS_SESSIONS);
BPF_HASH(tls_comms, struct otus_comm, __u8, 64);
/* processes that make TLS calls, and the TLS-port socket each of their threads read
 * last (its 4-tuple; ``read`` holds when): how memory-BIO servers are paired */
BPF_TABLE("lru_hash", __u32, __u8, tls_procs, 4096);
BPF_TABLE("lru_hash", __u64, struct otus_tls_conn, tls_last_read, OTUS_TLS_CALLS);
BPF_ARRAY(tls_ports, __u8, 65536);
BPF_PERCPU_ARRAY(tls_counters, struct otus_tls_counters, 1);
BPF_PERCPU_ARRAY(tls_scratch, struct otus_tls_sample, 1);

static __always_inline void tls_count(__u32 counter)
{
	__u32 zero = 0;
	struct otus_tls_counters *c = tls_counters.lookup(&zero);

	if (c && counter < OTUS_TLS_CTR_MAX)
		c->counts[counter] += 1;
}

/* Whether this process is one the operator asked for (no comm list: every one). */
static __always_inline int tls_process_wanted(void)
{
	__u32 zero = 0;
	struct otus_config *cfg = config.lookup(&zero);
	struct otus_comm key = {};

	if (!cfg || !(cfg->flags & OTUS_CFG_TLS_COMMS))
		return 1;
	bpf_get_current_comm(&key.comm, sizeof(key.comm));
	return tls_comms.lookup(&key) != NULL;
}

static __always_inline int tls_enter(struct pt_regs *ctx, __u32 call)
{
	if (!tls_process_wanted())
		return 0;
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u8 one = 1;

	if (!tls_procs.lookup(&pid))
		tls_procs.update(&pid, &one);
	struct otus_tls_call entry = {
		.ssl = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.done = call >= OTUS_TLS_CALL_WRITE_EX ? PT_REGS_PARM4(ctx) : 0,
		.call = call,
	};
	__u64 id = bpf_get_current_pid_tgid();

	tls_calls.update(&id, &entry);
	return 0;
}

int otus_tls_write(struct pt_regs *ctx) { return tls_enter(ctx, OTUS_TLS_CALL_WRITE); }
int otus_tls_read(struct pt_regs *ctx) { return tls_enter(ctx, OTUS_TLS_CALL_READ); }
int otus_tls_write_ex(struct pt_regs *ctx) { return tls_enter(ctx, OTUS_TLS_CALL_WRITE_EX); }
int otus_tls_read_ex(struct pt_regs *ctx) { return tls_enter(ctx, OTUS_TLS_CALL_READ_EX); }

static __always_inline int tls_port(__u32 lport, __u32 rport)
{
	__u8 *lbits = tls_ports.lookup(&lport);
	__u8 *rbits = tls_ports.lookup(&rport);

	return (lbits && *lbits) || (rbits && *rbits);
}

static __always_inline int same_conn(struct otus_tls_conn *a, struct otus_tls_conn *b)
{
	__u64 *al = (__u64 *)a->laddr, *bl = (__u64 *)b->laddr;
	__u64 *ar = (__u64 *)a->raddr, *br = (__u64 *)b->raddr;

	return a->family == b->family && a->lport == b->lport && a->rport == b->rport &&
	       al[0] == bl[0] && al[1] == bl[1] && ar[0] == br[0] && ar[1] == br[1];
}

/* A TCP socket's 4-tuple into ``conn``; 0 for any other socket. */
static __always_inline int tcp_conn(void *sk, struct otus_tls_conn *conn)
{
	__u16 family = 0, type = 0, protocol = 0;

	bpf_probe_read_kernel(&type, sizeof(type), sk + OTUS_OFF_SK_TYPE);
	bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OTUS_OFF_SK_PROTOCOL);
	if (type != OTUS_SOCK_STREAM || protocol != IPPROTO_TCP)
		return 0;
	bpf_probe_read_kernel(&family, sizeof(family), sk + OTUS_OFF_SK_FAMILY);
	if (family == OTUS_AF_INET) {
		conn->family = 4;
		bpf_probe_read_kernel(conn->laddr, 4, sk + OTUS_OFF_SK_RCV_SADDR);
		bpf_probe_read_kernel(conn->raddr, 4, sk + OTUS_OFF_SK_DADDR);
	} else if (family == OTUS_AF_INET6) {
		conn->family = 6;
		bpf_probe_read_kernel(conn->laddr, 16, sk + OTUS_OFF_SK_V6_RCV_SADDR);
		bpf_probe_read_kernel(conn->raddr, 16, sk + OTUS_OFF_SK_V6_DADDR);
	} else {
		return 0;
	}
	__be16 rport = 0;

	bpf_probe_read_kernel(&conn->lport, sizeof(conn->lport), sk + OTUS_OFF_SK_NUM);
	bpf_probe_read_kernel(&rport, sizeof(rport), sk + OTUS_OFF_SK_DPORT);
	conn->rport = bpf_ntohs(rport);
	return 1;
}

/* A socket read or write on a thread inside a TLS call: the session's TCP socket. */
static __always_inline void tls_pair(struct otus_tls_call *call, __u64 id, void *sk)
{
	struct otus_tls_conn conn = {};

	if (!tcp_conn(sk, &conn))
		return;
	struct otus_tls_session session = {.ssl = call->ssl, .pid = id >> 32};
	struct otus_tls_conn *known = tls_conns.lookup(&session);

	if (known && same_conn(known, &conn))
		return; /* the connection it had: its offsets go on */
	if (known && tls_port(known->lport, known->rport) && !tls_port(conn.lport, conn.rport))
		return; /* a session on a TLS SIP port is not taken over by another socket's I/O */
	tls_conns.update(&session, &conn);
}

/* x86_64 system calls a TLS library moves its records with (OpenSSL's socket BIO:
 * read/write; others: send/recv and their vector forms) */
#define OTUS_SYS_READ 0
#define OTUS_SYS_WRITE 1
#define OTUS_SYS_READV 19
#define OTUS_SYS_WRITEV 20
#define OTUS_SYS_SENDTO 44
#define OTUS_SYS_RECVFROM 45
#define OTUS_SYS_SENDMSG 46
#define OTUS_SYS_RECVMSG 47

/* 1: a socket write, 2: a socket read, 0: neither */
static __always_inline int socket_io(long nr)
{
	if (nr == OTUS_SYS_WRITE || nr == OTUS_SYS_WRITEV || nr == OTUS_SYS_SENDTO || nr == OTUS_SYS_SENDMSG)
		return 1;
	if (nr == OTUS_SYS_READ || nr == OTUS_SYS_READV || nr == OTUS_SYS_RECVFROM || nr == OTUS_SYS_RECVMSG)
		return 2;
	return 0;
}

static __always_inline int writes(__u32 call)
{
	return call == OTUS_TLS_CALL_WRITE || call == OTUS_TLS_CALL_WRITE_EX;
}

/* Kernel struct members are read at the running kernel's offsets, which loader.py
 * takes from its BTF (otus_ebpf/kernel/btf.py) and passes as OTUS_OFF_* defines:
 * the host's kernel headers may be another kernel's. */

static __always_inline void *read_pointer(void *base, __u64 offset)
{
	void *value = NULL;

	bpf_probe_read_kernel(&value, sizeof(value), base + offset);
	return value;
}

/* The socket (struct sock) behind a file descriptor of the current process; NULL
 * for any other file. */
static __always_inline void *fd_socket(__u64 fd)
{
	void *task = (void *)bpf_get_current_task();
	void *files = read_pointer(task, OTUS_OFF_TASK_FILES);
	if (!files)
		return NULL;
	void *fdt = read_pointer(files, OTUS_OFF_FILES_FDT);
	if (!fdt)
		return NULL;
	unsigned int max_fds = 0;

	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + OTUS_OFF_FDT_MAX_FDS);
	if (fd >= max_fds)
		return NULL;
	void **fds = read_pointer(fdt, OTUS_OFF_FDT_FD);
	void *file = NULL;

	bpf_probe_read_kernel(&file, sizeof(file), fds + fd);
	if (!file)
		return NULL;
	void *sock = read_pointer(file, OTUS_OFF_FILE_PRIVATE_DATA);
	/* a socket's file and its struct socket point at each other; no other file's data does */
	if (!sock || read_pointer(sock, OTUS_OFF_SOCKET_FILE) != file)
		return NULL;
	return read_pointer(sock, OTUS_OFF_SOCKET_SK);
}

/* Every system call's entry while --tls is on: most leave at the number test; a socket
 * I/O call on a thread inside a TLS call names that call's session's socket. A raw
 * tracepoint needs neither tracefs nor kprobes. */
RAW_TRACEPOINT_PROBE(sys_enter)
{
	int io = socket_io(ctx->args[1]);

	if (!io)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct otus_tls_call *call = tls_calls.lookup(&id);
	__u32 pid = id >> 32;
	/* outside a TLS call, only a read by a process that makes TLS calls is looked at */
	if (!call && (io != 2 || !tls_procs.lookup(&pid)))
		return 0;
	/* a write pairs a write call, a read a read call: other I/O the thread does inside
	 * the call (a message callback logging to a socket) is not the session's */
	if (call && (io == 1) != writes(call->call))
		return 0;
	__u64 fd = 0;

	bpf_probe_read_kernel(&fd, sizeof(fd), (void *)ctx->args[0] + OTUS_OFF_PT_REGS_DI);
	void *sk = fd_socket(fd);
	if (!sk)
		return 0;
	if (call) {
		tls_pair(call, id, sk);
		return 0;
	}
	/* A server that feeds its TLS library through a memory BIO (Kamailio) reads the
	 * ciphertext itself, then calls SSL_read: the socket its thread read last, on a TLS
	 * SIP port, is the one the next SSL_read of a session not yet paired decrypts. */
	struct otus_tls_conn conn = {};
	if (tcp_conn(sk, &conn) && tls_port(conn.lport, conn.rport)) {
		conn.read = bpf_ktime_get_ns(); /* when: a pairing this old is not believed */
		tls_last_read.update(&id, &conn);
	}
	return 0;
}

/* SSL_free: the session's connection is forgotten, so a reused SSL * starts afresh. */
int otus_tls_free(struct pt_regs *ctx)
{
	struct otus_tls_session session = {.ssl = PT_REGS_PARM1(ctx), .pid = bpf_get_current_pid_tgid() >> 32};

	tls_conns.delete(&session);
	return 0;
}

/* How many bytes the call moved: its return value, or for the _ex forms
 * (which return 1 on success) the length the library wrote for the caller. */
static __always_inline __u64 tls_moved(struct pt_regs *ctx, struct otus_tls_call *call)
{
	/* the functions return int: the register's upper half is not part of it (a -1 with
	 * garbage above it must not read as a huge length) */
	int rc = (int)PT_REGS_RC(ctx);

	if (call->call < OTUS_TLS_CALL_WRITE_EX)
		return rc > 0 ? (__u64)rc : 0;
	__u64 moved = 0;

	if (rc != 1 || bpf_probe_read_user(&moved, sizeof(moved), (void *)call->done) < 0)
		return 0;
	return moved;
}

#define OTUS_TLS_LAST_READ_NS 1000000000ULL /* a memory BIO's read and its SSL_read: same second */

/* A read call with no socket I/O of its own: the session is the socket the thread read
 * last (memory-BIO servers), when that read began within the last second. Taken on every
 * such read, so a session paired wrongly (a thread pool; an SSL * freed by another
 * process and reused for a new connection) is put right by its next read; a new socket
 * starts the offsets again. A read pairs one call: the next session needs its own. */
static __always_inline struct otus_tls_conn *pair_last_read(__u64 id, struct otus_tls_session *session,
							    struct otus_tls_conn *known)
{
	struct otus_tls_conn *last = tls_last_read.lookup(&id);

	if (!last || bpf_ktime_get_ns() - last->read > OTUS_TLS_LAST_READ_NS)
		return known;
	struct otus_tls_conn conn = *last;

	tls_last_read.delete(&id);
	if (known && same_conn(known, &conn))
		return known;
	conn.read = 0;
	conn.written = 0;
	conn.by_last_read = 1;
	tls_conns.update(session, &conn);
	return tls_conns.lookup(session);
}

static __always_inline int tls_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct otus_tls_call *found = tls_calls.lookup(&id);

	if (!found) {
		/* a call whose entry the full LRU gave to another thread: its bytes are missing */
		if (tls_process_wanted())
			tls_count(OTUS_TLS_CTR_UNTRACKED);
		return 0;
	}
	struct otus_tls_call call = *found;

	tls_calls.delete(&id);
	__u64 moved = tls_moved(ctx, &call);
	if (moved == 0)
		return 0;
	tls_count(OTUS_TLS_CTR_CALLS);
	struct otus_tls_session session = {.ssl = call.ssl, .pid = id >> 32};
	struct otus_tls_conn *conn = tls_conns.lookup(&session);
	if (!writes(call.call) && (!conn || conn->by_last_read))
		conn = pair_last_read(id, &session, conn);
	if (!conn) {
		tls_count(OTUS_TLS_CTR_UNPAIRED);
		return 0;
	}
	int write = writes(call.call);
	__u64 offset = write ? conn->written : conn->read;
	if (write)
		conn->written += moved;
	else
		conn->read += moved;
	if (!tls_port(conn->lport, conn->rport)) {
		tls_count(OTUS_TLS_CTR_OTHER_PORT);
		return 0;
	}
	__u32 zero = 0;
	struct otus_tls_sample *s = tls_scratch.lookup(&zero);
	if (!s)
		return 0;
	__u32 copy = moved < OTUS_TLS_DATA ? moved : OTUS_TLS_DATA;
	if (moved > OTUS_TLS_DATA)
		tls_count(OTUS_TLS_CTR_CUT);
	if (bpf_probe_read_user(s->data, copy, (void *)call.buf) < 0) {
		tls_count(OTUS_TLS_CTR_READ_FAILED);
		return 0;
	}
	struct otus_tls *t = &s->tls;
	t->offset = offset;
	t->pid = id >> 32;
	t->tid = (__u32)id;
	bpf_get_current_comm(t->comm, sizeof(t->comm));
	__builtin_memcpy(t->saddr, write ? conn->laddr : conn->raddr, 16);
	__builtin_memcpy(t->daddr, write ? conn->raddr : conn->laddr, 16);
	t->sport = write ? conn->lport : conn->rport;
	t->dport = write ? conn->rport : conn->lport;
	t->family = conn->family;
	t->call = call.call;
	t->pad[0] = t->pad[1] = 0;

	/* both directions of a connection on one shard: the same worker frames its streams */
	__u32 fold = 0;
#pragma unroll
	for (int i = 0; i < 16; i += 4)
		fold ^= *(__u32 *)&conn->laddr[i] ^ *(__u32 *)&conn->raddr[i];
	__u32 hash = mix32(fold ^ (conn->lport ^ conn->rport));
	__u32 shard = hash % OTUS_SHARDS;

	s->hdr.ts_ns = bpf_ktime_get_ns();
	s->hdr.ifindex = 0;
	s->hdr.orig_len = moved > 0xFFFFFFFF ? 0xFFFFFFFF : moved;
	s->hdr.cap_len = sizeof(struct otus_tls) + copy;
	s->hdr.flow_hash = hash;
	s->hdr.l3_offset = 0;
	s->hdr.l4_offset = 0;
	s->hdr.payload_offset = sizeof(struct otus_tls);
	s->hdr.direction = write ? OTUS_DIR_EGRESS : OTUS_DIR_INGRESS;
	s->hdr.kind = OTUS_KIND_TLS;
	s->hdr.l4_proto = IPPROTO_TCP;
	s->hdr.flags = conn->family == 6 ? OTUS_FLAG_IPV6 : 0;
	s->hdr.shard = shard;
	s->hdr.pad = 0;
	s->hdr.owner = 0;

	__u64 size = sizeof(struct otus_event) + sizeof(struct otus_tls) + copy;
	void *ring = rings.lookup(&shard);
	if (size <= sizeof(*s) && ring && bpf_ringbuf_output(ring, s, size, 0) == 0) {
		tls_count(OTUS_TLS_CTR_SUBMITTED);
		return 0;
	}
	tls_count(OTUS_TLS_CTR_SUBMIT_FAILED);
	return 0;
}

int otus_tls_return(struct pt_regs *ctx) { return tls_return(ctx); }

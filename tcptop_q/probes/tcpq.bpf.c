// tcpq-top eBPF side: per-listener counters aggregated in kernel maps, plus a
// bounded feed of TCP state transitions.
//
// No kernel struct is included: fields of struct sock / struct net are read at
// byte offsets resolved from BTF at start-up (TQ_OFF_* below), and tracepoint
// arguments through structs generated from the tracefs format files
// (struct tq_tp_*), so this text compiles against any Linux headers.
// The Python side (probes/bpf.py) prepends those definitions; `tcpq-top --ebpf`
// prints the result.
//
// Every program name starts with tq_ so `bpftool prog show` finds ours.

#include <linux/types.h>

#define TQ_TCP_ESTABLISHED 1
#define TQ_TCP_SYN_RECV 3
#define TQ_TCP_CLOSE 7
#define TQ_TCP_LISTEN 10
#define TQ_AF_INET 2
#define TQ_AF_INET6 10
#define TQ_IPPROTO_TCP 6

// tq_ctl slots (TQ_CTL_*), struct tq_event, event kinds and the histogram geometry
// are generated from probes/layout.py and prepended: one definition for C and Python.

struct tq_listener {
    u64 cookie;
    u32 netns;
    u16 family;
    u16 lport;
    u8 laddr[16];
    u64 queued;  // children that entered the accept queue (not accept() calls)
    u64 accepted;  // accept() calls that returned a child of this listener
    u64 wait_count;  // accepted children whose enqueue was seen: accept wait samples
    u64 wait_sum_ns;
    u64 wait_max_ns;
    u64 hs_count;  // handshake samples: first SYN-ACK sent -> child queued
    u64 hs_sum_ns;
    u64 hs_max_ns;
    u64 synack_retrans;
    u64 listen_overflow_drops;
    u64 other_rx_drops;
    u64 resets_sent;
    u64 resets_received;
    u64 syn_overflows;  // kprobe fallback only (tcp_conn_request), see fallbacks.bpf.c
    u32 max_ack_backlog;
    u32 _pad;
    u64 born_ns;  // when the probes first saw it: with the address, an identity a recycled
                  // struct sock cannot inherit (keys of tq_hist, tq_reasons, tq_child_states)
    u32 peak[2];  // deepest accept queue seen in read interval peak_epoch[i] (i = epoch & 1)
    u32 peak_epoch[2];
    u64 inode;  // its socket's inode (sock_diag's idiag_inode): joins rows whose cookie the
                // kernel had not generated yet (docs/ARCHITECTURE.md, identity); 0 if unknown
};

struct tq_reason_key {
    u64 sk;
    u64 born_ns;  // the listener's: a recycled address does not inherit its counts
    u32 reason;
    u32 _pad;
};

struct tq_port_key {
    u32 netns;
    u16 lport;
    u16 family;  // a child's family is its listener's: 0.0.0.0:P and [::]:P are two keys
};

// A child the probes followed from LISTEN -> SYN_RECV: its listener once it was queued
// (taken in the kernel at enqueue, probes/accept.bpf.c), and its tuple, which joins the
// sock_diag rows of a full dump. Deleted when it closes.
struct tq_child {
    u64 listener;  // key of tq_listeners; 0 until queued
    u64 born_ns;  // that listener's born_ns
    u32 netns;
    u16 lport;
    u16 rport;
    u16 family;
    u16 _pad[3];
    u8 laddr[16];
    u8 raddr[16];
};

// Children's states: per listener (sk, born_ns) once queued, per (netns, port) before
// (listener 0): how many entered minus left each state since the probes went live. User
// space adds these to the counts of its last full sock_diag dump (docs/ARCHITECTURE.md:
// transition counts, reconciled by dumps).
struct tq_cs_key {
    u64 listener;
    u64 born_ns;
    u32 netns;
    u16 lport;
    u16 _pad;
};

struct tq_child_states {
    s32 n[16];  // indexed by TCP state
};

// tq_since value: when the socket entered its current state, under feed generation gen
// (TQ_CTL_FEED_GEN, bumped at every feed change: an entry from before a pause or a
// narrowing may belong to a socket whose later changes, or close, were not seen).
struct tq_since_val {
    u64 ns;
    u64 gen;
};

// The socket whose CLOSE just ran on this CPU and its listener: tcp_close() and
// tcp_disconnect() move to CLOSE before they send the reset (its link is gone by then).
struct tq_closed {
    u64 child;
    u64 listener;
    u64 born_ns;
};

// child socket -> its own listener, taken in the kernel when the child is queued
// (probes/accept.bpf.c); marked accepted (listener 0) by accept() (or made so by a raced
// accept(): family TQ_LINK_EARLY, queued_ns its time), deleted when the child closes.
struct tq_link {
    u64 listener;  // the listener's struct sock address (key of tq_listeners)
    u64 queued_ns;  // CLOCK_MONOTONIC when it entered the accept queue
    u32 netns;
    u16 family;
    u16 rport;  // the child's peer, host byte order: joins with sock_diag rows
    u8 raddr[16];
};

struct tq_hist_key {
    u64 sk;  // listener
    u64 born_ns;  // its tq_listener.born_ns: entries of a closed listener at the same address do not match
    u32 hist;  // TQ_HIST_WAIT | TQ_HIST_HANDSHAKE
    u32 bucket;
};

// Keyed by the listener's struct sock address: one map update per event, no
// string work in the kernel. Identity fields travel in the value.
BPF_HASH(tq_listeners, u64, struct tq_listener, TQ_MAX_LISTENERS);
// The same counters per CPU (user space sums them with the shared entry's): a busy listener
// does not bounce one cache line between CPUs. Sized to a memory budget (probes/plan.py
// PCPU_BUDGET); a listener that finds it full counts in its tq_listeners entry instead.
BPF_PERCPU_HASH(tq_pcpu, u64, struct tq_listener, TQ_MAX_PCPU);
BPF_ARRAY(tq_zero, struct tq_listener, 1);  // never written: the zero value tq_pcpu entries start from
BPF_HASH(tq_reasons, struct tq_reason_key, u64, TQ_MAX_REASON_KEYS);
// (netns, local port, family) -> listener: a fallback for children the probes did not follow.
BPF_HASH(tq_by_port, struct tq_port_key, u64, TQ_MAX_LISTENERS);
// socket -> time it entered its current state (for ns_in_old).
// Per-CPU LRU lists: no global lock at storm rates.
BPF_F_TABLE("lru_hash", u64, struct tq_since_val, tq_since, TQ_MAX_SOCKETS, BPF_F_NO_COMMON_LRU);
// child socket -> its listener, from LISTEN->SYN_RECV to CLOSE.
BPF_F_TABLE("lru_hash", u64, struct tq_child, tq_child, TQ_MAX_SOCKETS, BPF_F_NO_COMMON_LRU);
BPF_HASH(tq_child_states, struct tq_cs_key, struct tq_child_states, 2 * TQ_MAX_LISTENERS);
BPF_PERCPU_HASH(tq_child_pcpu, struct tq_cs_key, struct tq_child_states, TQ_MAX_PCPU_CHILD);  // as tq_pcpu
BPF_PERCPU_ARRAY(tq_closed, struct tq_closed, 1);
BPF_F_TABLE("lru_hash", u64, struct tq_link, tq_link, TQ_MAX_SOCKETS, BPF_F_NO_COMMON_LRU);
BPF_HASH(tq_hist, struct tq_hist_key, u64, TQ_MAX_HIST_KEYS);
// The child whose SYN_RECV -> ESTABLISHED just ran on this CPU: its listener's
// sk_data_ready follows on the same CPU (tcp_child_process), probes/accept.bpf.c.
struct tq_stash {
    u64 child;
    u64 ns;
};
BPF_PERCPU_ARRAY(tq_stash, struct tq_stash, 1);
// [0] feed events lost (ring full), [1] events not counted because a map was full.
BPF_ARRAY(tq_ctl, u64, TQ_CTL_SLOTS);
BPF_PERCPU_ARRAY(tq_lost, u64, 2);
#if TQ_RINGBUF
BPF_RINGBUF_OUTPUT(tq_feed, TQ_FEED_PAGES);
#else
BPF_PERF_OUTPUT(tq_feed);
#endif

static __always_inline u64 tq_ctl_get(int slot)
{
    u64 *v = tq_ctl.lookup(&slot);
    return v ? *v : 0;
}

static __always_inline void tq_lost_slot(int slot)
{
    u64 *lost = tq_lost.lookup(&slot);
    if (lost)
        (*lost)++;
}

static __always_inline void tq_lost_one(void)
{
    tq_lost_slot(0);
}

static __always_inline u32 tq_netns(const void *sk)
{
#if TQ_HAVE_NETNS
    void *net = 0;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + TQ_OFF_SK_NET);
    if (!net)
        return 0;
    bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + TQ_OFF_NET_INUM);
    return inum;
#else
    return TQ_INIT_NETNS;
#endif
}

static __always_inline u8 tq_sk_state(const void *sk)
{
    u8 state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), (const char *)sk + TQ_OFF_SK_STATE);
    return state;
}

static __always_inline u16 tq_sk_family(const void *sk)
{
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), (const char *)sk + TQ_OFF_SK_FAMILY);
    return family;
}

static __always_inline u16 tq_sk_lport(const void *sk)
{
    u16 lport = 0;  // skc_num: host byte order
    bpf_probe_read_kernel(&lport, sizeof(lport), (const char *)sk + TQ_OFF_SK_NUM);
    return lport;
}

#ifdef TQ_OFF_SK_PROTOCOL
// Raw tracepoint programs (TQ_RTP_*) get TP_PROTO's arguments, not the trace-event record:
// they read what the record's TP_fast_assign reads, at BTF offsets.
static __always_inline u16 tq_sk_protocol(const void *sk)
{
    u16 proto = 0;
    bpf_probe_read_kernel(&proto, TQ_SZ_SK_PROTOCOL, (const char *)sk + TQ_OFF_SK_PROTOCOL);
    return proto;
}

// inet_sk(sk)->inet_sport, host byte order (the records' `sport`).
static __always_inline u16 tq_inet_sport(const void *sk)
{
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), (const char *)sk + TQ_OFF_INET_SPORT);
    return (port >> 8) | (u16)(port << 8);
}

static __always_inline u16 tq_sk_dport(const void *sk)
{
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), (const char *)sk + TQ_OFF_SK_DPORT);
    return (port >> 8) | (u16)(port << 8);
}

#endif

static __always_inline int tq_wanted(u32 netns, u16 lport)
{
#ifdef TQ_FILTER_NETNS
    if (netns != TQ_FILTER_NETNS)
        return 0;
#endif
#ifdef TQ_FILTER_PORT
    if (lport != TQ_FILTER_PORT)
        return 0;
#endif
    return 1;
}

static __always_inline u64 tq_sk_cookie(const void *sk)
{
    u64 cookie = 0;  // 0 until something (sock_diag) asks the kernel for it
    bpf_probe_read_kernel(&cookie, sizeof(cookie), (const char *)sk + TQ_OFF_SK_COOKIE);
    return cookie;
}

// The inode of sk's socket (SOCK_INODE: struct socket_alloc puts the inode after the
// socket), fixed from socket() on: what sock_diag reports as idiag_inode.
static __always_inline u64 tq_sk_inode(const void *sk)
{
    u64 ino = 0;
#ifdef TQ_OFF_SOCKET_INO
    const void *sock = 0;
    bpf_probe_read_kernel(&sock, sizeof(sock), (const char *)sk + TQ_OFF_SK_SOCKET);
    if (sock)
        bpf_probe_read_kernel(&ino, TQ_SZ_SOCKET_INO, (const char *)sock + TQ_OFF_SOCKET_INO);
#endif
    return ino;
}

// A new shared entry for listener sk (replacing one of a socket that had this address before).
static __always_inline struct tq_listener *tq_listener_new(const void *sk, u64 key, u64 cookie, int replace)
{
    u16 family = tq_sk_family(sk);
    if (family != TQ_AF_INET && family != TQ_AF_INET6)
        return 0;
    u32 netns = tq_netns(sk);
    u16 lport = tq_sk_lport(sk);
    if (!tq_wanted(netns, lport))
        return 0;
    struct tq_listener init = {};
    init.netns = netns;
    init.family = family;
    init.lport = lport;
    init.cookie = cookie;
    init.inode = tq_sk_inode(sk);
    if (family == TQ_AF_INET)
        bpf_probe_read_kernel(&init.laddr, 4, (const char *)sk + TQ_OFF_SK_RCV_SADDR);
    else
        bpf_probe_read_kernel(&init.laddr, 16, (const char *)sk + TQ_OFF_SK_V6_RCV_SADDR);
    bpf_probe_read_kernel(&init.max_ack_backlog, 4, (const char *)sk + TQ_OFF_SK_MAX_ACK_BACKLOG);
    init.born_ns = bpf_ktime_get_ns();
    if (replace)
        tq_listeners.update(&key, &init);  // per-CPU copies of the old one: tq_counters drops them
    else
        tq_listeners.insert(&key, &init);  // BPF_NOEXIST: a racing CPU may have won
    struct tq_port_key pk = {.netns = netns, .lport = lport, .family = family};
    tq_by_port.update(&pk, &key);
    struct tq_listener *l = tq_listeners.lookup(&key);
    if (!l)
        tq_lost_slot(1);  // map full: said in the notes, never shown as a zero
    return l;
}

// The shared entry of listener sk (identity, and the counters of listeners without
// per-CPU room), created on first sight; NULL if filtered out or sk is not a TCP listener.
// An entry whose cookie is not sk's is another socket's that had this address (its close
// was not seen): it starts over, never inherited.
static __always_inline struct tq_listener *tq_listener_shared(const void *sk)
{
    u64 key = (u64)sk;
    u64 cookie = tq_sk_cookie(sk);
    struct tq_listener *l = tq_listeners.lookup(&key);
    if (l) {
        if (l->cookie == cookie)
            return l;
        if (!l->cookie) {  // sock_diag generates it lazily: pick it up once it exists
            l->cookie = cookie;
            return l;
        }
        // Read again before calling it another socket: our read may predate the cookie's
        // generation that another CPU has since stored in l (a race that lost counts).
        if (!cookie && tq_sk_cookie(sk) == l->cookie)
            return l;
        return tq_listener_new(sk, key, cookie, 1);
    }
    return tq_listener_new(sk, key, cookie, 0);
}

// Where listener `key`'s counters go on this CPU: its tq_pcpu copy (identity copied from the
// shared entry, born_ns last: a program nesting on this CPU in between copies it again, and
// a live listener's counter is never reset), or the shared entry when tq_pcpu is full. Increments stay atomic:
// a program in softirq may interrupt another one on the same CPU.
static __always_inline struct tq_listener *tq_counters(u64 key, struct tq_listener *shared)
{
    if (!shared)
        return 0;
    struct tq_listener *c = tq_pcpu.lookup(&key);
    if (!c) {
        int zero = 0;
        struct tq_listener *z = tq_zero.lookup(&zero);
        if (!z)
            return shared;
        tq_pcpu.insert(&key, z);  // BPF_NOEXIST; this CPU's copy (the others start zeroed)
        c = tq_pcpu.lookup(&key);
        if (!c)
            return shared;  // full
    }
    if (c->born_ns != shared->born_ns) {
        if (c->born_ns) {
            // This CPU's copy still holds an earlier listener at this address (replaced, or its
            // close missed): start this CPU's slot over. Only this slot: deleting the entry
            // would take the new listener's counts on the other CPUs with it. (User space
            // never sums a copy whose born_ns is not its shared entry's.)
            int zero = 0;
            struct tq_listener *z = tq_zero.lookup(&zero);
            if (!z)
                return shared;
            __builtin_memcpy(c, z, sizeof(*c));
        }
        c->cookie = shared->cookie;
        c->netns = shared->netns;
        c->family = shared->family;
        c->lport = shared->lport;
        __builtin_memcpy(c->laddr, shared->laddr, 16);
        c->max_ack_backlog = shared->max_ack_backlog;
        c->inode = shared->inode;
        asm volatile("" ::: "memory");
        c->born_ns = shared->born_ns;
    }
    return c;
}

// The counters of listener sk on this CPU (see tq_counters); NULL if filtered out or sk is
// not a TCP listener.
static __always_inline struct tq_listener *tq_listener_of(const void *sk)
{
    return tq_counters((u64)sk, tq_listener_shared(sk));
}

// The counters of a listener already known by its key (NULL if unknown).
static __always_inline struct tq_listener *tq_listener_at(u64 key)
{
    return tq_counters(key, tq_listeners.lookup(&key));
}

// Peak accept queue of this read interval (user space bumps TQ_CTL_EPOCH at each read and
// collects the interval that just ended: probes/decode.py peak_of); no map update per tick.
static __always_inline void tq_peak_note(struct tq_listener *l, u32 depth)
{
    u32 epoch = (u32)tq_ctl_get(TQ_CTL_EPOCH);
    u32 i = epoch & 1;
    if (l->peak_epoch[i] != epoch) {
        l->peak[i] = depth;
        l->peak_epoch[i] = epoch;
    } else if (depth > l->peak[i]) {
        l->peak[i] = depth;
    }
}

// The head of struct sock_common (addresses, ports, state, netns pointer), read in
// one bpf_probe_read_kernel instead of one per field, where every field needed lies
// inside it (the layout has been so for years; the fallback reads field by field).
#define TQ_SKC_HEAD 96
#if TQ_OFF_SK_DADDR + 4 <= TQ_SKC_HEAD && TQ_OFF_SK_DPORT + 2 <= TQ_SKC_HEAD && TQ_OFF_SK_NUM + 2 <= TQ_SKC_HEAD && \
    TQ_OFF_SK_STATE + 1 <= TQ_SKC_HEAD && TQ_OFF_SK_FAMILY + 2 <= TQ_SKC_HEAD && TQ_OFF_SK_V6_DADDR + 16 <= TQ_SKC_HEAD && \
    TQ_OFF_SK_RCV_SADDR + 4 <= TQ_SKC_HEAD && TQ_OFF_SK_V6_RCV_SADDR + 16 <= TQ_SKC_HEAD && \
    (!TQ_HAVE_NETNS || TQ_OFF_SK_NET + 8 <= TQ_SKC_HEAD)
#define TQ_SKC_ONE_READ 1
#endif

struct tq_skc {
    u8 b[TQ_SKC_HEAD];
};

static __always_inline void tq_skc_read(struct tq_skc *h, const void *sk)
{
#ifdef TQ_SKC_ONE_READ
    bpf_probe_read_kernel(h, sizeof(*h), sk);
#else
    __builtin_memset(h, 0, sizeof(*h));
#endif
}

static __always_inline u16 tq_skc_lport(const struct tq_skc *h, const void *sk)
{
#ifdef TQ_SKC_ONE_READ
    return *(const u16 *)(h->b + TQ_OFF_SK_NUM);
#else
    return tq_sk_lport(sk);
#endif
}

static __always_inline u16 tq_skc_family(const struct tq_skc *h, const void *sk)
{
#ifdef TQ_SKC_ONE_READ
    return *(const u16 *)(h->b + TQ_OFF_SK_FAMILY);
#else
    return tq_sk_family(sk);
#endif
}

static __always_inline u8 tq_skc_state(const struct tq_skc *h, const void *sk)
{
#ifdef TQ_SKC_ONE_READ
    return h->b[TQ_OFF_SK_STATE];
#else
    return tq_sk_state(sk);
#endif
}

static __always_inline u16 tq_skc_rport(const struct tq_skc *h, const void *sk)
{
    u16 rport = 0;
#ifdef TQ_SKC_ONE_READ
    rport = *(const u16 *)(h->b + TQ_OFF_SK_DPORT);
#else
    bpf_probe_read_kernel(&rport, sizeof(rport), (const char *)sk + TQ_OFF_SK_DPORT);
#endif
    return (rport >> 8) | (u16)(rport << 8);
}

static __always_inline u32 tq_skc_netns(const struct tq_skc *h, const void *sk)
{
#if defined(TQ_SKC_ONE_READ) && TQ_HAVE_NETNS
    u32 inum = 0;
    const void *net = *(void *const *)(h->b + TQ_OFF_SK_NET);
    if (net)
        bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + TQ_OFF_NET_INUM);
    return inum;
#else
    return tq_netns(sk);
#endif
}

// 16 address bytes at offset off of the socket (4 of them for AF_INET).
static __always_inline void tq_skc_addr(u8 *dst, const struct tq_skc *h, const void *sk, u16 family, u32 off4,
                                        u32 off6)
{
#ifdef TQ_SKC_ONE_READ
    if (family == TQ_AF_INET) {
        if (off4 + 4 <= TQ_SKC_HEAD)
            __builtin_memcpy(dst, h->b + off4, 4);
    } else if (off6 + 16 <= TQ_SKC_HEAD) {
        __builtin_memcpy(dst, h->b + off6, 16);
    }
#else
    if (family == TQ_AF_INET)
        bpf_probe_read_kernel(dst, 4, (const char *)sk + off4);
    else
        bpf_probe_read_kernel(dst, 16, (const char *)sk + off6);
#endif
}

// This CPU's child state counts of `ck` (a listener, or a port), created when `create`; else the shared ones.
static __always_inline struct tq_child_states *tq_child_counts(struct tq_cs_key *ck, int create)
{
    struct tq_child_states *cs = tq_child_pcpu.lookup(ck);
    if (cs)
        return cs;
    if (create) {
        struct tq_child_states zero = {};
        tq_child_pcpu.insert(ck, &zero);
        cs = tq_child_pcpu.lookup(ck);
        if (cs)
            return cs;
        tq_child_states.insert(ck, &zero);
    }
    return tq_child_states.lookup(ck);
}

// The listener a child (or a socket that was one) belongs to, on this CPU: the one it was
// queued on (tq_child), the one whose child just closed on this CPU (tq_closed: resets on
// close), else the listener of its (netns, family, port), for children born before the
// probes went live or not followed (children off). lport 0: the socket's own, read only
// for that last lookup (reset_lport: the one the reset records carry, for the raw reset programs).
static __always_inline struct tq_listener *tq_listener_of_child_x(const void *sk, u16 lport, int reset_lport)
{
    u64 key = (u64)sk;
    u64 lkey = 0, born = 0;
    int linked = 0;
    struct tq_child *c = tq_child.lookup(&key);
    if (c) {
        lkey = c->listener;
        born = c->born_ns;
    } else {
        int zero = 0;
        struct tq_closed *cl = tq_closed.lookup(&zero);
        if (cl && cl->child == key) {
            lkey = cl->listener;
            born = cl->born_ns;
        }
    }
    if (lkey) {
        struct tq_listener *l = tq_listeners.lookup(&lkey);
        if (!l || l->born_ns != born)
            return 0;  // its listener closed
        return tq_counters(lkey, l);
    }
    struct tq_skc h;
    tq_skc_read(&h, sk);  // netns pointer, port, family, state: one read
    if (!lport) {
        lport = tq_skc_lport(&h, sk);
#ifdef TQ_OFF_SK_PROTOCOL
        u8 state = tq_skc_state(&h, sk);
        if (reset_lport && state != 6 && state != 12) {
            // A full socket: inet_sport, as the reset records carry; skc_num for request and
            // timewait sockets (not sk_fullsock()), whose packet's destination the 6.10+ record reads.
            u16 sport = tq_inet_sport(sk);
            if (sport)
                lport = sport;
        }
#endif
    }
    struct tq_port_key pk = {.netns = tq_skc_netns(&h, sk), .lport = lport, .family = tq_skc_family(&h, sk)};
    u64 *owner = tq_by_port.lookup(&pk);
    if (!owner)
        return 0;
    return tq_listener_at(*owner);
}

static __always_inline struct tq_listener *tq_listener_of_child(const void *sk, u16 lport)
{
    return tq_listener_of_child_x(sk, lport, 0);
}

// The child `child` was just queued on listener `lsk`: from now on its state changes count
// for that listener (tq_child_states), and its resets go to it. Called from tq_link_child
// (probes/accept.bpf.c).
// h: the child's sock_common head, read by the caller (tq_skc_read).
static __always_inline void tq_child_linked(u64 child, u64 lsk, const struct tq_listener *l, const struct tq_skc *h)
{
    if (tq_ctl_get(TQ_CTL_CHILDREN_OFF))
        return;  // no child entries kept: no lookup per enqueue
    struct tq_child *c = tq_child.lookup(&child);
    if (!c || c->listener)
        return;  // not followed (born before live, children off), or linked already
    c->listener = lsk;
    c->born_ns = l->born_ns;
    const void *csk = (const void *)child;
    c->rport = tq_skc_rport(h, csk);
    c->family = l->family;
    tq_skc_addr(c->laddr, h, csk, l->family, TQ_OFF_SK_RCV_SADDR, TQ_OFF_SK_V6_RCV_SADDR);
    tq_skc_addr(c->raddr, h, csk, l->family, TQ_OFF_SK_DADDR, TQ_OFF_SK_V6_DADDR);
    u8 state = tq_skc_state(h, csk) & 15;
    struct tq_cs_key pk = {.netns = c->netns, .lport = c->lport};
    struct tq_cs_key lk = {.listener = lsk, .born_ns = l->born_ns, .netns = c->netns, .lport = c->lport};
    struct tq_child_states *to = tq_child_counts(&lk, 1);
    struct tq_child_states *from = tq_child_counts(&pk, 0);
    if (to)
        __sync_fetch_and_add(&to->n[state], 1);
    else
        tq_lost_slot(1);
    if (from)  // user space may have swept it (a port without a listener entry at a read)
        __sync_fetch_and_add(&from->n[state], -1);
}


// ------------------------------------------------------------ sock:inet_sock_set_state

#ifdef TQ_HAVE_SET_STATE
// One transition, from either entry below. `args` is the classic record, or NULL from the raw
// tracepoint (then addresses are read from the socket, as the record's TP_fast_assign does).
// The ports are read from the socket only on the paths that need them (each read is a helper call).
#ifdef TQ_RTP_SET_STATE
#define TQ_SS_PORT(field, raw) (args ? args->field : (raw))
#else
#define TQ_SS_PORT(field, raw) (args->field)
#endif
#define TQ_SS_SPORT TQ_SS_PORT(sport, tq_inet_sport(sk))
#define TQ_TCP_SYN_SENT 2

// Whether transition oldstate -> newstate has any work in the current mode, decided from the
// tracepoint's own arguments and two array slots before any helper call: with the feed off
// (`--batch`, or the TUI's feed paused) and child counts off, most of a storm's transitions
// (a client's connect, the FIN_WAIT steps of an active close, a child's LISTEN -> SYN_RECV)
// have none. What remains: listeners made and closed, every CLOSE (links, child entries and
// the closed note dropped on every path) and SYN_RECV -> ESTABLISHED (the enqueue's note).
static __always_inline int tq_ss_needed(int oldstate, int newstate)
{
    if (newstate == TQ_TCP_LISTEN || newstate == TQ_TCP_CLOSE)
        return 1;
#ifdef TQ_HAVE_LINK
    if (oldstate == TQ_TCP_SYN_RECV && newstate == TQ_TCP_ESTABLISHED)
        return 1;
#endif
    if (tq_ctl_get(TQ_CTL_FEED_MODE))
        return 1;
    // Child counts: a socket leaving SYN_SENT is a client's (connect), never a listener's child.
    return !tq_ctl_get(TQ_CTL_CHILDREN_OFF) && oldstate != TQ_TCP_SYN_SENT;
}
#define TQ_SS_DPORT TQ_SS_PORT(dport, tq_sk_dport(sk))
static __always_inline int tq_on_set_state(void *ctx, const struct tq_tp_inet_sock_set_state *args,
                                           const void *sk, int oldstate, int newstate)
{
#ifdef TQ_FILTER_PORT
    u16 fsport = TQ_SS_SPORT, fdport = TQ_SS_DPORT;
    if (fsport != TQ_FILTER_PORT && fdport != TQ_FILTER_PORT)
        return 0;
#endif
    u64 key = (u64)sk;

    if (newstate == TQ_TCP_LISTEN) {
        tq_listener_shared(sk);  // per-CPU copies come with the first count
    } else if (oldstate == TQ_TCP_LISTEN && newstate == TQ_TCP_CLOSE) {
        // The address may be reused by the next socket: forget this listener.
        struct tq_port_key pk = {.netns = tq_netns(sk), .lport = TQ_SS_SPORT, .family = tq_sk_family(sk)};
        u64 *owner = tq_by_port.lookup(&pk);
        if (owner && *owner == key)
            tq_by_port.delete(&pk);
        tq_listeners.delete(&key);
        tq_pcpu.delete(&key);
    }

#ifdef TQ_HAVE_LINK
    if (newstate == TQ_TCP_CLOSE && oldstate != TQ_TCP_LISTEN)
        tq_link.delete(&key);  // closed before accept(): the address may be reused
    if (oldstate == TQ_TCP_SYN_RECV && newstate == TQ_TCP_ESTABLISHED) {
        int zero = 0;
        struct tq_stash *st = tq_stash.lookup(&zero);
        if (st) {
            st->child = key;
            st->ns = bpf_ktime_get_ns();
        }
    }
#endif

    // Child -> listener: counted whatever the feed does, unless user space said it
    // does not need them (two hash operations per transition at storm rates).
    if (tq_ctl_get(TQ_CTL_CHILDREN_OFF)) {
        // nothing
    } else if (oldstate == TQ_TCP_LISTEN && newstate == TQ_TCP_SYN_RECV) {
        // The tuple is read at enqueue (tq_child_linked): the clone's addresses are set after
        // this state change on some kernels (6.1), so neither the record nor the socket has them yet.
        struct tq_child c = {.netns = tq_netns(sk), .lport = TQ_SS_SPORT};
        if (!tq_wanted(c.netns, c.lport))
            return 0;
        tq_child.update(&key, &c);
        struct tq_cs_key ck = {.netns = c.netns, .lport = c.lport};
        struct tq_child_states *cs = tq_child_counts(&ck, 1);
        if (cs)
            __sync_fetch_and_add(&cs->n[TQ_TCP_SYN_RECV], 1);
        else
            tq_lost_slot(1);
    } else {
        // A socket leaving SYN_SENT is a client's: no child entry to look up (its CLOSE ->
        // SYN_SENT dropped any stale one at its address).
        struct tq_child *c = oldstate == TQ_TCP_SYN_SENT ? 0 : tq_child.lookup(&key);
        u64 lsk = 0, born = 0;
        if (c && oldstate == TQ_TCP_CLOSE) {
            tq_child.delete(&key);  // a new socket at the address of one whose close was not seen
        } else if (c) {
            lsk = c->listener;
            born = c->born_ns;
            struct tq_cs_key ck = {.listener = lsk, .born_ns = born, .netns = c->netns, .lport = c->lport};
            struct tq_child_states *cs = tq_child_counts(&ck, 0);
            if (cs) {
                __sync_fetch_and_add(&cs->n[oldstate & 15], -1);
                if (newstate != TQ_TCP_CLOSE)  // nobody reads n[CLOSE]: a closed child is gone
                    __sync_fetch_and_add(&cs->n[newstate & 15], 1);
            }
            if (newstate == TQ_TCP_CLOSE)
                tq_child.delete(&key);
        }
        if (newstate == TQ_TCP_CLOSE) {
            // Every socket that closes, child or not: a reset it sends next is its own
            // listener's, and never an earlier socket's at this address.
            int zero = 0;
            struct tq_closed *cl = tq_closed.lookup(&zero);
            if (cl) {
                cl->child = key;
                cl->listener = lsk;
                cl->born_ns = born;
            }
        }
    }

    // Everything below serves the feed only: at storm rates with the feed off
    // (or limited to one port) a transition costs two array lookups.
    u64 mode = tq_ctl_get(TQ_CTL_FEED_MODE);
    if (mode == 0)
        return 0;
    u16 sport = TQ_SS_SPORT, dport = TQ_SS_DPORT;
    if (mode == 2) {
        u64 port = tq_ctl_get(TQ_CTL_FEED_PORT);
        if (sport != port && dport != port)
            return 0;
    }
    u32 netns = tq_netns(sk);
#ifdef TQ_FILTER_NETNS
    if (netns != TQ_FILTER_NETNS)
        return 0;
#endif
    u64 now = bpf_ktime_get_ns();
    u64 ns_in_old = ~0ULL;  // unknown: the previous change happened while we were not looking
    u64 gen = tq_ctl_get(TQ_CTL_FEED_GEN);
    if (oldstate != TQ_TCP_LISTEN) {  // a child inherits LISTEN from its parent
        struct tq_since_val *since = tq_since.lookup(&key);
        if (since && since->gen == gen && now >= since->ns)
            ns_in_old = now - since->ns;
    }
    if (newstate == TQ_TCP_CLOSE) {
        tq_since.delete(&key);
    } else {
        struct tq_since_val sv = {.ns = now, .gen = gen};
        tq_since.update(&key, &sv);
    }

#if TQ_RINGBUF
    struct tq_event *ev = tq_feed.ringbuf_reserve(sizeof(struct tq_event));
    if (!ev) {
        tq_lost_one();
        return 0;
    }
#else
    struct tq_event evs = {};
    struct tq_event *ev = &evs;
#endif
    ev->ts_ns = now;
    ev->skaddr = key;
    ev->ns_in_old = ns_in_old;
    ev->netns = netns;
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->fd = TQ_NO_FD;
    ev->kind = TQ_EV_STATE;
    ev->sport = sport;
    ev->dport = dport;
    ev->oldstate = oldstate;
    ev->newstate = newstate;
    if (args) {
        ev->family = args->family;
        if (args->family == TQ_AF_INET) {
            __builtin_memcpy(ev->saddr, args->saddr, 4);
            __builtin_memcpy(ev->daddr, args->daddr, 4);
            __builtin_memset(ev->saddr + 4, 0, 12);
            __builtin_memset(ev->daddr + 4, 0, 12);
        } else {
            __builtin_memcpy(ev->saddr, args->saddr_v6, 16);
            __builtin_memcpy(ev->daddr, args->daddr_v6, 16);
        }
    }
#ifdef TQ_RTP_SET_STATE
    else {
        ev->family = tq_sk_family(sk);
        __builtin_memset(ev->saddr, 0, 16);
        __builtin_memset(ev->daddr, 0, 16);
        if (ev->family == TQ_AF_INET) {
            bpf_probe_read_kernel(ev->saddr, 4, (const char *)sk + TQ_OFF_INET_SADDR);
            bpf_probe_read_kernel(ev->daddr, 4, (const char *)sk + TQ_OFF_SK_DADDR);
        } else {
            bpf_probe_read_kernel(ev->saddr, 16, (const char *)sk + TQ_OFF_SK_V6_RCV_SADDR);
            bpf_probe_read_kernel(ev->daddr, 16, (const char *)sk + TQ_OFF_SK_V6_DADDR);
        }
    }
#endif
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
#if TQ_RINGBUF
    tq_feed.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);  // user space polls once per tick: no wakeups
#else
    if (tq_feed.perf_submit(ctx, ev, sizeof(*ev)) < 0)
        tq_lost_one();
#endif
    return 0;
}

int tq_set_state(struct tq_tp_inet_sock_set_state *args)
{
#ifdef TQ_TP_SET_STATE_HAS_PROTOCOL
    if (args->protocol != TQ_IPPROTO_TCP)
        return 0;
#endif
    if (!tq_ss_needed(args->oldstate, args->newstate))
        return 0;
    return tq_on_set_state(args, args, (const void *)args->skaddr, args->oldstate, args->newstate);
}

#ifdef TQ_RTP_SET_STATE
// raw tracepoint: TP_PROTO(const struct sock *sk, const int oldstate, const int newstate),
// positions from the kernel's btf_trace_inet_sock_set_state (probes/plan.py).
int tq_r_set_state(struct bpf_raw_tracepoint_args *ctx)
{
    int oldstate = (int)ctx->args[TQ_RTP_SET_STATE_OLD], newstate = (int)ctx->args[TQ_RTP_SET_STATE_NEW];
    if (!tq_ss_needed(oldstate, newstate))
        return 0;  // before the protocol read: the states are arguments
    const void *sk = (const void *)ctx->args[TQ_RTP_SET_STATE_SK];
    if (tq_sk_protocol(sk) != TQ_IPPROTO_TCP)
        return 0;
    return tq_on_set_state(ctx, 0, sk, oldstate, newstate);
}
#endif
#endif

// Children queued, the child -> listener link and accept(): probes/accept.bpf.c (appended).

// ------------------------------------------------------------ drops charged to a listener

#ifdef TQ_HAVE_KFREE_SKB
static __always_inline int tq_on_kfree_skb(const void *sk, u32 reason)
{
    if (!sk)
        return 0;
    if (tq_sk_state(sk) != TQ_TCP_LISTEN)
        return 0;
    struct tq_listener *l = tq_listener_of(sk);
    if (!l)
        return 0;
#ifdef TQ_HAVE_DROP_REASON
#ifdef TQ_REASON_LISTEN_OVERFLOW
    if (reason == TQ_REASON_LISTEN_OVERFLOW)
        __sync_fetch_and_add(&l->listen_overflow_drops, 1);
    else
#endif
        __sync_fetch_and_add(&l->other_rx_drops, 1);
    struct tq_reason_key rk = {.sk = (u64)sk, .born_ns = l->born_ns, .reason = reason};
    u64 *count = tq_reasons.lookup(&rk);
    if (!count) {
        u64 zero = 0;
        tq_reasons.insert(&rk, &zero);  // BPF_NOEXIST: a racing CPU's entry (and its count) stays
        count = tq_reasons.lookup(&rk);
    }
    if (count)
        __sync_fetch_and_add(count, 1);
    else
        tq_lost_slot(1);
#else
    __sync_fetch_and_add(&l->other_rx_drops, 1);
#endif
    return 0;
}

int tq_kfree_skb(struct tq_tp_kfree_skb *args)
{
#ifdef TQ_HAVE_DROP_REASON
    return tq_on_kfree_skb((const void *)args->rx_sk, args->reason);
#else
    return tq_on_kfree_skb((const void *)args->rx_sk, 0);
#endif
}

#ifdef TQ_RTP_KFREE_SKB
// raw tracepoint: TP_PROTO(skb, location, reason, rx_sk), positions from btf_trace_kfree_skb.
int tq_r_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef TQ_RTP_KFREE_SKB_REASON
    return tq_on_kfree_skb((const void *)ctx->args[TQ_RTP_KFREE_SKB_RX_SK], (u32)ctx->args[TQ_RTP_KFREE_SKB_REASON]);
#else
    return tq_on_kfree_skb((const void *)ctx->args[TQ_RTP_KFREE_SKB_RX_SK], 0);
#endif
}
#endif
#endif

// ------------------------------------------------------------ SYN-ACK retransmits

#ifdef TQ_HAVE_RETRANSMIT_SYNACK
static __always_inline int tq_on_synack(const void *sk)
{
    if (tq_sk_state(sk) != TQ_TCP_LISTEN)
        return 0;
    struct tq_listener *l = tq_listener_of(sk);
    if (l)
        __sync_fetch_and_add(&l->synack_retrans, 1);
    return 0;
}

int tq_synack(struct tq_tp_tcp_retransmit_synack *args)
{
    return tq_on_synack((const void *)args->skaddr);
}

#ifdef TQ_RTP_SYNACK
int tq_r_synack(struct bpf_raw_tracepoint_args *ctx)
{
    return tq_on_synack((const void *)ctx->args[TQ_RTP_SYNACK_SK]);
}
#endif
#endif

// ------------------------------------------------------------ resets

// A listener's own resets, or a child's charged to its own listener (tq_listener_of_child).
// lport comes from the tracepoint when it has one: a socket that has just gone
// to CLOSE (reset on close with unread data) has already released skc_num.
static __always_inline struct tq_listener *tq_listener_for_reset(const void *sk, u16 lport)
{
    if (!sk)
        return 0;
    if (tq_sk_state(sk) == TQ_TCP_LISTEN)
        return tq_listener_of(sk);
    return tq_listener_of_child(sk, lport);
}

#ifdef TQ_HAVE_SEND_RESET
int tq_send_reset(struct tq_tp_tcp_send_reset *args)
{
#if defined(TQ_SEND_RESET_HAS_SPORT)
    u16 lport = args->sport;
#elif defined(TQ_SEND_RESET_SOCKADDR)
    u16 lport = ((u16)args->saddr[2] << 8) | args->saddr[3];  // struct sockaddr_in{,6}: port at 2, big endian
#else
    u16 lport = 0;
#endif
    struct tq_listener *l = tq_listener_for_reset((const void *)args->skaddr, lport);
    if (l)
        __sync_fetch_and_add(&l->resets_sent, 1);
    return 0;
}

#ifdef TQ_RTP_SEND_RESET
// raw tracepoint: TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, reason]); sk may be NULL.
int tq_r_send_reset(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[TQ_RTP_SEND_RESET_SK];
    if (!sk)
        return 0;
    // One state read; the local port only if the by-port lookup needs it.
    struct tq_listener *l = tq_sk_state(sk) == TQ_TCP_LISTEN ? tq_listener_of(sk) : tq_listener_of_child_x(sk, 0, 1);
    if (l)
        __sync_fetch_and_add(&l->resets_sent, 1);
    return 0;
}
#endif
#endif

#ifdef TQ_HAVE_RECEIVE_RESET
int tq_recv_reset(struct tq_tp_tcp_receive_reset *args)
{
#ifdef TQ_RECEIVE_RESET_HAS_SPORT
    u16 lport = args->sport;
#else
    u16 lport = 0;
#endif
    struct tq_listener *l = tq_listener_for_reset((const void *)args->skaddr, lport);
    if (l)
        __sync_fetch_and_add(&l->resets_received, 1);
    return 0;
}

#ifdef TQ_RTP_RECV_RESET
int tq_r_recv_reset(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[TQ_RTP_RECV_RESET_SK];
    if (!sk)
        return 0;
    // One state read; the local port only if the by-port lookup needs it.
    struct tq_listener *l = tq_sk_state(sk) == TQ_TCP_LISTEN ? tq_listener_of(sk) : tq_listener_of_child_x(sk, 0, 1);
    if (l)
        __sync_fetch_and_add(&l->resets_received, 1);
    return 0;
}
#endif
#endif

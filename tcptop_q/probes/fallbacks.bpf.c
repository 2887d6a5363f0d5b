// tcpq-top kprobe fallbacks, appended after tcpq.bpf.c when a tracepoint (or a
// tracepoint field) is missing and the kernel has kprobes (probes/kprobes.py
// chooses them from kallsyms; docs/COMPATIBILITY.md says where each serves).
//
// Uses tq_listener_of / tq_sk_state from tcpq.bpf.c, tq_child_queued from accept.bpf.c. Struct
// fields are read at BTF offsets (TQ_OFF_*) with BTF sizes (TQ_SZ_*), never
// through kernel headers, even where matching headers exist.

#include <uapi/linux/ptrace.h>

#define TQ_ETH_P_IP_BE 0x0008  // htons(ETH_P_IP) as read from a little-endian __be16

static __always_inline u32 tq_fb_read(const void *p, int size)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, size, p);  // little-endian: the low `size` bytes
    return v;
}

// sk_acceptq_is_full(): sk_ack_backlog > sk_max_ack_backlog (the queue holds limit+1).
static __always_inline int tq_fb_acceptq_full(const void *sk)
{
    u32 depth = tq_fb_read((const char *)sk + TQ_OFF_SK_ACK_BACKLOG, TQ_SZ_SK_ACK_BACKLOG);
    u32 limit = tq_fb_read((const char *)sk + TQ_OFF_SK_MAX_ACK_BACKLOG, TQ_SZ_SK_MAX_ACK_BACKLOG);
    return depth > limit;
}

// ------------------------------------------------------------ children queued / peak depth

#ifdef TQ_KP_DEF_READABLE
// sock_def_readable(sk): where sock:sk_data_ready fires on 6.3+. On a listener it
// runs once per child queued (tcp_child_process, fast open, migration), after the
// enqueue: sk_ack_backlog already counts the child, as with the tracepoint.
int tq_kp_def_readable(struct pt_regs *ctx)
{
    const void *sk = (const void *)PT_REGS_PARM1(ctx);
    if (tq_sk_state(sk) != TQ_TCP_LISTEN)
        return 0;
    tq_child_queued(sk);
    return 0;
}
#endif

// ------------------------------------------------------------ third-ACK overflows

#ifdef TQ_KP_SYN_RECV
// tcp_v{4,6}_syn_recv_sock(sk = listener, skb, req, ...): the accept-queue test
// is their first statement; entry with the queue full is one ListenOverflows.
static __always_inline void tq_fb_third_ack(const void *sk)
{
    if (!tq_fb_acceptq_full(sk))
        return;
    struct tq_listener *l = tq_listener_of(sk);
    if (l)
        __sync_fetch_and_add(&l->listen_overflow_drops, 1);
}

int tq_kp_syn_recv4(struct pt_regs *ctx)
{
    tq_fb_third_ack((const void *)PT_REGS_PARM1(ctx));
    return 0;
}

#ifdef TQ_OFF_SKB_PROTOCOL
int tq_kp_syn_recv6(struct pt_regs *ctx)
{
    const void *skb = (const void *)PT_REGS_PARM2(ctx);
    u16 proto = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), (const char *)skb + TQ_OFF_SKB_PROTOCOL);
    if (proto == TQ_ETH_P_IP_BE)  // IPv4 on a dual-stack socket: passed on to tcp_v4_syn_recv_sock
        return 0;
    tq_fb_third_ack((const void *)PT_REGS_PARM1(ctx));
    return 0;
}
#endif
#endif

// ------------------------------------------------------------ SYN-path overflows

#ifdef TQ_KP_CONN_REQUEST
// tcp_conn_request(rsk_ops, af_ops, sk = listener, skb). In order it drops the
// SYN when (syncookies == 2 || SYN queue full) && !tw_isn && !syncookies
// (TCPReqQFullDrop), then when the accept queue is full (ListenOverflows).
// The SYN-queue test is `qlen > max` on 6.1 (`>=` on older kernels): the two
// differ only when both queues are full with syncookies off, at qlen == max.
int tq_kp_conn_request(struct pt_regs *ctx)
{
    const void *sk = (const void *)PT_REGS_PARM3(ctx);
    if (!tq_fb_acceptq_full(sk))
        return 0;
    if (tq_sk_state(sk) != TQ_TCP_LISTEN)
        return 0;
#if TQ_HAVE_NETNS
    void *net = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + TQ_OFF_SK_NET);
    u32 syncookies = net ? tq_fb_read((const char *)net + TQ_OFF_NET_SYNCOOKIES, TQ_SZ_NET_SYNCOOKIES) : 1;
#else
    u32 syncookies = 1;  // no struct net offsets: assume the default (on)
#endif
    if (!syncookies) {
        u32 tw_isn = 0;
#ifdef TQ_OFF_SKB_TW_ISN
        const void *skb = (const void *)PT_REGS_PARM4(ctx);
        tw_isn = tq_fb_read((const char *)skb + TQ_OFF_SKB_TW_ISN, 4);
#endif
        s32 qlen = (s32)tq_fb_read((const char *)sk + TQ_OFF_ICSK_QLEN, 4);
        u32 limit = tq_fb_read((const char *)sk + TQ_OFF_SK_MAX_ACK_BACKLOG, TQ_SZ_SK_MAX_ACK_BACKLOG);
        if (!tw_isn && qlen > 0 && (u32)qlen > limit)
            return 0;  // TCPReqQFullDrop, not an overflow
    }
    struct tq_listener *l = tq_listener_of(sk);
    if (l)
        __sync_fetch_and_add(&l->syn_overflows, 1);
    return 0;
}
#endif

// tcpq-top eBPF side, the application's half of the accept queue: children
// queued (and the peak depth), the child -> listener link taken at enqueue,
// accept() returning a child, accept wait and handshake histograms.
// Appended after tcpq.bpf.c (uses its maps and helpers); docs/ACCEPT.md says
// what each number means and where the kernel cannot tell.

// ------------------------------------------------------------ histograms

static __always_inline u32 tq_log2(u64 v)
{
    u32 r = 0;
    if (v >> 32) { v >>= 32; r += 32; }
    if (v >> 16) { v >>= 16; r += 16; }
    if (v >> 8) { v >>= 8; r += 8; }
    if (v >> 4) { v >>= 4; r += 4; }
    if (v >> 2) { v >>= 2; r += 2; }
    if (v >> 1) { r += 1; }
    return r;
}

// Log2 octaves of microseconds with 2^TQ_HIST_SUB_BITS linear sub-buckets each;
// the same function in Python: probes/layout.py bucket_of().
static __always_inline u32 tq_hist_bucket(u64 us)
{
    if (us < (1 << TQ_HIST_SUB_BITS))
        return (u32)us;
    u32 octave = tq_log2(us);
    if (octave >= TQ_HIST_OCTAVES)
        return TQ_HIST_BUCKETS - 1;
    u32 sub = (us >> (octave - TQ_HIST_SUB_BITS)) & ((1 << TQ_HIST_SUB_BITS) - 1);
    return (octave - TQ_HIST_SUB_BITS + 1) * (1 << TQ_HIST_SUB_BITS) + sub;
}

// One sample into listener sk's histogram `hist`, plus count, sum and max.
// Lookup-or-init then atomic adds: no increment is lost to a racing CPU. The max
// is a compare-and-store: two CPUs racing on a new maximum can keep the smaller.
static __always_inline void tq_hist_add(u64 sk, u64 born_ns, u32 hist, u64 ns, u64 *count, u64 *sum, u64 *max)
{
    struct tq_hist_key hk = {.sk = sk, .born_ns = born_ns, .hist = hist, .bucket = tq_hist_bucket(ns / 1000)};
    u64 *n = tq_hist.lookup(&hk);
    if (!n) {
        u64 zero = 0;
        tq_hist.insert(&hk, &zero);  // BPF_NOEXIST: a racing CPU may have created it
        n = tq_hist.lookup(&hk);
    }
    if (!n) {
        tq_lost_slot(1);
        return;
    }
    __sync_fetch_and_add(n, 1);
    __sync_fetch_and_add(count, 1);
    __sync_fetch_and_add(sum, ns);
    if (ns > *max)
        *max = ns;
}

// ------------------------------------------------------------ children queued / peak depth

#ifdef TQ_HAVE_LINK
#define TQ_STASH_MAX_NS 10000000ULL  // 10 ms: microseconds natively, far more under emulation

// The child just queued on listener sk: the one whose SYN_RECV -> ESTABLISHED ran on
// this CPU right before (tcp_child_process: enqueue, the child's state change, then
// the listener's sk_data_ready, all on one CPU), checked against the listener's netns
// and port; else the accept queue's tail (fast open children, which are queued at the
// SYN). The tail alone can be wrong: another CPU may accept() or append in between.
static __always_inline void tq_link_child(const void *sk, struct tq_listener *l, u64 now)
{
    const void *child = 0, *req = 0, *tail_child = 0;
    u64 queued_ns = now;
    int zero = 0;
    struct tq_stash *st = tq_stash.lookup(&zero);
    if (st && st->child && now >= st->ns && now - st->ns < TQ_STASH_MAX_NS) {
        const void *c = (const void *)st->child;
        if (tq_sk_lport(c) == l->lport && tq_netns(c) == l->netns) {
            child = c;
            queued_ns = st->ns;  // the child's SYN_RECV -> ESTABLISHED
        }
    }
    if (st)
        st->child = 0;
    bpf_probe_read_kernel(&req, sizeof(req), (const char *)sk + TQ_OFF_ICSK_ACCEPT_TAIL);
    if (req)
        bpf_probe_read_kernel(&tail_child, sizeof(tail_child), (const char *)req + TQ_OFF_REQ_SK);
    if (!child)
        child = tail_child;
    if (!child)
        return;
    struct tq_link link = {.listener = (u64)sk, .queued_ns = queued_ns, .netns = l->netns, .family = l->family};
    u16 rport = 0;
    bpf_probe_read_kernel(&rport, sizeof(rport), (const char *)child + TQ_OFF_SK_DPORT);
    link.rport = (rport >> 8) | (u16)(rport << 8);
    if (l->family == TQ_AF_INET)
        bpf_probe_read_kernel(&link.raddr, 4, (const char *)child + TQ_OFF_SK_DADDR);
    else
        bpf_probe_read_kernel(&link.raddr, 16, (const char *)child + TQ_OFF_SK_V6_DADDR);
    u64 ckey = (u64)child;
    tq_link.update(&ckey, &link);
    tq_child_linked(ckey, (u64)sk, l);
#ifdef TQ_OFF_TREQ_SNT_SYNACK
    // tcp_rsk(req)->snt_synack: when the first SYN-ACK left (tcp_clock_us, the same
    // CLOCK_MONOTONIC as bpf_ktime_get_ns); 0 when unknown (e.g. syncookies). Only
    // when the tail is this child: otherwise its request is not at hand (no sample).
    u64 snt_us = 0;
    if (req && tail_child == child)
        bpf_probe_read_kernel(&snt_us, sizeof(snt_us), (const char *)req + TQ_OFF_TREQ_SNT_SYNACK);
    if (snt_us && queued_ns / 1000 >= snt_us)
        tq_hist_add((u64)sk, l->born_ns, TQ_HIST_HANDSHAKE, queued_ns - snt_us * 1000, &l->hs_count, &l->hs_sum_ns,
                    &l->hs_max_ns);
#endif
}
#endif

static __always_inline void tq_child_queued(const void *sk)
{
    struct tq_listener *l = tq_listener_of(sk);
    if (!l)
        return;
    __sync_fetch_and_add(&l->queued, 1);
#ifdef TQ_HAVE_LINK
    tq_link_child(sk, l, bpf_ktime_get_ns());
#endif
    u32 depth = 0;
    bpf_probe_read_kernel(&depth, sizeof(depth), (const char *)sk + TQ_OFF_SK_ACK_BACKLOG);
    tq_peak_note(l, depth);
}

#ifdef TQ_HAVE_SK_DATA_READY
int tq_data_ready(struct tq_tp_sk_data_ready *args)
{
#ifdef TQ_TP_DATA_READY_HAS_PROTOCOL
    if (args->protocol != TQ_IPPROTO_TCP)
        return 0;
#endif
    const void *sk = (const void *)args->skaddr;
    if (tq_sk_state(sk) != TQ_TCP_LISTEN)
        return 0;
    tq_child_queued(sk);
    return 0;
}

#ifdef TQ_RTP_DATA_READY
// raw tracepoint: TP_PROTO(const struct sock *sk), from btf_trace_sk_data_ready (probes/plan.py).
int tq_r_data_ready(struct bpf_raw_tracepoint_args *ctx)
{
    const void *sk = (const void *)ctx->args[TQ_RTP_DATA_READY_SK];
    // state first: most calls are data on connected sockets (one read, then out)
    if (tq_sk_state(sk) != TQ_TCP_LISTEN || tq_sk_protocol(sk) != TQ_IPPROTO_TCP)
        return 0;
    tq_child_queued(sk);
    return 0;
}
#endif
#endif

// Where sock:sk_data_ready is missing, fallbacks.bpf.c (appended) calls
// tq_child_queued from a kprobe on sock_def_readable.

// ------------------------------------------------------------ accept() returned a child

#if defined(TQ_HAVE_ACCEPT_SYSCALL) || defined(TQ_KRP_CSK_ACCEPT)
#if TQ_RINGBUF
// "accepted by pid N (fd M) after X ms" for the child's timeline; ring buffer only
// (before 5.8 the feed is a perf buffer and timelines go without this line).
static __always_inline void tq_feed_accept(const void *child, struct tq_link *link, u64 now, u32 fd)
{
    u64 mode = tq_ctl_get(TQ_CTL_FEED_MODE);
    if (mode == 0)
        return;
    u16 lport = tq_sk_lport(child);  // the child's own tuple, as its state events carry
    if (mode == 2 && lport != tq_ctl_get(TQ_CTL_FEED_PORT))
        return;
    struct tq_event *ev = tq_feed.ringbuf_reserve(sizeof(struct tq_event));
    if (!ev) {
        tq_lost_one();
        return;
    }
    ev->ts_ns = now;
    ev->skaddr = (u64)child;
    ev->ns_in_old = now >= link->queued_ns ? now - link->queued_ns : 0;
    ev->netns = link->netns;
    ev->pid = bpf_get_current_pid_tgid() >> 32;
    ev->fd = fd;
    ev->kind = TQ_EV_ACCEPT;
    ev->family = link->family;
    ev->sport = lport;
    ev->dport = link->rport;
    ev->oldstate = tq_sk_state(child);
    ev->newstate = ev->oldstate;
    __builtin_memset(ev->saddr, 0, 16);
    if (link->family == TQ_AF_INET)
        bpf_probe_read_kernel(ev->saddr, 4, (const char *)child + TQ_OFF_SK_RCV_SADDR);
    else
        bpf_probe_read_kernel(ev->saddr, 16, (const char *)child + TQ_OFF_SK_V6_RCV_SADDR);
    __builtin_memcpy(ev->daddr, link->raddr, 16);
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    tq_feed.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}
#endif

// accept() returned `child` (fd, or TQ_NO_FD from the kretprobe): charge it to the
// listener it was queued on, with its time in the queue.
static __always_inline void tq_accepted(void *ctx, const void *child, u32 fd)
{
    if (!child)
        return;
    u64 ckey = (u64)child;
    struct tq_link *link = tq_link.lookup(&ckey);
    if (!link) {
        // Queued before the probes went live (or its link was missed): charged to the
        // listener it was followed on, else by (netns, family, port); no wait sample.
        struct tq_listener *l = tq_listener_of_child(child, 0);
        // A socket just accepted is live: it has its listener's netns and local port. (The
        // per-CPU note of the last closed child can name a recycled address: another netns'
        // socket accepted at the address of one of ours that closed; not ours to count.)
        if (l && l->lport == tq_sk_lport(child) && l->netns == tq_netns(child))
            __sync_fetch_and_add(&l->accepted, 1);
        return;
    }
    struct tq_link lv = *link;
    tq_link.delete(&ckey);
    struct tq_listener *l = tq_listener_at(lv.listener);
    if (!l)
        return;
    u64 now = bpf_ktime_get_ns();
    __sync_fetch_and_add(&l->accepted, 1);
    tq_hist_add(lv.listener, l->born_ns, TQ_HIST_WAIT, now >= lv.queued_ns ? now - lv.queued_ns : 0,
                &l->wait_count, &l->wait_sum_ns, &l->wait_max_ns);
#if TQ_RINGBUF
    tq_feed_accept(child, &lv, now, fd);
#endif
}
#endif

#ifdef TQ_HAVE_ACCEPT_SYSCALL
// syscalls:sys_exit_accept4 / sys_exit_accept: the return value is the new fd;
// its socket is current->files->fdt->fd[fd]->private_data (struct socket)->sk.
int tq_accept_exit(struct tq_tp_sys_exit_accept *args)
{
    long fd = args->ret;
    if (fd < 0)
        return 0;
    const void *task = (const void *)bpf_get_current_task();
    const void *files = 0, *fdt = 0, *fds = 0, *file = 0, *sock = 0, *sk = 0;
    u32 max_fds = 0;
    bpf_probe_read_kernel(&files, sizeof(files), (const char *)task + TQ_OFF_TASK_FILES);
    if (!files)
        return 0;
    bpf_probe_read_kernel(&fdt, sizeof(fdt), (const char *)files + TQ_OFF_FILES_FDT);
    if (!fdt)
        return 0;
    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (const char *)fdt + TQ_OFF_FDT_MAX_FDS);
    if ((u64)fd >= max_fds)
        return 0;
    bpf_probe_read_kernel(&fds, sizeof(fds), (const char *)fdt + TQ_OFF_FDT_FD);
    if (!fds)
        return 0;
    bpf_probe_read_kernel(&file, sizeof(file), (const char *)fds + fd * sizeof(void *));
    if (!file)
        return 0;
    bpf_probe_read_kernel(&sock, sizeof(sock), (const char *)file + TQ_OFF_FILE_PRIVATE);
    if (!sock)
        return 0;
    bpf_probe_read_kernel(&sk, sizeof(sk), (const char *)sock + TQ_OFF_SOCKET_SK);
    tq_accepted(args, sk, (u32)fd);
    return 0;
}
#endif

#ifdef TQ_KRP_CSK_ACCEPT
#include <uapi/linux/ptrace.h>
// kretprobe:inet_csk_accept: only the return value (the child) is used, since the
// arguments changed in 6.10. The descriptor is not allocated yet: no fd.
int tq_krp_csk_accept(struct pt_regs *ctx)
{
    tq_accepted(ctx, (const void *)PT_REGS_RC(ctx), TQ_NO_FD);
    return 0;
}
#endif

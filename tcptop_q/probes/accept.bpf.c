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

// Per CPU, the largest sample that CPU added to (listener, born_ns, histogram), key
// bucket 0; user space takes the largest over CPUs and the shared max below
// (probes/decode.py). Written only when a sample beats the shared max, so rarely.
BPF_PERCPU_HASH(tq_hist_max, struct tq_hist_key, u64, 2 * TQ_MAX_LISTENERS);

// One sample into listener sk's histogram `hist`, plus count, sum and max.
// Lookup-or-init then atomic adds: no increment is lost to a racing CPU. The max
// is exact: the shared `*max` is a plain compare-and-store (two CPUs racing on a
// new maximum can leave the smaller there), so a sample that beats it is also kept
// in this CPU's own slot of tq_hist_max, where nothing races (each histogram has
// one writer context per CPU: accept() in process context, sk_data_ready in softirq;
// kprobe and tracepoint programs do not nest). Every value ever stored in the shared
// max is also in some CPU's slot, and the true maximum either beat the shared max
// (which only holds real samples) or equals a value stored there: so the largest
// slot is the exact maximum.
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
    if (ns > *max) {
        *max = ns;
        hk.bucket = 0;
        u64 *cpu_max = tq_hist_max.lookup(&hk);
        if (cpu_max) {
            if (ns > *cpu_max)
                *cpu_max = ns;
        } else {
            tq_hist_max.update(&hk, &ns);
        }
    }
}

// Rare paths of accept tracking, counted per CPU (BpfProbes.accept_diag(); docs/ACCEPT.md).
#define TQ_DIAG_ACC_NOLINK 0  // accept() returned a child with no link
#define TQ_DIAG_ACC_EARLY 1  // ... still in SYN_RECV/ESTABLISHED: marked for its enqueue to sample
#define TQ_DIAG_ACC_NOPORT 2  // ... and no listener to charge it to: not counted
#define TQ_DIAG_LINK_EARLY 3  // enqueue found its child already accepted: wait sampled there
#define TQ_DIAG_LINK_TAIL 4  // enqueue took the queue's tail (no child noted on this CPU)
#define TQ_DIAG_LINK_NONE 5  // enqueue found no child at all
#define TQ_DIAG_STASH_SLOW 6  // the noted child was > 10 ms old (emulated guests under load)
#define TQ_DIAG_SLOTS 8
BPF_PERCPU_ARRAY(tq_acc_diag, u64, TQ_DIAG_SLOTS);

static __always_inline void tq_diag(int slot)
{
    u64 *v = tq_acc_diag.lookup(&slot);
    if (v)
        (*v)++;
}

// ------------------------------------------------------------ children queued / peak depth

#ifdef TQ_HAVE_LINK
// How old the child noted by this CPU's SYN_RECV -> ESTABLISHED may be when the
// listener's sk_data_ready follows: microseconds natively; an emulated guest whose
// vCPU thread the host deschedules between the two can take tens of ms. The child is
// also checked against the listener's netns and port.
#define TQ_STASH_MAX_NS 1000000000ULL
#define TQ_STASH_SLOW_NS 10000000ULL
#define TQ_EARLY_MAX_NS 1000000000ULL  // a raced accept() came just before its enqueue
#define TQ_LINK_EARLY 0xFFFF  // tq_link.family of a raced accept()'s mark (listener 0)

#if defined(TQ_OFF_TREQ_SNT_SYNACK) && TQ_OFF_TREQ_SNT_SYNACK >= TQ_OFF_REQ_SK + 8 && \
    TQ_OFF_TREQ_SNT_SYNACK + 8 - TQ_OFF_REQ_SK <= 128
#define TQ_REQ_ONE_READ (TQ_OFF_TREQ_SNT_SYNACK + 8 - TQ_OFF_REQ_SK)
#endif

// The child just queued on listener sk: the one whose SYN_RECV -> ESTABLISHED ran on
// this CPU right before (tcp_child_process: enqueue, the child's state change, then
// the listener's sk_data_ready, all on one CPU), checked against the listener's netns
// and port; else the accept queue's tail (fast open children, which are queued at the
// SYN). The tail alone can be wrong: another CPU may accept() or append in between.
static __always_inline void tq_link_child(const void *sk, struct tq_listener *l, u64 now)
{
    const void *child = 0, *req = 0, *tail_child = 0;
    u64 queued_ns = now, snt_us = 0;
    struct tq_skc h;
    int zero = 0;
    struct tq_stash *st = tq_stash.lookup(&zero);
    if (st && st->child && now >= st->ns && now - st->ns < TQ_STASH_MAX_NS) {
        const void *c = (const void *)st->child;
        tq_skc_read(&h, c);
        if (tq_skc_lport(&h, c) == l->lport && tq_skc_netns(&h, c) == l->netns) {
            child = c;
            queued_ns = st->ns;  // the child's SYN_RECV -> ESTABLISHED
            if (now - st->ns >= TQ_STASH_SLOW_NS)
                tq_diag(TQ_DIAG_STASH_SLOW);
        }
    }
    if (st)
        st->child = 0;
    bpf_probe_read_kernel(&req, sizeof(req), (const char *)sk + TQ_OFF_ICSK_ACCEPT_TAIL);
    if (req) {
#ifdef TQ_REQ_ONE_READ
        // request_sock.sk .. tcp_request_sock.snt_synack in one read
        u8 rb[TQ_REQ_ONE_READ];
        bpf_probe_read_kernel(rb, sizeof(rb), (const char *)req + TQ_OFF_REQ_SK);
        tail_child = *(void *const *)rb;
        snt_us = *(const u64 *)(rb + (TQ_OFF_TREQ_SNT_SYNACK - TQ_OFF_REQ_SK));
#else
        bpf_probe_read_kernel(&tail_child, sizeof(tail_child), (const char *)req + TQ_OFF_REQ_SK);
#endif
    }
    if (!child) {
        child = tail_child;
        if (!child) {
            tq_diag(TQ_DIAG_LINK_NONE);
            return;
        }
        tq_diag(TQ_DIAG_LINK_TAIL);
        tq_skc_read(&h, child);
    }
    u64 ckey = (u64)child;
    struct tq_link link = {.listener = (u64)sk, .queued_ns = queued_ns, .netns = l->netns, .family = l->family};
    link.rport = tq_skc_rport(&h, child);
    tq_skc_addr(link.raddr, &h, child, l->family, TQ_OFF_SK_DADDR, TQ_OFF_SK_V6_DADDR);
    // Insert, not update: one map operation decides, atomically per key, whether this
    // link or a raced accept()'s mark (tq_accepted) came first.
    int fresh = 1;
    if (tq_link.insert(&ckey, &link) != 0) {
        struct tq_link *e = tq_link.lookup(&ckey);
        if (e && !e->listener && e->family == TQ_LINK_EARLY) {
            // Already accepted (and counted, on the listener of its (netns, port)): its
            // wait ends at that accept(), 0 when it came before this child's own
            // SYN_RECV -> ESTABLISHED. The mark becomes an accepted entry.
            u64 acc_ns = e->queued_ns;
            e->family = l->family;
            // `now` was taken before this program looked: the accept() can be later.
            if (acc_ns >= now || now - acc_ns < TQ_EARLY_MAX_NS) {
                tq_diag(TQ_DIAG_LINK_EARLY);
                tq_hist_add((u64)sk, l->born_ns, TQ_HIST_WAIT, acc_ns >= queued_ns ? acc_ns - queued_ns : 0,
                            &l->wait_count, &l->wait_sum_ns, &l->wait_max_ns);
            }
        } else if (e && !e->listener) {
            // An accepted socket at this address whose close was not seen: stale.
            tq_link.update(&ckey, &link);
        } else {
            fresh = 0;  // linked already (the tail, taken for a child that has its link): kept
        }
    }
    tq_child_linked(ckey, (u64)sk, l, &h);
    if (!fresh)
        return;  // no second handshake sample
#ifdef TQ_OFF_TREQ_SNT_SYNACK
    // tcp_rsk(req)->snt_synack: when the first SYN-ACK left (tcp_clock_us, the same
    // CLOCK_MONOTONIC as bpf_ktime_get_ns); 0 when unknown (e.g. syncookies). Only
    // when the tail is this child: otherwise its request is not at hand (no sample).
#ifndef TQ_REQ_ONE_READ
    if (req && tail_child == child)
        bpf_probe_read_kernel(&snt_us, sizeof(snt_us), (const char *)req + TQ_OFF_TREQ_SNT_SYNACK);
#endif
    if (tail_child != child)
        snt_us = 0;
    if (snt_us && queued_ns / 1000 >= snt_us)
        tq_hist_add((u64)sk, l->born_ns, TQ_HIST_HANDSHAKE, queued_ns - snt_us * 1000, &l->hs_count, &l->hs_sum_ns,
                    &l->hs_max_ns);
#endif
    return;
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
    struct tq_skc h;
    tq_skc_read(&h, child);
    u16 lport = tq_skc_lport(&h, child);  // the child's own tuple, as its state events carry
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
#ifdef TQ_SKC_ONE_READ
    ev->oldstate = h.b[TQ_OFF_SK_STATE];
#else
    ev->oldstate = tq_sk_state(child);
#endif
    ev->newstate = ev->oldstate;
    __builtin_memset(ev->saddr, 0, 16);
    tq_skc_addr(ev->saddr, &h, child, link->family, TQ_OFF_SK_RCV_SADDR, TQ_OFF_SK_V6_RCV_SADDR);
    __builtin_memcpy(ev->daddr, link->raddr, 16);
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    tq_feed.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
}
#endif

// An accept() of a child without a link: queued before the probes went live, or
// taken before its listener's sk_data_ready linked it. Charged to the listener it was
// followed on, else by (netns, family, port) (tcpq.bpf.c tq_listener_of_child); no wait
// sample here (the raced one gets it at enqueue).
static __always_inline void tq_accepted_unlinked(const void *child)
{
    tq_diag(TQ_DIAG_ACC_NOLINK);
    struct tq_listener *l = tq_listener_of_child(child, 0);
    // A socket just accepted is live: it has its listener's netns and local port. (The
    // per-CPU note of the last closed child can name a recycled address: another netns'
    // socket accepted at the address of one of ours that closed; not ours to count.)
    if (l && l->lport == tq_sk_lport(child) && l->netns == tq_netns(child))
        __sync_fetch_and_add(&l->accepted, 1);
    else
        tq_diag(TQ_DIAG_ACC_NOPORT);
}

// accept() returned `child` (fd, or TQ_NO_FD from the kretprobe): charge it to the
// listener it was queued on, with its time in the queue.
static __always_inline void tq_accepted(void *ctx, const void *child, u32 fd)
{
    if (!child)
        return;
    u64 ckey = (u64)child;
    struct tq_link *link = tq_link.lookup(&ckey);
    if (link && !link->listener)
        return;  // accepted already: an accept() never returns one child twice
#ifdef TQ_KRP_CSK_ACCEPT
    if (!link) {
        // The kretprobe runs as soon as the child is out of the queue, while the CPU
        // that queued it may still be in tcp_child_process (it holds the child's lock
        // until after sk_data_ready; the syscall exits run after inet_accept took that
        // lock, so they never see this). A mark is inserted for that CPU's
        // tq_link_child to sample the wait; if its link got in first, the insert fails
        // and the link is used. A child queued before the probes went live is marked
        // too (it was not seen queued: no sample); its CLOSE deletes the mark.
        u8 st = tq_sk_state(child);
        if (st == TQ_TCP_SYN_RECV || st == TQ_TCP_ESTABLISHED) {
            struct tq_link mark = {.queued_ns = bpf_ktime_get_ns(), .family = TQ_LINK_EARLY};
            if (tq_link.insert(&ckey, &mark) == 0) {
                tq_diag(TQ_DIAG_ACC_EARLY);
                tq_accepted_unlinked(child);
                return;
            }
            link = tq_link.lookup(&ckey);
            if (link && !link->listener)
                return;
        }
    }
#endif
    if (!link) {
        tq_accepted_unlinked(child);
        return;
    }
    struct tq_link lv = *link;
    // Marked accepted rather than deleted: the child's CLOSE deletes it anyway
    // (tcpq.bpf.c tq_set_state), one map delete per child instead of two.
    link->listener = 0;
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
#if TQ_OFF_FDT_FD == TQ_OFF_FDT_MAX_FDS + 8
    struct {
        u32 max_fds;
        u32 _pad;
        const void *fd;
    } head = {};
    bpf_probe_read_kernel(&head, sizeof(head), (const char *)fdt + TQ_OFF_FDT_MAX_FDS);
    max_fds = head.max_fds;
    fds = head.fd;
#else
    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (const char *)fdt + TQ_OFF_FDT_MAX_FDS);
    bpf_probe_read_kernel(&fds, sizeof(fds), (const char *)fdt + TQ_OFF_FDT_FD);
#endif
    if ((u64)fd >= max_fds)
        return 0;
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

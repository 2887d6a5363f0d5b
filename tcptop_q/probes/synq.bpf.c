// The SYN queue of every listener from the kernel's own links (probes/synq.py).
//
// A BPF tcp iterator (bpf_iter__tcp, kernel >= 5.9) run on demand: it walks the TCP sockets
// of the network namespace the reading thread was in when it created the iterator fd, and
// writes one struct tq_synq_rec per listener, per request socket (NEW_SYN_RECV) and per Fast
// Open child still in SYN_RECV (with its peer: the sampler finds its sock_diag row by it). A request socket names its listener (rsk_listener), which
// sock_diag does not: in a SO_REUSEPORT group this is the member the request waits on.
// Offsets come from BTF as -D flags (TQ_SQ_OFF_*); every read is bpf_probe_read_kernel.
// The function name is what bcc needs to attach it as an iterator (no tq_ prefix possible).

struct seq_file;
struct bpf_iter_meta {
    struct seq_file *seq;
    u64 session_id;
    u64 seq_num;
};
struct bpf_iter__tcp {
    struct bpf_iter_meta *meta;
    void *sk_common;
    u32 uid;
};

#define TQ_SQ_LISTEN 10
#define TQ_SQ_SYN_RECV 3
#define TQ_SQ_NEW_SYN_RECV 12

// The peer of a request or child (sock_common: family, dport, daddr or v6_daddr).
static __always_inline void tq_sq_peer(struct tq_synq_rec *rec, char *skc)
{
    u16 family = 0;
    bpf_probe_read_kernel(&family, 2, skc + TQ_SQ_OFF_FAMILY);
    rec->family = family;
    bpf_probe_read_kernel(&rec->rport, 2, skc + TQ_SQ_OFF_DPORT);
    if (family == 10)  // AF_INET6
        bpf_probe_read_kernel(rec->raddr, 16, skc + TQ_SQ_OFF_V6_DADDR);
    else
        bpf_probe_read_kernel(rec->raddr, 4, skc + TQ_SQ_OFF_DADDR);
}

int bpf_iter__tcp(struct bpf_iter__tcp *ctx)
{
    char *skc = ctx->sk_common;
    if (!skc)
        return 0;
    u8 state = 0;
    bpf_probe_read_kernel(&state, 1, skc + TQ_SQ_OFF_STATE);
    struct tq_synq_rec rec = {};
    rec.state = state;
    if (state == TQ_SQ_LISTEN) {
        bpf_probe_read_kernel(&rec.cookie, 8, skc + TQ_SQ_OFF_COOKIE);
        bpf_probe_read_kernel(&rec.qlen, 4, skc + TQ_SQ_OFF_QLEN);
    } else if (state == TQ_SQ_NEW_SYN_RECV) {
        char *listener = 0;
        bpf_probe_read_kernel(&listener, 8, skc + TQ_SQ_OFF_LISTENER);
        if (listener)
            bpf_probe_read_kernel(&rec.cookie, 8, listener + TQ_SQ_OFF_COOKIE);
        tq_sq_peer(&rec, skc);
    } else if (state == TQ_SQ_SYN_RECV && TQ_SQ_OFF_FASTOPEN_RSK >= 0) {
        // A full socket in SYN_RECV is a Fast Open child (its request hangs off the child);
        // a simultaneous open has none and belongs to no listener.
        char *req = 0, *listener = 0;
        bpf_probe_read_kernel(&req, 8, skc + TQ_SQ_OFF_FASTOPEN_RSK);
        if (!req)
            return 0;
        bpf_probe_read_kernel(&listener, 8, req + TQ_SQ_OFF_LISTENER);
        if (listener)
            bpf_probe_read_kernel(&rec.cookie, 8, listener + TQ_SQ_OFF_COOKIE);
        tq_sq_peer(&rec, skc);
    } else {
        return 0;
    }
    bpf_seq_write(ctx->meta->seq, &rec, sizeof(rec));
    return 0;
}

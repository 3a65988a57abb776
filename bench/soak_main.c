/*
 * kvrt-soak - a multi-node kvrt deployment on one machine, driven by real
 * request traffic, with faults injected on a seeded schedule and invariants
 * checked throughout (docs/soak.md).
 *
 * The supervisor (this file) builds the network (soak_netns.c), forks one
 * node process per namespace (soak_node.c), replays the workload against
 * them, injects the faults and keeps the books every invariant is checked
 * against (soak_report.c). It never links kvrt state of its own: every
 * kvrt object lives in a node.
 */
#include <errno.h>
#include <stddef.h>
#include <getopt.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "soak.h"
#include "soak_node.h"

static volatile sig_atomic_t interrupted;
static soak_t *cleanup_target;

static void on_signal(int sig) { interrupted = sig; }

double soak_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define MSG_MAX (sizeof(soak_msg_request_t) + (SOAK_MAX_PROMPT + SOAK_MAX_ANSWER) * 4u + \
                 sizeof(soak_msg_events_t) + KVRT_HANDOFF_TICKET_MAX)

/* ---- node processes ------------------------------------------------------------ */

void soak_node_start(soak_t *s, uint32_t i)
{
    node_proc_t *np = &s->nodes[i];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
        perror("kvrt-soak: socketpair");
        exit(2);
    }
    int big = 4 << 20;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    /* The node is this program again (--node), exec'd: the supervisor has
     * threads (kvrt's etcd member), and a forked child may only exec. */
    char spec[512];
    snprintf(spec, sizeof(spec), "%u,%s:%s,%u,%u,%.6f,%llu,%u,%s,%s,%u,%d,%d", i,
             s->netns ? s->net.address[i] : "127.0.0.1", s->netns ? "7100" : "0",
             s->o.pool_blocks, s->o.transfer_timeout_ms, s->o.time_scale,
             (unsigned long long)(s->o.seed * 1000003u + i * 7919u + np->generation),
             s->o.lease_ttl_s, s->etcd ? s->cluster.endpoint : "-",
             s->tiers ? s->disk.dir[i] : "-", s->o.transfer_timeout_ms, s->o.handoff_fail,
             !s->o.handoff_no_expiry);
    char *const argv[] = {s->argv0, "--node", spec, NULL};
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("kvrt-soak: fork");
        exit(2);
    }
    if (pid == 0) {
        /* A node never outlives the supervisor, however it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if ((s->netns && soak_net_enter(&s->net, i) != 0) || dup2(sv[1], 3) != 3)
            _exit(6);
        execv(s->argv0, argv);
        _exit(127);
    }
    close(sv[1]);
    np->pid = pid;
    np->fd = sv[0];
    np->state = NODE_STARTING;
    np->stopped = np->killed_on_purpose = np->reported = 0;
    np->last = (soak_node_counters_t){0};
}

/* kvrt-soak --node SPEC: one node, talking to the supervisor on fd 3. */
static int node_process(const char *spec)
{
    static char listen[128], etcd[128], ssd[128];
    unsigned index = 0, pool = 0, timeout = 0, ttl = 0, handoff_timeout = 0;
    int handoff_fail = 0, handoff_expiry = 1;
    unsigned long long seed = 0;
    double scale = 1;
    if (sscanf(spec, "%u,%127[^,],%u,%u,%lf,%llu,%u,%127[^,],%127[^,],%u,%d,%d", &index, listen,
               &pool, &timeout, &scale, &seed, &ttl, etcd, ssd, &handoff_timeout,
               &handoff_fail, &handoff_expiry) != 12 ||
        index >= SOAK_MAX_NODES)
        return 2;
    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    soak_node_config_t cfg = {.index = index, .listen = listen, .control_fd = 3,
                              .pool_blocks = pool, .transfer_timeout_ms = timeout,
                              .time_scale = scale, .seed = seed, .lease_ttl_s = ttl,
                              .etcd_endpoint = strcmp(etcd, "-") ? etcd : NULL,
                              .ssd_dir = strcmp(ssd, "-") ? ssd : NULL,
                              .handoff_timeout_ms = handoff_timeout,
                              .handoff_fail = handoff_fail,
                              .handoff_expiry = handoff_expiry};
    return soak_node_main(&cfg);
}

void soak_send(soak_t *s, uint32_t i, const void *msg, size_t len)
{
    node_proc_t *np = &s->nodes[i];
    if (np->state != NODE_UP && np->state != NODE_STARTING)
        return;
    /* A stopped node's socket fills; the send then fails at once and the
     * request fails with it (a router would see a dead peer the same way). */
    if (send(np->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)len)
        return;
}

/* Every counter is a uint64_t: they add up field by field. */
_Static_assert(sizeof(soak_node_counters_t) % sizeof(uint64_t) == 0,
               "soak_node_counters_t holds uint64_t counters only");

static void counters_add(soak_node_counters_t *sum, const soak_node_counters_t *c)
{
    uint64_t a[sizeof(*c) / sizeof(uint64_t)], b[sizeof(*c) / sizeof(uint64_t)];
    memcpy(a, sum, sizeof(a));
    memcpy(b, c, sizeof(b));
    for (size_t k = 0; k < sizeof(a) / sizeof(a[0]); k++)
        a[k] += b[k];
    memcpy(sum, a, sizeof(a));
}

static void record_end(soak_t *s, record_t *r, const soak_msg_end_t *m)
{
    soak_report_t *rep = s->rep;
    double t = soak_now() - s->t0;
    int completed = 0;
    if (!m) {
        rep->failed++;
        rep->failed_node_lost++;
    } else if (m->reason == KVRT_END_STOP || m->reason == KVRT_END_LENGTH) {
        rep->finished++;
        completed = 1;
        soak_bucket_t *b = soak_bucket_at(rep, t);
        if (b) {
            b->finished++;
            b->hit_tokens += m->cached_tokens;
            b->prompt_tokens += m->prompt_len;
            if (m->ttft_ms >= 0)
                sim_samples_add(&b->ttft_ms, m->ttft_ms);
        }
        if (m->ttft_ms >= 0)
            sim_samples_add(&rep->ttft_all, m->ttft_ms);
    } else if (m->reason == KVRT_END_ABORTED) {
        rep->aborted++;
    } else {
        rep->failed++;
    }
    r->live = 0;
    uint32_t generated = m && m->output_tokens <= r->req.answer_len ? m->output_tokens : 0;
    sim_workload_done(s->workload, &r->req, t * 1e6, generated, completed);
    free(r->req.answer);
    r->req.answer = NULL;
}

/* A node process is gone: its requests fail, its counters are kept. */
static void node_lost(soak_t *s, uint32_t i, int status)
{
    node_proc_t *np = &s->nodes[i];
    if (!np->killed_on_purpose && !(np->state == NODE_DONE && WIFEXITED(status) &&
                                    WEXITSTATUS(status) == 0)) {
        s->rep->node_crashes++;
        fprintf(stderr, "kvrt-soak: node %u (pid %d) died unexpectedly (status 0x%x)\n", i,
                (int)np->pid, status);
    }
    counters_add(&s->rep->counters, &np->last);
    np->last = (soak_node_counters_t){0};
    for (uint64_t k = 0; k < s->num_recs; k++)
        if (s->recs[k].live && s->recs[k].node == i)
            record_end(s, &s->recs[k], NULL);
    close(np->fd);
    np->fd = -1;
    np->pid = 0;
    if (np->state != NODE_DONE) {
        np->state = NODE_DOWN;
        /* With etcd, a killed node stays down past its lease, so the
         * directory must drop it on membership alone. */
        double down_s = s->etcd ? s->o.lease_ttl_s + 3.0 : 1.0;
        np->restart_at = soak_now() + down_s;
        if (s->etcd && np->killed_on_purpose) {
            np->dead_epoch = np->epoch;
            np->died_at = soak_now();
            np->dir_check_at = np->died_at + s->o.lease_ttl_s + 2.0;
        }
        np->generation++;
    }
}

static void reap(soak_t *s)
{
    for (uint32_t i = 0; i < s->o.nodes; i++) {
        node_proc_t *np = &s->nodes[i];
        int status = 0;
        if (np->pid > 0 && waitpid(np->pid, &status, WNOHANG) == np->pid)
            node_lost(s, i, status);
    }
}

static void on_hello(soak_t *s, uint32_t i, const soak_msg_peer_t *m)
{
    node_proc_t *np = &s->nodes[i];
    np->hello = *m;
    np->hello.type = SOAK_MSG_PEER;
    np->hello.index = i;
    np->hello.generation = np->generation;
    np->epoch = m->epoch;
    np->state = NODE_UP;
    for (uint32_t j = 0; j < s->o.nodes; j++) {
        if (j == i || s->nodes[j].state != NODE_UP)
            continue;
        soak_send(s, j, &np->hello, sizeof(np->hello));
        soak_send(s, i, &s->nodes[j].hello, sizeof(s->nodes[j].hello));
    }
}

/* A decode node's hand-off ticket goes to its prefill node, as a router
 * would carry it; one that cannot be delivered (the node is down, stopped
 * with a full socket) is dropped and the hand-off meets its deadline. */
static void relay_ticket(soak_t *s, uint32_t from, uint8_t *buf, size_t len)
{
    soak_msg_prefill_t m;
    memcpy(&m, buf, sizeof(m));
    if (m.node >= s->o.nodes || m.node == from ||
        len != sizeof(m) + (size_t)m.prompt_len * 4u + m.ticket_len) {
        fprintf(stderr, "kvrt-soak: node %u sent a malformed ticket\n", from);
        s->rep->node_crashes++;
        return;
    }
    s->rep->tickets_relayed++;
    uint32_t to = m.node;
    m.type = SOAK_MSG_PREFILL;
    m.node = from;
    memcpy(buf, &m, sizeof(m));
    node_proc_t *np = &s->nodes[to];
    if (np->state != NODE_UP ||
        send(np->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)len)
        s->rep->tickets_dropped++;
    else
        soak_fault_ticket_relayed(s, to);
}

static void on_node_message(soak_t *s, uint32_t i, uint8_t *buf, size_t len)
{
    node_proc_t *np = &s->nodes[i];
    uint32_t type = 0;
    memcpy(&type, buf, len >= 4 ? 4 : 0);
    if (type == SOAK_MSG_HELLO && len == sizeof(soak_msg_peer_t)) {
        soak_msg_peer_t m;
        memcpy(&m, buf, sizeof(m));
        on_hello(s, i, &m);
    } else if (type == SOAK_MSG_END && len == sizeof(soak_msg_end_t)) {
        soak_msg_end_t m;
        memcpy(&m, buf, sizeof(m));
        if (m.id >= s->num_recs || !s->recs[m.id].live || s->recs[m.id].node != i)
            s->rep->ended_twice++;
        else
            record_end(s, &s->recs[m.id], &m);
    } else if (type == SOAK_MSG_EVENTS && len >= offsetof(soak_msg_events_t, events)) {
        static soak_msg_events_t m;
        memcpy(&m, buf, len);
        if (len != offsetof(soak_msg_events_t, events) + m.count * sizeof(kvrt_kv_event_t)) {
            fprintf(stderr, "kvrt-soak: node %u sent a malformed event batch\n", i);
            s->rep->node_crashes++;
        } else if (soak_cluster_events(&s->cluster, i, &m)) {
            soak_msg_corrupt_t ask = {.type = SOAK_MSG_SNAPSHOT};
            soak_send(s, i, &ask, sizeof(ask));
        }
    } else if (type == SOAK_MSG_STATS && len == sizeof(soak_msg_stats_t)) {
        soak_msg_stats_t m;
        memcpy(&m, buf, sizeof(m));
        np->last = m.counters;
        soak_cluster_load(&s->cluster, i, &m);
    } else if (type == SOAK_MSG_REPORT && len == sizeof(soak_msg_report_t)) {
        soak_msg_report_t m;
        memcpy(&m, buf, sizeof(m));
        np->last = m.counters;
        np->reported = 1;
        soak_report_t *rep = s->rep;
        rep->leaked_blocks += m.used_blocks;
        rep->leaked_registrations += m.registrations;
        rep->outstanding_transfers += m.outstanding;
        rep->unfinished += m.unfinished;
        rep->handoffs_left += m.handoffs_left;
        rep->verify_failures += (m.pool_verify != KVRT_OK) + (m.cache_verify != KVRT_OK);
        if (m.used_blocks || m.registrations || m.outstanding || m.pool_verify ||
            m.cache_verify || m.handoffs_left)
            fprintf(stderr, "kvrt-soak: node %u at the end: %u blocks used, %llu "
                            "registrations, %llu transfers outstanding, %llu hand-offs, "
                            "verify %d/%d\n",
                    i, m.used_blocks, (unsigned long long)m.registrations,
                    (unsigned long long)m.outstanding, (unsigned long long)m.handoffs_left,
                    m.pool_verify, m.cache_verify);
    } else if (type == SOAK_MSG_TICKET && len >= sizeof(soak_msg_prefill_t)) {
        relay_ticket(s, i, buf, len);
    } else {
        fprintf(stderr, "kvrt-soak: node %u sent an unknown message (%u, %zu bytes)\n", i, type,
                len);
        s->rep->node_crashes++;
    }
}

/* Waits up to timeout_ms for node messages and handles them. */
static void pump(soak_t *s, int timeout_ms)
{
    struct pollfd pfd[SOAK_MAX_NODES];
    uint32_t idx[SOAK_MAX_NODES], n = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].fd >= 0 && s->nodes[i].pid > 0) {
            pfd[n] = (struct pollfd){.fd = s->nodes[i].fd, .events = POLLIN};
            idx[n++] = i;
        }
    if (poll(pfd, n, timeout_ms) <= 0)
        return;
    for (uint32_t k = 0; k < n; k++) {
        for (int m = 0; m < 4096 && (pfd[k].revents & POLLIN); m++) {
            ssize_t got = recv(pfd[k].fd, s->buf, MSG_MAX, MSG_DONTWAIT);
            if (got <= 0)
                break;
            on_node_message(s, idx[k], s->buf, (size_t)got);
        }
    }
}

/* ---- traffic ----------------------------------------------------------------------- */

static uint32_t home_of(const soak_t *s, const sim_request_t *req)
{
    /* The node a prefix belongs to: a hash of its first block's tokens. */
    uint64_t h = 1469598103934665603ull;
    for (uint32_t k = 0; k < req->prompt_len && k < SOAK_BLOCK_TOKENS; k++)
        h = (h ^ (uint32_t)req->prompt[k]) * 1099511628211ull;
    return (uint32_t)(h % s->o.nodes);
}

static int pick_node(soak_t *s, uint32_t home)
{
    uint32_t up[SOAK_MAX_NODES], n = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP)
            up[n++] = i;
    if (n == 0)
        return -1;
    /* Half the traffic lands on the prefix's home; the rest elsewhere, so
     * that node pulls the prefix from home. */
    if (home < s->o.nodes && s->nodes[home].state == NODE_UP && sim_rng_unit(&s->rng) < 0.5)
        return (int)home;
    return (int)up[sim_rng_below(&s->rng, n)];
}

/* A node of one role (prefill: 1, decode: 0) that is up: `prefer` when it
 * is one, else one drawn at random; -1 when none is up. */
static int pick_role(soak_t *s, int prefill, uint32_t prefer)
{
    uint32_t up[SOAK_MAX_NODES], n = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP && (i < s->o.prefill_nodes) == (prefill != 0))
            up[n++] = i;
    if (n == 0)
        return -1;
    for (uint32_t k = 0; k < n; k++)
        if (up[k] == prefer)
            return (int)prefer;
    return (int)up[sim_rng_below(&s->rng, n)];
}

/* A node that is up other than `not`, or -1. */
static int pick_other(soak_t *s, uint32_t not)
{
    uint32_t up[SOAK_MAX_NODES], n = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP && i != not)
            up[n++] = i;
    return n ? (int)up[sim_rng_below(&s->rng, n)] : -1;
}

static void submit_arrivals(soak_t *s, double t)
{
    int any_up = 0;
    for (uint32_t i = 0; i < s->o.nodes; i++)
        any_up |= s->nodes[i].state == NODE_UP;
    /* With no node up the requests wait in front of the cluster. */
    for (int k = 0; any_up && k < 1000 && sim_workload_next_arrival(s->workload) <= t * 1e6;
         k++) {
        sim_request_t req;
        char err[256];
        if (sim_workload_pop(s->workload, &req, err, sizeof(err)) != 1)
            return;
        if (req.prompt_len > SOAK_MAX_PROMPT || req.answer_len > SOAK_MAX_ANSWER ||
            req.id >= s->num_recs) {
            s->skipped_too_long++;
            sim_workload_done(s->workload, &req, t * 1e6, 0, 0);
            free(req.answer);
            continue;
        }
        uint32_t home = home_of(s, &req), routed = 0, source = 0, prefill = SOAK_NO_NODE;
        int target = -1;
        int have_route =
            soak_cluster_route(&s->cluster, req.prompt, req.prompt_len, &routed, &source) == 0 &&
            routed < s->o.nodes && s->nodes[routed].state == NODE_UP;
        if (s->o.prefill_nodes) {
            /* Disaggregated: a decode node takes the request, a prefill
             * node (the router's, when it chose one) computes its prompt. */
            uint32_t prefer = have_route ? routed : s->o.nodes;
            target = pick_role(s, 0, prefer);
            int p = pick_role(s, 1, prefer);
            prefill = p < 0 ? SOAK_NO_NODE : (uint32_t)p;
            home = target < 0 ? 0 : (uint32_t)target;
        } else if (sim_rng_unit(&s->rng) < s->o.handoff_share) {
            /* The node the prefix belongs to prefills, another decodes. */
            int p = have_route ? (int)routed : pick_node(s, home);
            target = p < 0 ? -1 : pick_other(s, (uint32_t)p);
            prefill = target < 0 ? SOAK_NO_NODE : (uint32_t)p;
            if (target < 0)
                target = p;
            home = target < 0 ? 0 : (uint32_t)target;
        } else if (have_route) {
            /* The router's choice, or, for a share of the traffic, another
             * node that then pulls the prefix from where the router saw
             * most of it. */
            target = (int)routed;
            home = source < s->o.nodes ? source : routed;
            if (sim_rng_unit(&s->rng) < 0.3)
                target = pick_node(s, s->o.nodes);
        } else {
            target = pick_node(s, home);
        }
        record_t *r = &s->recs[req.id];
        *r = (record_t){.live = 1, .node = target < 0 ? 0 : (uint32_t)target, .sent_s = t,
                        .req = req};
        s->rep->submitted++;
        if (target < 0) {
            record_end(s, r, NULL);
            continue;
        }
        soak_msg_request_t m = {.type = SOAK_MSG_REQUEST, .home = home, .id = req.id,
                                .prompt_len = req.prompt_len, .answer_len = req.answer_len,
                                .prefill = prefill};
        memcpy(s->buf, &m, sizeof(m));
        memcpy(s->buf + sizeof(m), req.prompt, req.prompt_len * 4u);
        memcpy(s->buf + sizeof(m) + req.prompt_len * 4u, req.answer, req.answer_len * 4u);
        size_t len = sizeof(m) + ((size_t)req.prompt_len + req.answer_len) * 4u;
        if (send(s->nodes[target].fd, s->buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) !=
            (ssize_t)len) {
            /* The node cannot take it (stopped, its queue full): the
             * request fails now, as a client would see it. */
            soak_msg_end_t end = {.type = SOAK_MSG_END, .reason = KVRT_END_FAILED, .id = req.id,
                                  .status = KVRT_ERR_PEER_FAILED, .ttft_ms = -1};
            record_end(s, r, &end);
        }
        /* The workload's prompt pointer is valid until the next pop. */
        r->req.prompt = NULL;
    }
}

static void check_hung(soak_t *s, double t)
{
    for (uint64_t k = 0; k < s->num_recs; k++) {
        record_t *r = &s->recs[k];
        if (r->live && !r->hung && t - r->sent_s > s->o.request_timeout_s) {
            r->hung = 1;
            s->rep->hung++;
            fprintf(stderr, "kvrt-soak: request %llu on node %u outlived its %.0f s timeout\n",
                    (unsigned long long)k, r->node, s->o.request_timeout_s);
        }
    }
}

/*
 * A killed node's lease has expired: the directory must hold nothing of
 * that incarnation any more. A lease runs out on a live etcd only: one
 * that restarts extends every lease by its TTL from when it serves again,
 * so the check waits until etcd has answered the supervisor for TTL + 2 s.
 */
static void check_directory(soak_t *s)
{
    double now = soak_now();
    for (uint32_t i = 0; i < s->o.nodes; i++) {
        node_proc_t *np = &s->nodes[i];
        if (!np->dead_epoch || now < np->dir_check_at)
            continue;
        double serving = soak_cluster_serving_since(&s->cluster);
        if (serving < 0 || now < serving + s->o.lease_ttl_s + 2.0) {
            np->dir_check_at = now + 0.5;
            continue;
        }
        s->rep->directory_checks++;
        if (soak_cluster_holds(&s->cluster, i, np->dead_epoch)) {
            s->rep->stale_directory_nodes++;
            fprintf(stderr, "kvrt-soak: the directory still holds node %u's entries %.1f s "
                            "after its death (etcd serving for %.1f s)\n",
                    i, now - np->died_at, now - serving);
        }
        np->dead_epoch = 0;
    }
}

static void sample_rss(soak_t *s)
{
    long page = sysconf(_SC_PAGESIZE);
    for (uint32_t i = 0; i < s->o.nodes; i++) {
        if (s->nodes[i].pid <= 0)
            continue;
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/statm", (int)s->nodes[i].pid);
        FILE *f = fopen(path, "r");
        unsigned long size = 0, rss = 0;
        if (f && fscanf(f, "%lu %lu", &size, &rss) == 2 &&
            (uint64_t)rss * (uint64_t)page > s->rep->max_rss_bytes)
            s->rep->max_rss_bytes = (uint64_t)rss * (uint64_t)page;
        if (f)
            fclose(f);
    }
}

/* ---- the run ------------------------------------------------------------------------- */

static void kill_all(soak_t *s)
{
    for (uint32_t i = 0; i < s->o.nodes; i++) {
        node_proc_t *np = &s->nodes[i];
        if (np->pid <= 0)
            continue;
        kill(np->pid, SIGKILL);
        kill(np->pid, SIGCONT);
        waitpid(np->pid, NULL, 0);
        np->pid = 0;
    }
}

static void cleanup(void)
{
    if (!cleanup_target)
        return;
    kill_all(cleanup_target);
    soak_cluster_stop(&cleanup_target->cluster);
    soak_net_down(&cleanup_target->net);
    soak_disk_down(&cleanup_target->disk);
}

/* Traffic has stopped: let what is in flight end, then ask every node to
 * check itself. */
static void finish(soak_t *s)
{
    soak_fault_heal(s);
    double give_up = soak_now() + s->o.request_timeout_s + 5.0;
    for (;;) {
        double t = soak_now();
        reap(s);
        for (uint32_t i = 0; i < s->o.nodes; i++)
            if (s->nodes[i].state == NODE_DOWN && t >= s->nodes[i].restart_at)
                soak_node_start(s, i);
        uint64_t live = 0;
        for (uint64_t k = 0; k < s->num_recs; k++)
            live += s->recs[k].live;
        int starting = 0;
        for (uint32_t i = 0; i < s->o.nodes; i++)
            starting |= s->nodes[i].state == NODE_STARTING || s->nodes[i].state == NODE_DOWN;
        if ((live == 0 && !starting) || t > give_up || interrupted)
            break;
        check_hung(s, t - s->t0);
        soak_cluster_tick(&s->cluster, t);
        check_directory(s);
        pump(s, 20);
    }
    soak_msg_corrupt_t fin = {.type = SOAK_MSG_FINISH};
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_UP) {
            soak_send(s, i, &fin, sizeof(fin));
            s->nodes[i].state = NODE_DONE;
        }
    double deadline = soak_now() + 90.0;
    for (;;) {
        int waiting = 0;
        for (uint32_t i = 0; i < s->o.nodes; i++)
            waiting |= s->nodes[i].state == NODE_DONE && s->nodes[i].pid > 0;
        if (!waiting || soak_now() > deadline || interrupted)
            break;
        pump(s, 20);
        sample_rss(s);
        reap(s);
    }
    for (uint32_t i = 0; i < s->o.nodes; i++)
        if (s->nodes[i].state == NODE_DONE && !s->nodes[i].reported)
            s->rep->missing_reports++;
    kill_all(s);
    for (uint32_t i = 0; i < s->o.nodes; i++)
        counters_add(&s->rep->counters, &s->nodes[i].last);
    for (uint64_t k = 0; k < s->num_recs; k++)
        if (s->recs[k].live) {
            /* Never ended: lost, and its conversation ends with it. */
            s->rep->lost++;
            s->recs[k].live = 0;
            sim_workload_done(s->workload, &s->recs[k].req, (soak_now() - s->t0) * 1e6, 0, 0);
            free(s->recs[k].req.answer);
        }
}

static void progress(const soak_t *s, double t)
{
    uint64_t faults = 0;
    for (int k = 0; k < SOAK_FAULT_KINDS; k++)
        faults += s->rep->faults[k];
    const soak_report_t *r = s->rep;
    printf("\r[%5.0f/%.0f s] %llu submitted, %llu finished, %llu failed, %llu faults, "
           "rss %.0f MiB   ",
           t, s->o.duration_s, (unsigned long long)r->submitted,
           (unsigned long long)r->finished, (unsigned long long)r->failed,
           (unsigned long long)faults, (double)r->max_rss_bytes / 1048576.0);
    fflush(stdout);
}

/* Starts every node and waits (at most 30 s) until each has said hello,
 * so traffic starts on a whole cluster. */
static int start_nodes(soak_t *s)
{
    for (uint32_t i = 0; i < s->o.nodes; i++)
        soak_node_start(s, i);
    double give_up = soak_now() + 30.0;
    for (;;) {
        uint32_t up = 0;
        for (uint32_t i = 0; i < s->o.nodes; i++)
            up += s->nodes[i].state == NODE_UP;
        if (up == s->o.nodes)
            return 0;
        if (soak_now() > give_up || interrupted) {
            fprintf(stderr, "kvrt-soak: %u of %u nodes started\n", up, s->o.nodes);
            return -1;
        }
        reap(s);
        pump(s, 20);
    }
}

static int run(soak_t *s)
{
    if (start_nodes(s) != 0)
        return -1;
    s->t0 = soak_now();
    soak_fault_plan(s);
    int tty = isatty(STDOUT_FILENO) && !s->o.json;
    double next_tick = 0.0;
    for (;;) {
        double t = soak_now() - s->t0;
        if (t >= s->o.duration_s || interrupted)
            break;
        reap(s);
        for (uint32_t i = 0; i < s->o.nodes; i++)
            if (s->nodes[i].state == NODE_DOWN && soak_now() >= s->nodes[i].restart_at)
                soak_node_start(s, i);
        submit_arrivals(s, t);
        soak_fault_tick(s, t);
        soak_cluster_tick(&s->cluster, soak_now());
        check_directory(s);
        if (t >= next_tick) {
            sample_rss(s);
            check_hung(s, t);
            if (tty)
                progress(s, t);
            next_tick = t + 1.0;
        }
        pump(s, 5);
    }
    if (tty)
        printf("\n");
    finish(s);
    s->rep->duration_s = soak_now() - s->t0;
    s->rep->routed = s->cluster.routed;
    s->rep->events_applied = s->cluster.events_applied;
    s->rep->resyncs = s->cluster.resyncs;
    return interrupted ? -1 : 0;
}

static int open_workload(soak_t *s)
{
    char err[512];
    const options_t *o = &s->o;
    if (o->trace) {
        if (trace_load(o->trace, trace_format_from_name(o->trace), &s->trace, err,
                       sizeof(err)) != 0) {
            fprintf(stderr, "kvrt-soak: %s\n", err);
            return -1;
        }
        sim_trace_params_t tp = {.seed = o->seed, .time_scale = o->time_scale,
                                 .copy_prob = 0.15};
        if (sim_workload_trace(&s->trace, &tp, &s->workload, err, sizeof(err)) != 0) {
            fprintf(stderr, "kvrt-soak: %s\n", err);
            return -1;
        }
    } else {
        sim_synthetic_params_t p = sim_synthetic_defaults();
        p.seed = o->seed;
        p.rate = o->rate;
        p.num_requests = (uint32_t)fmin(o->rate * o->duration_s * 2.0 + 100.0, 4e7);
        p.system_len = 600;
        p.user_len = 120;
        p.output_len = 48;
        p.max_output = 128;
        p.max_prompt = SOAK_MAX_PROMPT;
        p.think_s = 2.0;
        p.abort_prob = 0.0;
        if (sim_workload_synthetic(&p, &s->workload, err, sizeof(err)) != 0) {
            fprintf(stderr, "kvrt-soak: %s\n", err);
            return -1;
        }
    }
    s->num_recs = sim_workload_planned(s->workload);
    s->recs = calloc(s->num_recs ? s->num_recs : 1, sizeof(record_t));
    return s->recs ? 0 : -1;
}

int main(int argc, char **argv)
{
    static soak_t soak;
    static soak_report_t report;
    soak_t *s = &soak;
    if (argc == 3 && strcmp(argv[1], "--node") == 0)
        return node_process(argv[2]);
    ssize_t self = readlink("/proc/self/exe", s->argv0, sizeof(s->argv0) - 1);
    if (self <= 0) {
        fprintf(stderr, "kvrt-soak: cannot find its own executable\n");
        return 2;
    }
    if (soak_parse_args(argc, argv, &s->o) != 0)
        return 2;
    s->rep = &report;
    s->rng = sim_rng_stream(s->o.seed, 0x50a4);
    s->buf = malloc(MSG_MAX);
    for (uint32_t i = 0; i < SOAK_MAX_NODES; i++)
        s->nodes[i].fd = -1;
    /* The plot script sits next to this program's sources. */
    s->o.plot_script = KVRT_SOAK_PLOT_SCRIPT;
    if (!s->buf || open_workload(s) != 0)
        return 2;

    static char network[160];
    const char *why = s->o.loopback ? "--loopback" : soak_net_up(&s->net, s->o.nodes);
    s->netns = why == NULL;
    if (s->netns)
        snprintf(network, sizeof(network), "netns (bridge %.40s, 10.231.%u.0/24)",
                 s->net.bridge_ns, s->net.tag % 250u);
    else
        snprintf(network, sizeof(network), "loopback (no namespaces: %.100s)", why);
    cleanup_target = s;
    atexit(cleanup);
    /* The supervisor lives in the bridge namespace, next to etcd, where
     * every node's address is one hop away. */
    if (s->netns && soak_net_enter_bridge(&s->net) != 0) {
        fprintf(stderr, "kvrt-soak: cannot enter %s\n", s->net.bridge_ns);
        return 2;
    }
    static char cluster_line[200];
    const char *no_etcd = "--no-etcd";
    if (!s->o.no_etcd)
        no_etcd = soak_cluster_start(&s->cluster, s->netns ? s->net.bridge_address : "127.0.0.1",
                                     s->netns ? 2379u : 20000u + (unsigned)getpid() % 20000u * 2u,
                                     s->o.lease_ttl_s);
    s->etcd = no_etcd == NULL;
    s->tiers = soak_disk_up(&s->disk, s->o.nodes, geteuid() == 0, 24) == NULL;
    if (s->etcd)
        snprintf(cluster_line, sizeof(cluster_line), "etcd at %.96s", s->cluster.endpoint);
    else
        snprintf(cluster_line, sizeof(cluster_line), "no etcd (%.150s)", no_etcd);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    report.network = network;
    report.nodes = s->o.nodes;
    report.rss_limit_bytes = s->o.rss_limit_mb << 20;
    int have_netem = s->netns && soak_net_has_qdisc(&s->net, SOAK_NETEM);
    int have_tbf = s->netns && soak_net_has_qdisc(&s->net, SOAK_SLOW);
    int have_lossy = s->netns && soak_net_has_lossy(&s->net);
    if (s->netns && !have_netem)
        report.why_not[SOAK_FAULT_NETEM] = "tc refuses netem: no sch_netem in this kernel; "
                                           "'loss' injects loss and reordering instead";
    if (s->netns && !have_lossy)
        report.why_not[SOAK_FAULT_LOSS] = "needs nft (Debian's nftables) and sch_htb";
    for (int k = 0; k < SOAK_FAULT_KINDS; k++) {
        report.enabled[k] = s->o.faults[k];
        report.available[k] = k == SOAK_FAULT_KILL || k == SOAK_FAULT_STOP ||
                              k == SOAK_FAULT_CORRUPT || (k == SOAK_FAULT_LINK && s->netns) ||
                              (k == SOAK_FAULT_NETEM && have_netem) ||
                              (k == SOAK_FAULT_SLOW && have_tbf) ||
                              (k == SOAK_FAULT_LOSS && have_lossy) ||
                              (k == SOAK_FAULT_ETCD && s->etcd) ||
                              (k == SOAK_FAULT_DISKFULL && s->tiers && s->disk.mounted);
    }
    fprintf(stderr, "kvrt-soak: %u nodes over %s, %s, %.0f s, seed %llu\n", s->o.nodes,
            network, cluster_line, s->o.duration_s, (unsigned long long)s->o.seed);

    int rc = run(s);
    cleanup();
    cleanup_target = NULL;
    if (s->skipped_too_long)
        fprintf(stderr, "kvrt-soak: %llu trace requests longer than %u prompt tokens skipped\n",
                (unsigned long long)s->skipped_too_long, SOAK_MAX_PROMPT);
    soak_report_print(&report, s->o.json ? stderr : stdout);
    if (s->o.json)
        soak_report_json(&report, stdout);
    if (s->o.plot_dir && soak_report_plot(&report, s->o.plot_dir, s->o.plot_script) != 0)
        rc = -2;
    int ok = soak_report_ok(&report, NULL);
    soak_report_free(&report);
    sim_workload_destroy(s->workload);
    trace_free(&s->trace);
    free(s->recs);
    free(s->buf);
    if (rc == -1)
        return 3;
    return ok && rc == 0 ? 0 : 1;
}

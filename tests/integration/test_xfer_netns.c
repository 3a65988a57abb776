/*
 * test_xfer_netns.c - two agents in two network namespaces joined by a veth
 * pair: a real (virtual) link instead of loopback. The namespaces, the veth
 * pair and the 10.213.x.y/30 addresses are made here and removed at the
 * end; nothing else is touched. Needs root and iproute2; skips otherwise.
 */
#include <stdarg.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "test_xfer_child.h"
#include "test_xfer_flood.h"

typedef struct netns_pair {
    char a[40], b[40];
    char addr_a[32], addr_b[32];
    bool made;
    bool mounted_run_netns; /* /run/netns was no mount point before */
} netns_pair_t;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char quiet[600];
    snprintf(quiet, sizeof(quiet), "%s >/dev/null 2>&1", cmd);
    return system(quiet);
}

/* Whether /run/netns is a mount point: the first `ip netns add` on a
 * machine bind-mounts it on itself, and nothing removes that mount. */
static bool run_netns_is_mounted(void)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[1024];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f)) {
        char point[512];
        found = sscanf(line, "%*s %*s %*s %*s %511s", point) == 1 &&
                strcmp(point, "/run/netns") == 0;
    }
    if (f)
        fclose(f);
    return found;
}

static void netns_down(netns_pair_t *n)
{
    if (!n->made)
        return;
    /* Deleting a namespace deletes the veth end inside it, and with it
     * its peer. */
    sh("ip netns del %s", n->a);
    sh("ip netns del %s", n->b);
    /* Undo the bind mount when this test made it (the namespaces living
     * on it are gone; the directory itself is left). */
    if (n->mounted_run_netns)
        umount2("/run/netns", MNT_DETACH);
    n->made = false;
}

/* Returns a reason to skip, or NULL when the pair is up. */
static const char *netns_up(netns_pair_t *n)
{
    if (geteuid() != 0)
        return "needs root to create network namespaces";
    if (sh("ip -V") != 0)
        return "iproute2 (ip) is not installed";
    unsigned id = (unsigned)getpid() & 0xffffu;
    snprintf(n->a, sizeof(n->a), "kvrtx-%u-a", id);
    snprintf(n->b, sizeof(n->b), "kvrtx-%u-b", id);
    unsigned sub = (id % 60) * 4;
    snprintf(n->addr_a, sizeof(n->addr_a), "10.213.%u.%u", id / 60 % 250, sub + 1);
    snprintf(n->addr_b, sizeof(n->addr_b), "10.213.%u.%u", id / 60 % 250, sub + 2);
    n->mounted_run_netns = !run_netns_is_mounted();
    n->made = true;
    if (sh("ip netns add %s", n->a) != 0 || sh("ip netns add %s", n->b) != 0) {
        netns_down(n);
        return "ip netns add failed (no namespace support here)";
    }
    if (sh("ip link add kvx%ua netns %s type veth peer name kvx%ub netns %s", id, n->a, id,
           n->b) != 0 ||
        sh("ip -n %s addr add %s/30 dev kvx%ua", n->a, n->addr_a, id) != 0 ||
        sh("ip -n %s addr add %s/30 dev kvx%ub", n->b, n->addr_b, id) != 0 ||
        sh("ip -n %s link set kvx%ua up", n->a, id) != 0 ||
        sh("ip -n %s link set kvx%ub up", n->b, id) != 0 ||
        sh("ip -n %s link set lo up", n->a) != 0 || sh("ip -n %s link set lo up", n->b) != 0) {
        netns_down(n);
        return "veth setup failed (no veth support here)";
    }
    return NULL;
}

static netns_pair_t pair;

static void teardown(void) { netns_down(&pair); }

Test(xfer_netns, random_chunks_across_a_veth_link, .fini = teardown)
{
    const char *skip = netns_up(&pair);
    if (skip)
        cr_skip_test("%s", skip);
    char path[96], listen[64];
    snprintf(path, sizeof(path), "/var/run/netns/%s", pair.b);
    snprintf(listen, sizeof(listen), "%s:0", pair.addr_b);
    child_t c = child_fork_in(path, listen);
    child_go(&c);

    /* This process joins namespace A (the test runs in a worker process of
     * its own, so nothing else is affected). */
    snprintf(path, sizeof(path), "/var/run/netns/%s", pair.a);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(setns(fd, CLONE_NEWNET), 0);
    close(fd);

    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_params_t p = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                KVRT_XFER_AGENT_PARAM_LISTEN,
                                  .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                  .backend = KVRT_XFER_BACKEND_TCP};
    char mine[64];
    snprintf(mine, sizeof(mine), "%s:0", pair.addr_a);
    p.listen_address = mine;
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, c.address, 5000, &peer));
    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_OK(ctx, kvrt_xfer_import(peer, c.desc, c.desc_len, &rem));

    const uint64_t bytes = 16u << 20;
    uint8_t *src = aligned_alloc(4096, bytes), *back = aligned_alloc(4096, bytes);
    txu_fill(src, bytes, 123);
    memset(back, 0, bytes);
    kvrt_xfer_region_t *ls = txu_register(ctx, a, src, bytes, 0);
    kvrt_xfer_region_t *lb = txu_register(ctx, a, back, bytes, 0);
    /* 256 random 64 KiB chunks out, then all of it back. */
    enum { N = 256 };
    kvrt_xfer_op_t ops[N];
    uint64_t rng = 5;
    for (int i = 0; i < N; i++)
        ops[i] = (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = ls,
                                  .local_offset = (test_rand(&rng) % 256) * 65536, .remote = rem,
                                  .remote_offset = (uint64_t)i * 65536, .length = 65536};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(ctx, kvrt_xfer_post(peer, ops, N, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 20000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    kvrt_xfer_op_t all = {.opcode = KVRT_XFER_READ, .local = lb, .remote = rem, .length = bytes};
    ASSERT_OK(ctx, kvrt_xfer_post(peer, &all, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 20000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    for (int i = 0; i < N; i++)
        cr_assert(memcmp(back + (uint64_t)i * 65536, src + ops[i].local_offset, 65536) == 0,
                  "chunk %d differs", i);

    ASSERT_OK(ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(ctx, kvrt_xfer_deregister(lb));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    free(src);
    free(back);
    child_end(&c);
}

/* Zero-copy sends to a peer that does not read stay in the kernel, with
 * their notifications, until the connection is gone. Destroying the agent
 * must neither wait for them (it waited 1 s) nor leak their records
 * (LeakSanitizer saw them under ASan). */
Test(xfer_netns, destroy_after_zero_copy_sends_is_prompt, .fini = teardown)
{
    const char *skip = netns_up(&pair);
    if (skip)
        cr_skip_test("%s", skip);
    char path[96];
    snprintf(path, sizeof(path), "/var/run/netns/%s", pair.b);
    int nb = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof(path), "/var/run/netns/%s", pair.a);
    int na = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert(na >= 0 && nb >= 0);
    /* The reader's socket lives in B, the agent in A: they meet over veth,
     * where the agent uses zero-copy sends. */
    cr_assert_eq(setns(nb, CLONE_NEWNET), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    cr_assert_eq(setns(na, CLONE_NEWNET), 0);
    close(na);
    close(nb);

    kvrt_ctx_t *ctx = txu_ctx();
    char mine[64];
    snprintf(mine, sizeof(mine), "%s:0", pair.addr_a);
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_LISTEN |
                      KVRT_XFER_AGENT_PARAM_ZEROCOPY,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .listen_address = mine,
        .zerocopy_threshold = 256u << 10};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    const uint32_t bytes = 8u << 20;
    uint8_t *mem = aligned_alloc(4096, bytes);
    memset(mem, 7, bytes);
    kvrt_xfer_region_t *rw = txu_register(ctx, a, mem, bytes, KVRT_XFER_REMOTE_READ);
    uint32_t id = txu_region_id(ctx, rw);

    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, sizeof(text)));
    kvrt_xfer_addr_t addr;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&addr.ss, addr.len), 0);
    txr_t r = txr_handshake(fd, "reader");
    enum { N = 32 };
    static uint8_t buf[N * 64];
    size_t at = txf_seal_reads(&r, buf, sizeof(buf), id, N, 256u << 10, bytes);
    cr_assert_eq(txf_write(fd, buf, at, 2000), at);
    cr_assert_gt(txf_stat_reaches(ctx, "xfer.0.queued_bytes", 1, 5000), 0);

    /* The responses (zero-copy, 256 KiB each) are stuck in flight. */
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(ctx, kvrt_xfer_deregister(rw));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    uint64_t took = txu_now_ms() - t0;
    cr_assert_lt(took, 900, "destroy took %llu ms", (unsigned long long)took);
    kvrt_ctx_destroy(ctx);
    close(fd);
    free(mem);
}

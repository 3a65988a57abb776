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

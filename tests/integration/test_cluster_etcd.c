/*
 * test_cluster_etcd.c - membership on a real etcd (127.0.0.1, free ports,
 * a temporary data directory): an unreachable etcd is a clear error at
 * start; nodes in other processes appear, and one killed leaves the
 * directory with all its entries when its lease expires; a restarted node
 * comes back under its new epoch with none of its old entries; etcd killed
 * and restarted: the cluster keeps its last view, then reconverges. Every
 * wait is bounded.
 */
#include "test_cluster_etcd_util.h"

#define POLL_MS 50u
#define CHILD_TTL_S 2u
#define WAIT_S 20.0

static const kvrt_block_hash_t model = {0xAB, 0xCD};
static test_etcd_t etcd;
static kvrt_ctx_t *ctx;

static void setup(void)
{
    if (!test_etcd_available())
        return;
    memset(&etcd, 0, sizeof(etcd));
    test_etcd_start(&etcd);
}

static void teardown(void)
{
    kvrt_ctx_destroy(ctx);
    ctx = NULL;
    test_etcd_remove(&etcd);
}

TestSuite(cluster_etcd, .init = setup, .fini = teardown, .timeout = 120);

static kvrt_cluster_etcd_params_t params(uint64_t node, uint64_t epoch, uint32_t ttl)
{
    return (kvrt_cluster_etcd_params_t){
        .field_mask = KVRT_ETCD_PARAM_ENDPOINT | KVRT_ETCD_PARAM_LEASE_TTL |
                      KVRT_ETCD_PARAM_POLL_MS | KVRT_ETCD_PARAM_TIMEOUT_MS |
                      KVRT_ETCD_PARAM_MAX_BACKOFF_MS | KVRT_ETCD_PARAM_ADDRESS,
        .node_id = node, .model = model, .epoch = epoch, .endpoint = etcd.endpoint,
        .lease_ttl_s = ttl, .poll_ms = POLL_MS, .timeout_ms = 500, .max_backoff_ms = 400,
        .address = "127.0.0.1:0"};
}

/* Registers, retrying while etcd starts (bounded). */
static kvrt_cluster_etcd_t *join(kvrt_ctx_t *c, uint64_t node, uint64_t epoch, uint32_t ttl)
{
    kvrt_cluster_etcd_params_t p = params(node, epoch, ttl);
    kvrt_cluster_etcd_t *m = NULL;
    double until = test_now_s() + WAIT_S;
    kvrt_status_t st;
    while ((st = kvrt_cluster_etcd_create(c, &p, &m)) == KVRT_ERR_COORDINATOR &&
           test_now_s() < until)
        usleep(100 * 1000);
    cr_assert_eq(st, KVRT_OK, "join: %s", kvrt_ctx_last_error(c));
    return m;
}

/* A node in a process of its own: forked now (before this test has
 * threads), it registers when told and lives until killed. */
typedef struct child {
    pid_t pid;
    int go, ready;
} child_t;

static child_t child_fork(uint64_t node, uint64_t epoch)
{
    int go[2], ready[2];
    cr_assert(pipe(go) == 0 && pipe(ready) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        char b;
        if (read(go[0], &b, 1) != 1)
            _exit(1);
        kvrt_ctx_t *c = NULL;
        kvrt_ctx_create(NULL, &c);
        kvrt_cluster_etcd_params_t p = params(node, epoch, CHILD_TTL_S);
        kvrt_cluster_etcd_t *m = NULL;
        b = kvrt_cluster_etcd_create(c, &p, &m) == KVRT_OK ? 'y' : 'n';
        if (write(ready[1], &b, 1) != 1)
            _exit(1);
        for (int i = 0; i < 600; i++) /* killed long before: bounded anyway */
            sleep(1);
        _exit(0);
    }
    close(go[0]);
    close(ready[1]);
    return (child_t){.pid = pid, .go = go[1], .ready = ready[0]};
}

static void child_start(child_t *c)
{
    char b = 'g';
    cr_assert_eq(write(c->go, &b, 1), 1);
    cr_assert_eq(read(c->ready, &b, 1), 1);
    cr_assert_eq(b, 'y', "the child could not register");
}

static void child_kill(child_t *c)
{
    kill(c->pid, SIGKILL);
    waitpid(c->pid, NULL, 0);
    close(c->go);
    close(c->ready);
}

/* Waits until the view has a member with this id and epoch (epoch 0: the
 * id is absent). */
static void wait_view(kvrt_cluster_etcd_t *m, uint64_t node, uint64_t epoch)
{
    double until = test_now_s() + WAIT_S;
    for (;;) {
        kvrt_cluster_member_t v[16];
        uint32_t n = 0;
        ASSERT_OK(ctx, kvrt_cluster_etcd_members(m, v, 16, &n));
        int found = 0;
        for (uint32_t i = 0; i < n; i++)
            found |= v[i].node_id == node && (epoch == 0 || v[i].epoch == epoch);
        if (found == (epoch != 0))
            return;
        cr_assert(test_now_s() < until, "view never showed node %llx epoch %llx",
                  (unsigned long long)node, (unsigned long long)epoch);
        usleep(20 * 1000);
    }
}

static kvrt_kv_event_t stored(uint64_t id, uint64_t k)
{
    return (kvrt_kv_event_t){.event_id = id, .kind = KVRT_KV_EVENT_STORED,
                             .tier = KVRT_KV_TIER_GPU, .key = {k, k}};
}

Test(cluster_etcd, unreachable_at_start_is_a_clear_error)
{
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    char endpoint[64];
    snprintf(endpoint, sizeof(endpoint), "http://127.0.0.1:%d", test_free_port());
    kvrt_cluster_etcd_params_t p = params(1, 1, 5);
    p.endpoint = endpoint;
    kvrt_cluster_etcd_t *m = NULL;
    ASSERT_STATUS(KVRT_ERR_COORDINATOR, kvrt_cluster_etcd_create(ctx, &p, &m));
    cr_assert_null(m);
    cr_assert_not_null(strstr(kvrt_ctx_last_error(ctx), endpoint), "%s",
                       kvrt_ctx_last_error(ctx));
    p.node_id = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_etcd_create(ctx, &p, &m));
    /* A keepalive tick the lease would not outlive three times: the node
     * would drop out of its peers' views between two ticks, again and
     * again. */
    p = params(1, 1, 2);
    p.endpoint = endpoint;
    p.poll_ms = 700;
    p.max_backoff_ms = 700;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_cluster_etcd_create(ctx, &p, &m));
    cr_assert_not_null(strstr(kvrt_ctx_last_error(ctx), "three polls"), "%s",
                       kvrt_ctx_last_error(ctx));
    /* A long poll without a backoff ceiling of its own: the default
     * ceiling follows it (the request then fails only on the endpoint). */
    p = params(1, 1, 60);
    p.endpoint = endpoint;
    p.field_mask &= ~(uint64_t)KVRT_ETCD_PARAM_MAX_BACKOFF_MS;
    p.poll_ms = 10000;
    ASSERT_STATUS(KVRT_ERR_COORDINATOR, kvrt_cluster_etcd_create(ctx, &p, &m));
    /* An address of 255 bytes that JSON escapes six times over. */
    char address[256];
    memset(address, 0x01, 255);
    address[255] = 0;
    p = params(1, 1, 5);
    p.endpoint = endpoint;
    p.field_mask |= KVRT_ETCD_PARAM_ADDRESS;
    p.address = address;
    ASSERT_STATUS(KVRT_ERR_COORDINATOR, kvrt_cluster_etcd_create(ctx, &p, &m));
}

Test(cluster_etcd, dead_node_leaves_with_its_entries_and_restart_brings_a_new_epoch)
{
    if (!test_etcd_available())
        cr_skip_test("etcd is not installed (/usr/bin/etcd; Debian package etcd-server)");
    child_t c1 = child_fork(0xC, 0xE1);
    child_t c2 = child_fork(0xC, 0xE2); /* the same node, restarted */
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_cluster_dir_t *dir = NULL;
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, NULL, &dir));
    kvrt_cluster_etcd_t *a = join(ctx, 0xA, 0xEA, 10);
    child_start(&c1);
    wait_view(a, 0xC, 0xE1);
    uint32_t added = 0, removed = 0;
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    cr_assert_eq(added, 2);
    kvrt_kv_event_t ev[3] = {stored(1, 11), stored(2, 12), stored(3, 13)};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 0xC, 0xE1, ev, 3));
    kvrt_cluster_node_info_t info;
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 0xC, &info));
    cr_assert_eq(info.blocks[0], 3);
    /* Killed: no revoke, its lease expires after CHILD_TTL_S. */
    child_kill(&c1);
    wait_view(a, 0xC, 0);
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    cr_assert_eq(removed, 1);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_NODE, kvrt_cluster_dir_node_info(dir, 0xC, &info));
    kvrt_cluster_dir_stats_t s;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &s));
    cr_assert_eq(s.entries, 0, "the dead node's entries are gone");
    cr_assert_eq(s.nodes, 1);
    /* Back under epoch E2 (first put back, then restart over a live entry). */
    ASSERT_OK(ctx, kvrt_cluster_dir_add_node(dir, 0xC, &model, 0xE1));
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 0xC, 0xE1, ev, 3));
    child_start(&c2);
    wait_view(a, 0xC, 0xE2);
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 0xC, &info));
    cr_assert_eq(info.epoch, 0xE2);
    cr_assert_eq(info.blocks[0], 0, "no entry of the old epoch survives the restart");
    ASSERT_STATUS(KVRT_ERR_STALE_EPOCH, kvrt_cluster_dir_apply(dir, 0xC, 0xE1, ev, 3));
    ASSERT_OK(ctx, kvrt_cluster_dir_node_info(dir, 0xC, &info));
    cr_assert_eq(info.blocks[0], 0);
    child_kill(&c2);
    ASSERT_OK(ctx, kvrt_cluster_etcd_destroy(a));
}

Test(cluster_etcd, lost_etcd_keeps_the_view_and_reconverges)
{
    if (!test_etcd_available())
        cr_skip_test("etcd is not installed (/usr/bin/etcd; Debian package etcd-server)");
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    kvrt_cluster_dir_t *dir = NULL;
    ASSERT_OK(ctx, kvrt_cluster_dir_create(ctx, NULL, &dir));
    kvrt_cluster_etcd_t *a = join(ctx, 0xA, 0xEA, 5);
    kvrt_cluster_etcd_t *b = join(ctx, 0xB, 0xEB, 5);
    wait_view(a, 0xB, 0xEB);
    uint32_t added = 0, removed = 0;
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    cr_assert_eq(added, 2);
    kvrt_kv_event_t ev[2] = {stored(1, 21), stored(2, 22)};
    ASSERT_OK(ctx, kvrt_cluster_dir_apply(dir, 0xB, 0xEB, ev, 2));

    test_etcd_kill(&etcd);
    double until = test_now_s() + WAIT_S;
    kvrt_cluster_etcd_stats_t st;
    do {
        usleep(20 * 1000);
        ASSERT_OK(ctx, kvrt_cluster_etcd_stats(a, &st));
        cr_assert(test_now_s() < until, "the loss of etcd was never noticed");
    } while (st.connected || st.failures == 0);
    /* Still serving from the last view. */
    kvrt_cluster_member_t v[8];
    uint32_t n = 0;
    ASSERT_OK(ctx, kvrt_cluster_etcd_members(a, v, 8, &n));
    cr_assert_eq(n, 2);
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    cr_assert_eq(added + removed, 0);
    kvrt_block_hash_t keys[2] = {{21, 21}, {22, 22}};
    kvrt_cluster_match_t m[4];
    ASSERT_OK(ctx, kvrt_cluster_dir_match(dir, &model, keys, 2, 0, m, 4, &n));
    cr_assert_eq(n, 2);
    cr_assert_eq(m[0].node_id == 0xB ? m[0].prefix_blocks : m[1].prefix_blocks, 2);
    uint64_t updates = st.view_updates;

    test_etcd_start(&etcd);
    until = test_now_s() + WAIT_S;
    do {
        usleep(20 * 1000);
        ASSERT_OK(ctx, kvrt_cluster_etcd_stats(a, &st));
        cr_assert(test_now_s() < until, "never reconverged after etcd came back");
    } while (!st.connected || st.view_updates < updates + 2);
    ASSERT_OK(ctx, kvrt_cluster_etcd_members(a, v, 8, &n));
    cr_assert_eq(n, 2);
    /* B leaves cleanly (revoke): A sees it at once, not a TTL later. */
    ASSERT_OK(ctx, kvrt_cluster_etcd_destroy(b));
    wait_view(a, 0xB, 0);
    ASSERT_OK(ctx, kvrt_cluster_etcd_sync(a, dir, &added, &removed));
    cr_assert_eq(removed, 1);
    kvrt_cluster_dir_stats_t ds;
    ASSERT_OK(ctx, kvrt_cluster_dir_stats(dir, &ds));
    cr_assert_eq(ds.entries, 0);
}

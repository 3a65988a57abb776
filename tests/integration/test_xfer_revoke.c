/*
 * test_xfer_revoke.c - a peer cannot keep what it was given. A peer that
 * asks for reads and never drains the responses pins the region: the
 * access deadline revokes it, and so does deregistration (which then
 * completes instead of failing with KVRT_ERR_BUSY). kvrt_xfer_peer_revoke
 * and kvrt_xfer_revoke_name take a peer's requests, accesses and
 * connection back on demand.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "test_xfer_flood.h"

#define REGION (4u << 20)

static void victim_up(txf_victim_t *v, uint32_t deadline_ms)
{
    txf_victim_up(v,
                  (kvrt_xfer_agent_params_t){.field_mask = KVRT_XFER_AGENT_PARAM_ACCESS_DEADLINE |
                                                           KVRT_XFER_AGENT_PARAM_NAME,
                                             .name = "victim", .access_deadline_ms = deadline_ms},
                  REGION);
}

/* A peer that asks for the region 64 times over, 256 KiB at a time,
 * and reads none of it: READ responses wait in the victim, pinning the
 * region. */
static txr_t stalled_reader(txf_victim_t *v, const char *name, bool wait_stuck)
{
    txr_t r = txf_connect_silent(v->ctx, v->agent, name);
    uint32_t id = txu_region_id(v->ctx, v->rw);
    /* 256 MiB of responses: far more than the kernel buffers on the way,
     * so most stay with the agent, pinned, however the buffers autotune. */
    enum { N = 1024 };
    static uint8_t buf[N * 64];
    size_t at = txf_seal_reads(&r, buf, sizeof(buf), id, N, 256u << 10, REGION);
    cr_assert_eq(txf_write(r.fd, buf, at, 2000), at);
    if (!wait_stuck)
        return r;
    /* Served and stuck: replies are held for it, and no more go out (the
     * same nonzero amount for 200 ms). Until then its pins may still come
     * and go as the kernel takes responses. */
    uint64_t last = 0, end = txu_now_ms() + 10000;
    uint32_t same = 0;
    while (same < 4 && txu_now_ms() < end) {
        struct timespec ts = {0, 50000000};
        nanosleep(&ts, NULL);
        uint64_t q = txu_stat(v->ctx, "xfer.0.queued_bytes");
        same = q && q == last ? same + 1 : 0;
        last = q;
    }
    cr_assert_eq(same, 4, "the responses never got stuck (%llu bytes queued)",
                 (unsigned long long)last);
    return r;
}

Test(xfer_revoke, deregistration_revokes_a_peer_that_does_not_drain_reads)
{
    txf_victim_t v;
    victim_up(&v, 3600000); /* no access deadline: deregistration must do it */
    txr_t r = stalled_reader(&v, "hoarder", true);
    /* Before: deregistration waited 1 s for the pins and gave up (BUSY). */
    ASSERT_OK(v.ctx, kvrt_xfer_deregister(v.rw));
    v.rw = NULL;
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.revocations"), 1);
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.regions"), 0);
    cr_assert(txf_closed_by_agent(r.fd, 5000), "the hoarder's connection stayed open");
    cr_assert_eq(txu_stat_drained(v.ctx, "xfer.0.peers", 5000), 0);
    cr_assert_eq(txu_stat_drained(v.ctx, "xfer.0.queued_bytes", 5000), 0);
    close(r.fd);
    txf_victim_down(&v);
}

Test(xfer_revoke, access_deadline_revokes_a_stalled_reader)
{
    txf_victim_t v;
    victim_up(&v, 200);
    txr_t r = stalled_reader(&v, "staller", false);
    /* No call: the upkeep thread finds accesses without progress. */
    cr_assert_eq(txf_stat_reaches(v.ctx, "xfer.0.revocations", 1, 10000), 1);
    cr_assert(txf_closed_by_agent(r.fd, 5000), "the staller's connection stayed open");
    cr_assert_eq(txu_stat_drained(v.ctx, "xfer.0.peers", 5000), 0);
    /* Nothing pins the region any more: it deregisters at once. */
    ASSERT_OK(v.ctx, kvrt_xfer_deregister(v.rw));
    v.rw = NULL;
    close(r.fd);
    txf_victim_down(&v);
}

Test(xfer_revoke, revoke_by_name_drops_passive_peers)
{
    txf_victim_t v;
    victim_up(&v, 3600000);
    txr_t r = stalled_reader(&v, "prefill-7", true);
    /* A legitimate peer of another name is left alone. */
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_params_t ap = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                 KVRT_XFER_AGENT_PARAM_NAME,
                                   .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                   .backend = KVRT_XFER_BACKEND_TCP, .name = "decode-1"};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &ap, &a));
    kvrt_xfer_peer_t *peer = txu_connect(ctx, a, v.agent);
    cr_assert_eq(txf_stat_reaches(v.ctx, "xfer.0.peers", 2, 5000), 2);

    uint32_t n = 99;
    ASSERT_STATUS(KVRT_ERR_NOT_FOUND, kvrt_xfer_revoke_name(v.agent, "prefill-8", &n));
    cr_assert_eq(n, 0);
    ASSERT_OK(v.ctx, kvrt_xfer_revoke_name(v.agent, "prefill-7", &n));
    cr_assert_eq(n, 1);
    cr_assert(txf_closed_by_agent(r.fd, 5000));
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.peers"), 1);
    /* Its reads pin nothing now. */
    ASSERT_OK(v.ctx, kvrt_xfer_deregister(v.rw));
    v.rw = NULL;
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    cr_assert_eq(info.state, KVRT_XFER_PEER_CONNECTED);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_revoke_name(NULL, "x", NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_revoke_name(v.agent, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_peer_revoke(NULL));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    close(r.fd);
    txf_victim_down(&v);
}

/* A listener that authenticates one connection and then answers nothing,
 * until the connection is closed. */
typedef struct silent_server {
    int listen_fd;
    char address[96];
    pthread_t thread;
    atomic_bool saw_close;
} silent_server_t;

static void *silent_main(void *arg)
{
    silent_server_t *s = arg;
    struct pollfd p = {.fd = s->listen_fd, .events = POLLIN};
    if (poll(&p, 1, 5000) <= 0)
        return NULL;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    kvrt_xfer_sc_keys_t keys;
    if (txr_accept_handshake(fd, "silent", &keys) == KVRT_OK)
        atomic_store(&s->saw_close, txf_closed_by_agent(fd, 10000));
    close(fd);
    return NULL;
}

Test(xfer_revoke, revoke_by_handle_cancels_requests_and_closes_the_connection)
{
    silent_server_t srv = {0};
    kvrt_xfer_addr_t any, bound;
    cr_assert_eq(kvrt_xfer_addr_parse("127.0.0.1:0", &any), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_listen(&any, &bound, &srv.listen_fd), KVRT_OK);
    kvrt_xfer_addr_format(&bound, srv.address, sizeof(srv.address));
    cr_assert_eq(pthread_create(&srv.thread, NULL, silent_main, &srv), 0);

    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_params_t ap = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                 KVRT_XFER_AGENT_PARAM_CONNECTIONS |
                                                 KVRT_XFER_AGENT_PARAM_TIMEOUT,
                                   .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                                   .backend = KVRT_XFER_BACKEND_TCP, .connections_per_peer = 1,
                                   .default_timeout_ms = 60000};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &ap, &a));
    kvrt_xfer_peer_t *peer = NULL;
    ASSERT_OK(ctx, kvrt_xfer_connect(a, srv.address, 5000, &peer));
    /* A descriptor of the right backend for the silent side to ignore. */
    uint8_t *mem = aligned_alloc(4096, 65536);
    memset(mem, 1, 65536);
    kvrt_xfer_region_t *local = txu_register(ctx, a, mem, 65536, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txr_import(ctx, peer, local);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = local, .remote = rem,
                         .length = 65536};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(ctx, kvrt_xfer_post(peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_INPROGRESS, kvrt_xfer_request_wait(req, 100));

    ASSERT_OK(ctx, kvrt_xfer_peer_revoke(peer));
    /* Returned with the request done and the connection closed. */
    ASSERT_STATUS(KVRT_ERR_CANCELED, kvrt_xfer_request_test(req));
    kvrt_xfer_peer_info_t info = {.struct_size = sizeof(info)};
    ASSERT_OK(ctx, kvrt_xfer_peer_info(peer, &info));
    cr_assert_eq(info.last_error, KVRT_ERR_CANCELED);
    cr_assert_eq(info.connections, 0);
    cr_assert_eq(info.outstanding, 0);
    cr_assert_neq(info.state, KVRT_XFER_PEER_CONNECTED);
    cr_assert_eq(txu_stat(ctx, "xfer.0.revocations"), 1);
    pthread_join(srv.thread, NULL);
    cr_assert(atomic_load(&srv.saw_close), "the revoked connection stayed open");
    /* Revoking a peer that is down only finds nothing to take. */
    ASSERT_OK(ctx, kvrt_xfer_peer_revoke(peer));

    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_deregister(local));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    close(srv.listen_fd);
    free(mem);
}

/* An agent named `name` that reconnects quickly (as txu_agent). */
static kvrt_xfer_agent_t *named_agent(kvrt_ctx_t *ctx, const char *name)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_TIMEOUT |
                      KVRT_XFER_AGENT_PARAM_RECONNECT | KVRT_XFER_AGENT_PARAM_NAME,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .default_timeout_ms = 3000,
        .reconnect_initial_ms = 20, .reconnect_max_ms = 100, .reconnect_attempts = 1000,
        .name = name};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* Writes 64 KiB of `byte` at the start of the victim's region through
 * peer; the request's final status. */
static kvrt_status_t write_byte(kvrt_ctx_t *ctx, kvrt_xfer_peer_t *peer,
                                const kvrt_xfer_region_t *local, uint8_t *mem,
                                const txf_victim_t *v, uint8_t byte)
{
    memset(mem, byte, 65536);
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(v->ctx, kvrt_xfer_region_descriptor(v->rw, desc, sizeof(desc), &len));
    kvrt_xfer_remote_t *rem = NULL;
    kvrt_status_t st = kvrt_xfer_import(peer, desc, len, &rem);
    kvrt_xfer_request_t *req = NULL;
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = local, .remote = rem,
                         .length = 65536};
    if (st == KVRT_OK)
        st = kvrt_xfer_post(peer, &op, 1, NULL, &req);
    if (st == KVRT_OK) {
        st = kvrt_xfer_request_wait(req, 10000);
        ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    }
    if (rem)
        ASSERT_OK(ctx, kvrt_xfer_remote_release(rem));
    return st;
}

static bool region_is(const txf_victim_t *v, uint8_t byte)
{
    for (uint32_t i = 0; i < 65536; i++)
        if (((const uint8_t *)v->mem)[i] != byte)
            return false;
    return true;
}

Test(xfer_revoke, a_refused_name_lands_nothing_until_the_refusal_ends, .timeout = 60)
{
    txf_victim_t v;
    victim_up(&v, 3600000);
    kvrt_ctx_t *ctx = txu_ctx();
    uint8_t *mem = aligned_alloc(4096, 65536);
    kvrt_xfer_agent_t *w = named_agent(ctx, "prefill-3");
    kvrt_xfer_region_t *local = txu_register(ctx, w, mem, 65536, KVRT_XFER_REMOTE_READ);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, w, v.agent);
    ASSERT_OK(ctx, write_byte(ctx, peer, local, mem, &v, 0x5a));
    cr_assert(region_is(&v, 0x5a));

    /* The victim gives the bytes to someone else, and keeps the writer out. */
    memset(v.mem, 0x11, 65536);
    uint32_t n = 99;
    ASSERT_OK(v.ctx, kvrt_xfer_refuse_name(v.agent, "prefill-3", 60000, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(txu_stat(v.ctx, "xfer.0.peers"), 0);
    /* The writer's handle dials again and is turned away: its write fails. */
    cr_assert_neq(write_byte(ctx, peer, local, mem, &v, 0x77), KVRT_OK);
    /* So does a new agent of that name; another name is served. */
    kvrt_xfer_agent_t *again = named_agent(ctx, "prefill-3");
    kvrt_xfer_agent_t *other = named_agent(ctx, "decode-2");
    char addr[96];
    ASSERT_OK(v.ctx, kvrt_xfer_agent_address(v.agent, addr, sizeof(addr)));
    kvrt_xfer_peer_t *p2 = NULL;
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_xfer_connect(again, addr, 5000, &p2));
    kvrt_xfer_region_t *olocal = txu_register(ctx, other, mem, 65536, KVRT_XFER_REMOTE_READ);
    kvrt_xfer_peer_t *p3 = txu_connect(ctx, other, v.agent);
    cr_assert(region_is(&v, 0x11), "a refused writer's bytes landed");
    ASSERT_OK(ctx, write_byte(ctx, p3, olocal, mem, &v, 0x33));
    cr_assert(region_is(&v, 0x33));

    /* Lifted: the name is served again, and nothing was revoked. */
    ASSERT_OK(v.ctx, kvrt_xfer_refuse_name(v.agent, "prefill-3", 0, &n));
    cr_assert_eq(n, 0);
    kvrt_xfer_region_t *alocal = txu_register(ctx, again, mem, 65536, KVRT_XFER_REMOTE_READ);
    p2 = txu_connect(ctx, again, v.agent);
    ASSERT_OK(ctx, write_byte(ctx, p2, alocal, mem, &v, 0x44));
    cr_assert(region_is(&v, 0x44));

    /* Bad arguments, and the bound on refused names. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_refuse_name(NULL, "x", 10, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_refuse_name(v.agent, NULL, 10, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_refuse_name(v.agent, "", 10, NULL));
    char longname[KVRT_XFER_NAME_MAX + 1];
    memset(longname, 'n', KVRT_XFER_NAME_MAX);
    longname[KVRT_XFER_NAME_MAX] = '\0';
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_refuse_name(v.agent, longname, 10, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_xfer_refuse_name(v.agent, "x", KVRT_XFER_REFUSE_MAX_MS + 1, NULL));
    uint32_t refused = 0;
    kvrt_status_t st = KVRT_OK;
    for (; refused < 1000 && st == KVRT_OK; refused++) {
        char name[32];
        snprintf(name, sizeof(name), "node-%u", refused);
        st = kvrt_xfer_refuse_name(v.agent, name, 60000, &n);
    }
    cr_assert_eq(st, KVRT_ERR_REQUEST_LIMIT);
    cr_assert_eq(refused, 257);
    /* Extending a refused name needs no new entry. */
    ASSERT_OK(v.ctx, kvrt_xfer_refuse_name(v.agent, "node-3", 120000, NULL));

    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(p2));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(p3));
    ASSERT_OK(ctx, kvrt_xfer_deregister(local));
    ASSERT_OK(ctx, kvrt_xfer_deregister(alocal));
    ASSERT_OK(ctx, kvrt_xfer_deregister(olocal));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(w));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(again));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(other));
    kvrt_ctx_destroy(ctx);
    free(mem);
    txf_victim_down(&v);
}

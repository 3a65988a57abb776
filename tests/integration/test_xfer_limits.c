/*
 * test_xfer_limits.c - what a listening agent holds for others is bounded:
 * max_peers passive peers, one more refused at the handshake with
 * KVRT_ERR_BUSY; a peer already held may still reconnect.
 */
#include <unistd.h>

#include "test_xfer_util.h"

static kvrt_xfer_agent_t *agent_max_peers(kvrt_ctx_t *ctx, uint32_t max_peers)
{
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_MAX_PEERS,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_TCP, .max_peers = max_peers};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

Test(xfer_limits, peers_beyond_max_peers_are_refused_busy, .timeout = 60)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *server = agent_max_peers(ctx, 2);
    kvrt_xfer_agent_t *c[3];
    for (int i = 0; i < 3; i++)
        c[i] = txu_agent(ctx, 3000);
    char addr[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(server, addr, sizeof(addr)));
    kvrt_xfer_peer_t *p0 = txu_connect(ctx, c[0], server);
    kvrt_xfer_peer_t *p1 = txu_connect(ctx, c[1], server);
    kvrt_xfer_peer_t *p2 = NULL;
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_xfer_connect(c[2], addr, 3000, &p2));
    cr_assert_null(p2);
    uint64_t end = txu_now_ms() + 3000;
    while (txu_stat(ctx, "xfer.0.peers") != 2 && txu_now_ms() < end)
        usleep(10000);
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 2);

    /* A peer that goes frees its place. */
    ASSERT_OK(ctx, kvrt_xfer_disconnect(p1));
    end = txu_now_ms() + 5000;
    kvrt_status_t st = KVRT_ERR_BUSY;
    while (st == KVRT_ERR_BUSY && txu_now_ms() < end) {
        st = kvrt_xfer_connect(c[2], addr, 3000, &p2);
        if (st == KVRT_ERR_BUSY)
            usleep(20000);
    }
    ASSERT_STATUS(KVRT_OK, st);

    ASSERT_STATUS(KVRT_ERR_INVALID_ARG,
                  kvrt_xfer_agent_create(ctx, &(kvrt_xfer_agent_params_t){
                      .field_mask = KVRT_XFER_AGENT_PARAM_MAX_PEERS,
                      .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
                      .max_peers = 0}, &(kvrt_xfer_agent_t *){NULL}));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(p0));
    ASSERT_OK(ctx, kvrt_xfer_disconnect(p2));
    for (int i = 0; i < 3; i++)
        ASSERT_OK(ctx, kvrt_xfer_agent_destroy(c[i]));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(server));
    kvrt_ctx_destroy(ctx);
}

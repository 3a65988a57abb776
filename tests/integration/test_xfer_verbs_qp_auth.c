/*
 * test_xfer_verbs_qp_auth.c - the verbs backend's queue-pair exchange is
 * authenticated. Two agents on the software RDMA device connect through a
 * relay on the side channel: a relay that only forwards is invisible (the
 * peers connect and move data), while one that changes a QP number in the
 * dialer's QP_INFO frame (to connect the listener's queue pair to a queue
 * pair of its choosing), or any bit of its SETUP or READY frames, makes
 * the listener refuse the connection, which then never comes up; the
 * listener holds no peer and the device is left with no object.
 */
#include <stdlib.h>

#include "support/soft_verbs.h"
#include "test_xfer_relay.h"
#include "xfer/verbs/verbs_ops.h"

static kvrt_xfer_agent_t *verbs_agent(kvrt_ctx_t *ctx)
{
    kvrt_verbs_tuning_t t = {.qps_per_peer = 2};
    kvrt_verbs_use(soft_verbs_ops(), &t);
    kvrt_xfer_agent_params_t p = {
        .field_mask = KVRT_XFER_AGENT_PARAM_BACKEND | KVRT_XFER_AGENT_PARAM_RECONNECT,
        .cluster_key = test_xfer_key, .cluster_key_bytes = 32,
        .backend = KVRT_XFER_BACKEND_VERBS,
        .reconnect_initial_ms = 20, .reconnect_max_ms = 100, .reconnect_attempts = 1};
    kvrt_xfer_agent_t *a = NULL;
    ASSERT_OK(ctx, kvrt_xfer_agent_create(ctx, &p, &a));
    return a;
}

/* Byte offsets, in the dialer's side-channel stream, of what the relay
 * changes: after the HELLO and PROOF frames come the verbs SETUP frame
 * (version, QP count, MAC), the QP_INFO frame (2 entries, MAC) and the
 * READY frame (status, MAC). */
#define SETUP_AT (3 * KVRT_XFER_SC_HEADER_BYTES + KVRT_XFER_SC_HELLO_BYTES + KVRT_XFER_SC_PROOF_BYTES)
#define SETUP_COUNT_AT (SETUP_AT + 4)
#define QP_NUM_AT (SETUP_AT + 8 + KVRT_XFER_SC_MAC_BYTES + KVRT_XFER_SC_HEADER_BYTES)
#define READY_AT (QP_NUM_AT + 2 * 32 + KVRT_XFER_SC_MAC_BYTES + KVRT_XFER_SC_HEADER_BYTES)
#define NO_TAMPER (-1)

static void run(long flip_at)
{
    cr_assert_eq(soft_verbs_start(NULL), 0);
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = verbs_agent(ctx), *b = verbs_agent(ctx);
    relay_t relay;
    relay_start(&relay, ctx, b);
    bool tamper = flip_at != NO_TAMPER;
    if (tamper)
        atomic_store(&relay.flip_at, flip_at);
    kvrt_xfer_peer_t *peer = NULL;
    kvrt_status_t st = kvrt_xfer_connect(a, relay.address, 3000, &peer);
    if (tamper) {
        cr_assert_eq(atomic_load(&relay.done), 1, "the relay never changed byte %ld", flip_at);
        cr_assert_neq(st, KVRT_OK, "a connection with byte %ld altered came up", flip_at);
        cr_assert_null(peer);
        cr_assert_eq(txu_stat_drained(ctx, "xfer.1.peers", 3000), 0);
    } else {
        ASSERT_OK(ctx, st);
        /* The exchange checked out on both sides: data moves. */
        enum { BYTES = 64 << 10 };
        uint8_t *src = aligned_alloc(4096, BYTES), *dst = aligned_alloc(4096, BYTES);
        cr_assert(src && dst);
        txu_fill(src, BYTES, 3);
        memset(dst, 0, BYTES);
        kvrt_xfer_region_t *ls = txu_register(ctx, a, src, BYTES, 0);
        kvrt_xfer_region_t *rd = txu_register(ctx, b, dst, BYTES, KVRT_XFER_REMOTE_WRITE);
        kvrt_xfer_remote_t *rem = txu_import(ctx, peer, rd);
        kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                             .length = BYTES};
        kvrt_xfer_request_t *req = NULL;
        ASSERT_OK(ctx, kvrt_xfer_post(peer, &op, 1, NULL, &req));
        ASSERT_OK(ctx, kvrt_xfer_request_wait(req, 5000));
        kvrt_xfer_request_release(req);
        cr_assert(memcmp(src, dst, BYTES) == 0);
        ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
        ASSERT_OK(ctx, kvrt_xfer_deregister(ls));
        ASSERT_OK(ctx, kvrt_xfer_deregister(rd));
        free(src);
        free(dst);
    }
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    relay_stop(&relay);
    kvrt_ctx_destroy(ctx);
    kvrt_verbs_use(NULL, NULL);
    soft_verbs_stats_t s;
    soft_verbs_get_stats(&s);
    soft_verbs_stop();
    cr_assert_eq(s.live_qps + s.live_cqs + s.live_mrs + s.live_pds, 0);
}

Test(verbs_soft_qp_auth, a_forwarding_relay_is_invisible, .timeout = 60) { run(NO_TAMPER); }

Test(verbs_soft_qp_auth, an_altered_qp_number_is_refused, .timeout = 60) { run(QP_NUM_AT); }

/* The QP count asked for (2 -> 3): unauthenticated, both sides would
 * still have agreed on 2 and connected; now the MAC fails. */
Test(verbs_soft_qp_auth, an_altered_setup_frame_is_refused, .timeout = 60)
{
    run(SETUP_COUNT_AT);
}

Test(verbs_soft_qp_auth, an_altered_ready_frame_is_refused, .timeout = 60) { run(READY_AT); }

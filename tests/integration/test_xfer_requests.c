/*
 * test_xfer_requests.c - a request's life as the caller sees it, over
 * loopback TCP: kvrt_xfer_request_test and _wait on completed requests,
 * _cancel as a no-op once complete, refusals of bad arguments, and the
 * completion queue's bound: with max_requests (4,096 by default) completions
 * left unpolled, kvrt_xfer_post fails with KVRT_ERR_REQUEST_LIMIT until the
 * caller polls. (Requests caught in flight, canceled and waited on are in
 * test_xfer_verbs_agents.c, where the software device can hold them.)
 */
#include <stddef.h>
#include <stdlib.h>

#include "test_xfer_util.h"

typedef struct rig {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b;
    kvrt_xfer_peer_t *peer;
    uint8_t *src, *dst;
    kvrt_xfer_region_t *local, *target;
    kvrt_xfer_remote_t *remote;
} rig_t;

enum { BYTES = 1 << 20 };

static rig_t rig_up(void)
{
    rig_t r;
    r.ctx = txu_ctx();
    r.a = txu_agent(r.ctx, 5000);
    r.b = txu_agent(r.ctx, 5000);
    r.peer = txu_connect(r.ctx, r.a, r.b);
    r.src = aligned_alloc(4096, BYTES);
    r.dst = aligned_alloc(4096, BYTES);
    txu_fill(r.src, BYTES, 3);
    memset(r.dst, 0, BYTES);
    r.local = txu_register(r.ctx, r.a, r.src, BYTES, 0);
    r.target = txu_register(r.ctx, r.b, r.dst, BYTES, KVRT_XFER_REMOTE_WRITE);
    r.remote = txu_import(r.ctx, r.peer, r.target);
    return r;
}

static void rig_down(rig_t *r)
{
    cr_assert_eq(txu_stat_drained(r->ctx, "xfer.0.outstanding", 5000), 0);
    ASSERT_OK(r->ctx, kvrt_xfer_remote_release(r->remote));
    ASSERT_OK(r->ctx, kvrt_xfer_deregister(r->local));
    ASSERT_OK(r->ctx, kvrt_xfer_deregister(r->target));
    cr_assert_eq(txu_stat(r->ctx, "xfer.0.regions"), 0);
    ASSERT_OK(r->ctx, kvrt_xfer_disconnect(r->peer));
    ASSERT_OK(r->ctx, kvrt_xfer_agent_destroy(r->a));
    ASSERT_OK(r->ctx, kvrt_xfer_agent_destroy(r->b));
    kvrt_ctx_destroy(r->ctx);
    free(r->src);
    free(r->dst);
}

static kvrt_xfer_op_t write_op(rig_t *r, uint64_t offset, uint64_t length)
{
    return (kvrt_xfer_op_t){.opcode = KVRT_XFER_WRITE, .local = r->local, .remote = r->remote,
                            .local_offset = offset, .remote_offset = offset,
                            .length = length};
}

Test(xfer_requests, test_and_wait_report_what_a_request_ended_with)
{
    rig_t r = rig_up();
    kvrt_xfer_op_t op = write_op(&r, 0, BYTES);
    kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_USER_DATA, .user_data = 41};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(r.ctx, kvrt_xfer_post(r.peer, &op, 1, &pp, &req));
    kvrt_status_t st = kvrt_xfer_request_test(req);
    cr_assert(st == KVRT_INPROGRESS || st == KVRT_OK, "test: %s", kvrt_status_str(st));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_test(req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 0));
    cr_assert(memcmp(r.src, r.dst, BYTES) == 0);
    /* Canceling a completed request changes nothing. */
    ASSERT_OK(r.ctx, kvrt_xfer_request_cancel(req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_test(req));
    kvrt_xfer_completion_t c[2];
    uint32_t n = 0;
    ASSERT_OK(r.ctx, kvrt_xfer_poll(r.a, c, 2, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(c[0].user_data, 41);
    cr_assert_eq(c[0].status, KVRT_OK);
    cr_assert_eq(c[0].bytes, BYTES);
    ASSERT_OK(r.ctx, kvrt_xfer_request_release(req));
    ASSERT_OK(r.ctx, kvrt_xfer_request_release(NULL));
    rig_down(&r);
}

Test(xfer_requests, null_requests_are_refused)
{
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_request_test(NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_request_wait(NULL, 10));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_request_cancel(NULL));
}

/* Posts until the agent refuses; returns how many it took. */
static uint32_t post_until_refused(rig_t *r, uint32_t limit, kvrt_status_t *refusal_out)
{
    kvrt_xfer_op_t op = write_op(r, 0, 64);
    for (uint32_t i = 0; i < limit; i++) {
        kvrt_status_t st = kvrt_xfer_post(r->peer, &op, 1, NULL, NULL);
        if (st != KVRT_OK) {
            *refusal_out = st;
            return i;
        }
    }
    *refusal_out = KVRT_OK;
    return limit;
}

Test(xfer_requests, unpolled_completions_fill_the_queue_and_posting_fails_until_polled)
{
    rig_t r = rig_up();
    const uint32_t limit = 4096; /* the default max_requests */
    kvrt_status_t refusal;
    uint32_t took = post_until_refused(&r, limit + 1, &refusal);
    cr_assert_eq(took, limit, "posted %u before a refusal", took);
    cr_assert_eq(refusal, KVRT_ERR_REQUEST_LIMIT);
    cr_assert(strstr(kvrt_ctx_last_error(r.ctx), "unpolled") != NULL, "%s",
              kvrt_ctx_last_error(r.ctx));
    /* Once they all completed the queue is what holds them back. */
    cr_assert_eq(txu_stat_drained(r.ctx, "xfer.0.outstanding", 10000), 0);
    kvrt_xfer_op_t op = write_op(&r, 0, 64);
    ASSERT_STATUS(KVRT_ERR_REQUEST_LIMIT, kvrt_xfer_post(r.peer, &op, 1, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_REQUEST_LIMIT, kvrt_xfer_notify(r.peer, "x", 1));
    /* Polling one makes room for exactly one. */
    kvrt_xfer_completion_t *c = calloc(limit, sizeof(*c));
    uint32_t n = 0;
    ASSERT_OK(r.ctx, kvrt_xfer_poll(r.a, c, 1, &n));
    cr_assert_eq(n, 1);
    cr_assert_eq(c[0].status, KVRT_OK);
    ASSERT_OK(r.ctx, kvrt_xfer_post(r.peer, &op, 1, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_REQUEST_LIMIT, kvrt_xfer_post(r.peer, &op, 1, NULL, NULL));
    cr_assert_eq(txu_stat_drained(r.ctx, "xfer.0.outstanding", 10000), 0);
    /* Every request completed exactly once, in order of completion. */
    ASSERT_OK(r.ctx, kvrt_xfer_poll(r.a, c, limit, &n));
    cr_assert_eq(n, limit);
    for (uint32_t i = 0; i < n; i++)
        cr_assert_eq(c[i].status, KVRT_OK, "completion %u: %s", i, kvrt_status_str(c[i].status));
    ASSERT_OK(r.ctx, kvrt_xfer_poll(r.a, c, limit, &n));
    cr_assert_eq(n, 0);
    free(c);
    /* Drained: posting works again. */
    ASSERT_OK(r.ctx, kvrt_xfer_post(r.peer, &op, 1, NULL, NULL));
    cr_assert_eq(txu_stat_drained(r.ctx, "xfer.0.outstanding", 10000), 0);
    ASSERT_OK(r.ctx, kvrt_xfer_poll(r.a, &(kvrt_xfer_completion_t){0}, 1, &n));
    cr_assert_eq(n, 1);
    rig_down(&r);
}

Test(xfer_requests, peer_info_writes_only_the_size_the_caller_declares)
{
    rig_t r = rig_up();
    struct {
        kvrt_xfer_peer_info_t info;
        uint8_t guard[64];
    } out;
    memset(&out, 0xab, sizeof(out));
    out.info.struct_size = sizeof(out.info);
    ASSERT_OK(r.ctx, kvrt_xfer_peer_info(r.peer, &out.info));
    cr_assert_eq(out.info.struct_size, sizeof(out.info));
    cr_assert_eq(out.info.state, KVRT_XFER_PEER_CONNECTED);
    cr_assert_eq(out.info.last_error, KVRT_OK);
    cr_assert_eq(out.info.outstanding, 0);
    for (size_t i = 0; i < sizeof(out.guard); i++)
        cr_assert_eq(out.guard[i], 0xab, "byte %zu past the struct was written", i);
    cr_assert_neq(out.info.instance, 0xababababababababull, "no instance was written");
    /* A caller built against the first version (ending at `name`) gets
     * every field it knows and nothing after them. */
    const size_t first_size = offsetof(kvrt_xfer_peer_info_t, instance);
    memset(&out, 0xab, sizeof(out));
    out.info.struct_size = (uint32_t)first_size;
    ASSERT_OK(r.ctx, kvrt_xfer_peer_info(r.peer, &out.info));
    cr_assert_eq(out.info.state, KVRT_XFER_PEER_CONNECTED);
    const uint8_t *bytes = (const uint8_t *)&out;
    for (size_t i = first_size; i < sizeof(out); i++)
        cr_assert_eq(bytes[i], 0xab, "byte %zu past the first version was written", i);
    kvrt_xfer_peer_info_t small = {.struct_size = 4, .state = KVRT_XFER_PEER_CLOSED};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_peer_info(r.peer, &small));
    cr_assert_eq(small.state, KVRT_XFER_PEER_CLOSED, "a refused call writes nothing");
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_peer_info(r.peer, NULL));
    rig_down(&r);
}

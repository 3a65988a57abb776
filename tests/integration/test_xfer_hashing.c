/*
 * test_xfer_hashing.c - KV checksum messages cost the receiver work (it
 * hashes the blocks they name), so one message may ask for at most
 * XFER_HASH_WORK_MAX bytes and one peer may have at most XFER_HASH_BUDGET
 * queued; the work runs off the progress thread. A hostile peer asking for
 * 4 GiB per message is refused at once, a pipeline of messages beyond its
 * budget is refused with KVRT_ERR_BUSY, and another peer's read is served
 * meanwhile (before, the progress thread hashed every byte first, under
 * the backend lock).
 */
#include "test_xfer_flood.h"

#define BLOCKS 16
#define HASHES 3 /* the KV layer's checksum query (dispatch.h) */

/* A pool of 1 MiB blocks (4 layers x K/V x 128 KiB pages). */
static kvrt_pool_t *big_pool(kvrt_ctx_t *ctx)
{
    kvrt_pool_params_t p = {.layout = {.num_layers = 4, .num_kv_heads = 8, .head_dim = 128,
                                       .tokens_per_block = 64},
                            .num_blocks = BLOCKS};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.block_bytes, 1u << 20);
    return pool;
}

/* A HASHES message naming block 1 `n` times. */
static void seal_hashes(txr_t *r, uint8_t *buf, size_t capacity, size_t *at, uint32_t id,
                        uint32_t n, uint64_t tag)
{
    static uint8_t payload[8 + 4 * 4000];
    kvrt_store_le32(payload, id);
    kvrt_store_le32(payload + 4, n);
    for (uint32_t i = 0; i < n; i++)
        kvrt_store_le32(payload + 8 + 4 * i, 1);
    txf_seal(r, buf, capacity, at,
             (kvrt_xfer_wire_header_t){.type = KVRT_XFER_WIRE_MSG, .region = HASHES, .tag = tag,
                                       .length = 8 + 4 * n},
             payload);
}

Test(xfer_hashing, oversized_and_over_budget_checksum_requests_are_refused)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *victim = txu_agent(ctx, 5000);
    kvrt_pool_t *pool = big_pool(ctx);
    kvrt_xfer_region_t *pr = txu_register_pool(ctx, victim, pool);
    uint32_t id = txu_region_id(ctx, pr);
    uint8_t *mem = aligned_alloc(4096, 1u << 20);
    txu_fill(mem, 1u << 20, 5);
    kvrt_xfer_region_t *plain = txu_register(ctx, victim, mem, 1u << 20, KVRT_XFER_REMOTE_READ);

    /* Another peer, ready to read while the hostile one asks for work. */
    kvrt_ctx_t *octx = txu_ctx();
    kvrt_xfer_agent_t *other = txu_agent(octx, 5000);
    kvrt_xfer_peer_t *peer = txu_connect(octx, other, victim);
    kvrt_xfer_remote_t *rem = txu_import(octx, peer, plain);
    uint8_t *back = aligned_alloc(4096, 1u << 20);
    memset(back, 0, 1u << 20);
    kvrt_xfer_region_t *lb = txu_register(octx, other, back, 1u << 20, 0);

    char address[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(victim, address, sizeof(address)));
    txr_t r = txr_connect(address, "hasher");
    /* 4 messages of 4,000 blocks (4 GiB of hashing each), then 16 of 256
     * blocks (256 MiB each: the most one message may ask for), at once. */
    enum { BIG = 4, FULL = 16 };
    size_t capacity = (BIG + FULL) * (64 + 4 * 4000), at = 0;
    uint8_t *buf = malloc(capacity);
    for (uint32_t i = 0; i < BIG; i++)
        seal_hashes(&r, buf, capacity, &at, id, 4000, i);
    for (uint32_t i = 0; i < FULL; i++)
        seal_hashes(&r, buf, capacity, &at, id, 256, BIG + i);
    cr_assert_eq(txf_write(r.fd, buf, at, 2000), at);
    free(buf);

    /* Served meanwhile, within a deadline the old code's 16 GiB of hashing
     * on the progress thread could not meet. */
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_READ, .local = lb, .remote = rem,
                         .length = 1u << 20};
    kvrt_xfer_post_params_t pp = {.field_mask = KVRT_XFER_POST_PARAM_TIMEOUT,
                                  .timeout_ms = 1000};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(octx, kvrt_xfer_post(peer, &op, 1, &pp, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 5000));
    ASSERT_OK(octx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(back, mem, 1u << 20) == 0);

    /* Every message is answered: the oversized ones refused, the rest
     * served or refused over the budget. */
    int32_t status[BIG + FULL];
    bool seen[BIG + FULL] = {false};
    static uint8_t reply[KVRT_XFER_WIRE_MSG_MAX];
    for (uint32_t i = 0; i < BIG + FULL; i++) {
        kvrt_xfer_wire_header_t h = txr_recv(&r, reply, sizeof(reply));
        cr_assert_eq(h.type, KVRT_XFER_WIRE_MSG_REPLY);
        cr_assert_lt(h.tag, BIG + FULL);
        cr_assert(!seen[h.tag]);
        seen[h.tag] = true;
        status[h.tag] = h.status;
        cr_assert_eq(h.length, h.status == 0 ? 8 * 256 : 0);
    }
    uint32_t served = 0, busy = 0;
    for (uint32_t i = 0; i < BIG; i++)
        cr_assert_eq(status[i], KVRT_ERR_REQUEST_LIMIT, "message %u: %d", i, status[i]);
    for (uint32_t i = BIG; i < BIG + FULL; i++) {
        cr_assert(status[i] == KVRT_OK || status[i] == KVRT_ERR_BUSY, "message %u: %d", i,
                  status[i]);
        served += status[i] == KVRT_OK;
        busy += status[i] == KVRT_ERR_BUSY;
    }
    cr_assert_geq(served, 1);
    cr_assert_geq(busy, 1, "16 x 256 MiB of hashing queued at once, none refused");
    cr_assert_eq(txu_stat(ctx, "xfer.0.hash_refused"), BIG + busy);

    close(r.fd);
    ASSERT_OK(octx, kvrt_xfer_deregister(lb));
    ASSERT_OK(octx, kvrt_xfer_agent_destroy(other));
    kvrt_ctx_destroy(octx);
    cr_assert_eq(txu_stat_drained(ctx, "xfer.0.peers", 5000), 0);
    ASSERT_OK(ctx, kvrt_xfer_deregister(plain));
    ASSERT_OK(ctx, kvrt_xfer_deregister(pr));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(victim));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    kvrt_ctx_destroy(ctx);
    free(mem);
    free(back);
}

/*
 * test_kv_block_table.c - block tables: growth a block at a time, slot
 * mapping, truncate, copy-on-write fork, adopt, export, stale ids, and
 * failures that leave everything unchanged.
 */
#include <string.h>

#include "test_helpers.h"

static kvrt_ctx_t *ctx;
static void setup(void) { cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK); }
static void teardown(void) { kvrt_ctx_destroy(ctx); }
TestSuite(kv_block_table, .init = setup, .fini = teardown);

static uint32_t tokens_of(kvrt_pool_t *pool, kvrt_table_id_t t, const int32_t **blocks,
                          uint32_t *num_blocks)
{
    uint32_t tokens = 0;
    ASSERT_OK(ctx, kvrt_table_view(pool, t, blocks, num_blocks, &tokens));
    return tokens;
}

Test(kv_block_table, grows_one_block_at_a_time_with_correct_slots)
{
    kvrt_pool_t *pool = test_pool(ctx, 64, 16);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    int64_t slots[40];
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 10, slots, NULL, NULL));
    const int32_t *blocks;
    uint32_t nb;
    cr_assert_eq(tokens_of(pool, t, &blocks, &nb), 10);
    cr_assert_eq(nb, 1);
    for (int i = 0; i < 10; i++)
        cr_assert_eq(slots[i], (int64_t)blocks[0] * 16 + i);
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 6, slots, NULL, NULL)); /* fills block 0 exactly */
    tokens_of(pool, t, &blocks, &nb);
    cr_assert_eq(nb, 1);
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 1, slots, NULL, NULL));
    tokens_of(pool, t, &blocks, &nb);
    cr_assert_eq(nb, 2);
    cr_assert_eq(slots[0], (int64_t)blocks[1] * 16);
    /* A long append spanning several blocks maps every token. */
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 40, slots, NULL, NULL));
    cr_assert_eq(tokens_of(pool, t, &blocks, &nb), 57);
    cr_assert_eq(nb, 4);
    for (int i = 0; i < 40; i++) {
        uint32_t pos = 17 + (uint32_t)i;
        cr_assert_eq(slots[i], (int64_t)blocks[pos / 16] * 16 + pos % 16, "token %u", pos);
    }
    int64_t again[57];
    ASSERT_OK(ctx, kvrt_table_slots(pool, t, 0, 57, again));
    for (uint32_t pos = 0; pos < 57; pos++)
        cr_assert_eq(again[pos], (int64_t)blocks[pos / 16] * 16 + pos % 16);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_slots(pool, t, 50, 8, again));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_block_table, truncate_frees_trailing_blocks)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 13, NULL, NULL, NULL)); /* 4 blocks */
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 4);
    ASSERT_OK(ctx, kvrt_table_truncate(pool, t, 9)); /* 3 blocks */
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 3);
    ASSERT_OK(ctx, kvrt_table_truncate(pool, t, 8)); /* 2 blocks, exactly full */
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 2);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_truncate(pool, t, 9));
    ASSERT_OK(ctx, kvrt_table_truncate(pool, t, 0));
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 0);
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 3, NULL, NULL, NULL));
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_block_table, fork_shares_full_blocks_and_copies_the_partial_one)
{
    kvrt_pool_t *pool = test_pool(ctx, 32, 4);
    kvrt_table_id_t parent, kids[3];
    kvrt_block_copy_t copies[3];
    uint32_t n_copies = 99;
    ASSERT_OK(ctx, kvrt_table_create(pool, &parent));
    ASSERT_OK(ctx, kvrt_table_append(pool, parent, 10, NULL, NULL, NULL)); /* 2 full + 2 tokens */
    ASSERT_OK(ctx, kvrt_table_fork(pool, parent, 3, kids, copies, &n_copies));
    cr_assert_eq(n_copies, 3);
    const int32_t *pb, *kb;
    uint32_t pn, kn;
    tokens_of(pool, parent, &pb, &pn);
    for (int c = 0; c < 3; c++) {
        cr_assert_eq(tokens_of(pool, kids[c], &kb, &kn), 10);
        cr_assert_eq(kn, 3);
        cr_assert_eq(kb[0], pb[0]);
        cr_assert_eq(kb[1], pb[1]);
        cr_assert_neq(kb[2], pb[2], "partial block must not be shared");
        cr_assert_eq(copies[c].src_block, pb[2]);
        cr_assert_eq(copies[c].dst_block, kb[2]);
    }
    uint32_t rc;
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, pb[0], &rc));
    cr_assert_eq(rc, 4);
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, pb[2], &rc));
    cr_assert_eq(rc, 1);
    /* Children evolve independently. */
    int64_t slot;
    ASSERT_OK(ctx, kvrt_table_append(pool, kids[0], 1, &slot, NULL, NULL));
    tokens_of(pool, kids[0], &kb, &kn);
    cr_assert_eq(slot, (int64_t)kb[2] * 4 + 2);
    cr_assert_eq(tokens_of(pool, parent, NULL, NULL), 10);
    for (int c = 0; c < 3; c++)
        ASSERT_OK(ctx, kvrt_table_destroy(pool, kids[c]));
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, pb[0], &rc));
    cr_assert_eq(rc, 1);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_block_table, append_into_a_shared_partial_block_copies_it_first)
{
    kvrt_pool_t *pool = test_pool(ctx, 32, 4);
    kvrt_table_id_t parent, kid;
    kvrt_block_copy_t copy;
    uint32_t n_copies;
    ASSERT_OK(ctx, kvrt_table_create(pool, &parent));
    ASSERT_OK(ctx, kvrt_table_append(pool, parent, 8, NULL, NULL, NULL)); /* 2 full blocks */
    ASSERT_OK(ctx, kvrt_table_fork(pool, parent, 1, &kid, &copy, &n_copies));
    cr_assert_eq(n_copies, 0, "aligned fork needs no copy");
    /* Roll the child back into the shared second block (speculative
     * rollback across a fork point): that block is now partial and shared. */
    ASSERT_OK(ctx, kvrt_table_truncate(pool, kid, 6));
    const int32_t *kb, *pb;
    tokens_of(pool, kid, &kb, NULL);
    tokens_of(pool, parent, &pb, NULL);
    int32_t shared = kb[1];
    cr_assert_eq(shared, pb[1]);
    /* Without a place for the copy, the append is refused and nothing changes. */
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_append(pool, kid, 1, NULL, NULL, NULL));
    cr_assert_eq(tokens_of(pool, kid, NULL, NULL), 6);
    int64_t slot;
    ASSERT_OK(ctx, kvrt_table_append(pool, kid, 1, &slot, &copy, &n_copies));
    cr_assert_eq(n_copies, 1);
    tokens_of(pool, kid, &kb, NULL);
    cr_assert_eq(copy.src_block, shared);
    cr_assert_eq(copy.dst_block, kb[1]);
    cr_assert_neq(kb[1], shared);
    cr_assert_eq(slot, (int64_t)kb[1] * 4 + 2);
    uint32_t rc;
    ASSERT_OK(ctx, kvrt_pool_refcount(pool, shared, &rc));
    cr_assert_eq(rc, 1, "the parent keeps the original alone");
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_block_table, failed_calls_change_nothing)
{
    kvrt_pool_t *pool = test_pool(ctx, 6, 4); /* 5 usable blocks */
    kvrt_table_id_t t, other;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 6, NULL, NULL, NULL)); /* 2 blocks */
    ASSERT_OK(ctx, kvrt_table_create(pool, &other));
    ASSERT_OK(ctx, kvrt_table_append(pool, other, 8, NULL, NULL, NULL)); /* 2 blocks */
    kvrt_pool_info_t before, after;
    kvrt_pool_info(pool, &before);
    int64_t slots[16] = {0};
    /* 6 + 11 = 17 tokens needs 5 blocks; 3 more but 1 free. */
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_table_append(pool, t, 11, slots, NULL, NULL));
    cr_assert_eq(slots[0], 0, "slots written on failure");
    kvrt_table_id_t kids[4] = {0};
    kvrt_block_copy_t copies[4];
    uint32_t n = 7;
    ASSERT_STATUS(KVRT_ERR_NO_BLOCKS, kvrt_table_fork(pool, t, 4, kids, copies, &n));
    cr_assert_eq(kids[0], 0);
    cr_assert_eq(n, 7);
    kvrt_pool_info(pool, &after);
    cr_assert_eq(memcmp(&before, &after, sizeof(before)), 0);
    cr_assert_eq(tokens_of(pool, t, NULL, NULL), 6);
    ASSERT_OK(ctx, kvrt_pool_verify(pool));
}

Test(kv_block_table, stale_and_made_up_ids_are_refused)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    kvrt_table_id_t t, reused;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_destroy(pool, t));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_append(pool, t, 1, NULL, NULL, NULL));
    /* The slot is reused under a new generation; the old id stays dead. */
    ASSERT_OK(ctx, kvrt_table_create(pool, &reused));
    cr_assert_neq(reused, t);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_truncate(pool, t, 0));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_view(pool, 0, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_view(pool, 0xdeadbeefcafeull, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_view(pool, reused + 2, NULL, NULL, NULL));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "unknown or destroyed"));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_append(NULL, reused, 1, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_append(pool, reused, 0, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_table_create(pool, NULL));
}

Test(kv_block_table, a_table_id_of_another_pool_is_refused)
{
    /* Two pools of one engine (a hybrid model's full-attention and
     * sliding-window groups) and a pool recreated after the first was
     * destroyed: each pool's first table sits in slot 0, yet no pool
     * answers to another's id. */
    kvrt_pool_t *full = test_pool(ctx, 16, 4), *window = test_pool(ctx, 16, 4);
    kvrt_table_id_t a, b;
    ASSERT_OK(ctx, kvrt_table_create(full, &a));
    ASSERT_OK(ctx, kvrt_table_create(window, &b));
    cr_assert_neq(a, b);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_append(window, a, 1, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_destroy(full, b));
    ASSERT_OK(ctx, kvrt_table_append(full, a, 5, NULL, NULL, NULL));
    ASSERT_OK(ctx, kvrt_pool_destroy(full));
    kvrt_pool_t *again = test_pool(ctx, 16, 4);
    kvrt_table_id_t c;
    ASSERT_OK(ctx, kvrt_table_create(again, &c));
    cr_assert_neq(c, a);
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_TABLE, kvrt_table_truncate(again, a, 0));
    const int32_t *blocks;
    uint32_t nb;
    cr_assert_eq(tokens_of(window, b, &blocks, &nb), 0, "nothing happened to it");
    cr_assert_eq(tokens_of(again, c, &blocks, &nb), 0);
    ASSERT_OK(ctx, kvrt_pool_verify(window));
    ASSERT_OK(ctx, kvrt_pool_verify(again));
}

Test(kv_block_table, table_limit_is_enforced)
{
    kvrt_pool_params_t p = {.field_mask = KVRT_POOL_PARAM_MAX_TABLES, .layout = test_layout(4),
                            .num_blocks = 16, .max_tables = 2};
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &p, &pool));
    kvrt_table_id_t a, b, c;
    ASSERT_OK(ctx, kvrt_table_create(pool, &a));
    ASSERT_OK(ctx, kvrt_table_create(pool, &b));
    ASSERT_STATUS(KVRT_ERR_NO_TABLES, kvrt_table_create(pool, &c));
    kvrt_block_copy_t copy;
    uint32_t n;
    ASSERT_STATUS(KVRT_ERR_NO_TABLES, kvrt_table_fork(pool, a, 1, &c, &copy, &n));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, b));
    ASSERT_OK(ctx, kvrt_table_fork(pool, a, 1, &c, &copy, &n));
}

Test(kv_block_table, export_pads_with_the_null_block)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 9, NULL, NULL, NULL)); /* 3 blocks */
    int32_t row[8];
    uint32_t count = 0;
    memset(row, 0x55, sizeof(row));
    ASSERT_OK(ctx, kvrt_table_export(pool, t, row, 8, 6, &count));
    cr_assert_eq(count, 3);
    const int32_t *blocks;
    tokens_of(pool, t, &blocks, NULL);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(row[i], blocks[i]);
    for (int i = 3; i < 6; i++)
        cr_assert_eq(row[i], KVRT_NULL_BLOCK);
    cr_assert_eq(row[6], 0x55555555, "wrote past pad_to");
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_table_export(pool, t, row, 8, 2, &count));
    ASSERT_STATUS(KVRT_ERR_BUFFER_TOO_SMALL, kvrt_table_export(pool, t, row, 2, 0, &count));
    ASSERT_OK(ctx, kvrt_table_export(pool, t, row, 3, 0, &count));
}

Test(kv_block_table, adopt_takes_over_caller_references)
{
    kvrt_pool_t *pool = test_pool(ctx, 16, 4);
    int32_t held[2];
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 2, held));
    kvrt_table_id_t t;
    ASSERT_OK(ctx, kvrt_table_create(pool, &t));
    ASSERT_OK(ctx, kvrt_table_adopt(pool, t, 2, held));
    cr_assert_eq(tokens_of(pool, t, NULL, NULL), 8);
    ASSERT_OK(ctx, kvrt_table_append(pool, t, 1, NULL, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_BAD_STATE, kvrt_table_adopt(pool, t, 1, held));
    ASSERT_OK(ctx, kvrt_table_truncate(pool, t, 8));
    ASSERT_STATUS(KVRT_ERR_UNKNOWN_BLOCK, kvrt_table_adopt(pool, t, 1, (int32_t[]){9}));
    ASSERT_OK(ctx, kvrt_table_destroy(pool, t));
    kvrt_pool_info_t info;
    kvrt_pool_info(pool, &info);
    cr_assert_eq(info.used_blocks, 0);
    cr_assert_eq(info.free_blocks, 15);
}

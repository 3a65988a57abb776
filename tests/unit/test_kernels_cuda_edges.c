/*
 * test_kernels_cuda_edges.c - the CUDA kernels at their edges, against the
 * CPU references: every cache dtype x head_dim (64/128/256, and 36 for the
 * simple path) x group size x split or not, sequences of 0 and 1 tokens and
 * a last partial block; an empty batch; pointers not aligned to their
 * elements; a sequence of 2^31 - 64 tokens; a pool past 4 GiB. Each test
 * pins a mistake a review found (named in its comment). Without a GPU the
 * device tests skip with the reason; the argument refusals, which come
 * before any device work, are checked on every machine.
 */
#include <criterion/criterion.h>
#include <stdio.h>

#include "kvrt/kernels.h"
#include "test_kernels_cuda_twin.h"

/* Sides whose refusals are checked: the CPU reference, and the CUDA
 * variants when built (their checks run before they look for a device;
 * without CUDA they are stubs answering KVRT_ERR_NO_GPU). */
#if KVRT_HAVE_CUDA
#define CHECKED_SIDES 2
#else
#define CHECKED_SIDES 1
#endif

/*
 * Refused before any launch: a cache base, scales, rows, queries, outputs
 * or index arrays not aligned to their element size. Before the check a
 * GPU took the vector path on an odd key pointer (a misaligned 16-bit load
 * faults and ends the CUDA context); the CPU did typed loads through it.
 * Both sides refuse with the same status, and the device stays usable.
 */
Test(kernels_cuda_edges, misaligned_pointers_are_refused_before_any_work)
{
    bool gpu = gpu_present();
    uint64_t cache_words[1024], scales_words[4] = {0};
    char *host = (char *)cache_words;
    char *mem = host; /* where the buffers live for the CUDA variant */
#if KVRT_HAVE_CUDA
    if (gpu)
        mem = to_device(NULL, sizeof cache_words);
#else
    (void)gpu;
#endif
    kvrt_kv_layout_t l = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 8,
                          .tokens_per_block = 4};
    kvrt_kv_cache_t cache = {.layout = l, .num_blocks = 2, .base = mem};
    kvrt_ctx_t *ctx = NULL;
    cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
    for (int side = 0; side < CHECKED_SIDES; side++) {
        bool cuda = side == 1;
        char *m = cuda ? mem : host;
        kvrt_kv_cache_t c = cache;
        c.base = m;
        int64_t *slots = (int64_t *)(m + 512);
        kvrt_kv_rows_t rows = {.num_tokens = 1, .dtype = KVRT_DTYPE_FP16, .slot_mapping = slots};
        kvrt_status_t st;
        /* An odd key pointer for FP16 rows. */
        st = cuda ? kvrt_cuda_write_kv(ctx, &c, &rows, m + 641, m + 704, NULL)
                  : kvrt_cpu_write_kv(ctx, &c, &rows, m + 641, m + 704);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: odd key", side);
        cr_assert_not_null(strstr(kvrt_ctx_last_error(ctx), "aligned"), "%s",
                           kvrt_ctx_last_error(ctx));
        /* FP32 output rows 2 bytes off. */
        rows.dtype = KVRT_DTYPE_FP32;
        st = cuda ? kvrt_cuda_read_kv(ctx, &c, &rows, m + 640, m + 706, NULL)
                  : kvrt_cpu_read_kv(ctx, &c, &rows, m + 640, m + 706);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: value_out + 2", side);
        /* A slot mapping 4 bytes off. */
        rows.dtype = KVRT_DTYPE_FP16;
        rows.slot_mapping = (int64_t *)(m + 516);
        st = cuda ? kvrt_cuda_write_kv(ctx, &c, &rows, m + 640, m + 704, NULL)
                  : kvrt_cpu_write_kv(ctx, &c, &rows, m + 640, m + 704);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: slot_mapping + 4", side);
        /* An FP16 cache at an odd base. */
        int32_t blocks[2] = {0, 1};
        kvrt_kv_cache_t odd = c;
        odd.base = m + 1;
        odd.num_blocks = 1;
        st = cuda ? kvrt_cuda_gather_blocks(ctx, &odd, (int32_t *)(m + 768), 1, m + 1024, NULL)
                  : kvrt_cpu_gather_blocks(ctx, &odd, blocks, 1, m + 1024);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: odd cache base", side);
        /* Block ids and copy pairs 2 bytes off. */
        const int32_t *odd_blocks = (const int32_t *)(m + 770);
        st = cuda ? kvrt_cuda_scatter_blocks(ctx, &c, m + 1024, odd_blocks, 1, NULL)
                  : kvrt_cpu_scatter_blocks(ctx, &c, m + 1024, odd_blocks, 1);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: blocks + 2", side);
        const kvrt_block_copy_t *odd_copies = (const kvrt_block_copy_t *)(m + 770);
        st = cuda ? kvrt_cuda_copy_blocks(ctx, &c, odd_copies, 1, NULL)
                  : kvrt_cpu_copy_blocks(ctx, &c, odd_copies, 1);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: copies + 2", side);
        /* FP8 scales 1 byte off. */
        kvrt_kv_cache_t fp8 = c;
        fp8.layout.field_mask = KVRT_LAYOUT_FIELD_DTYPE;
        fp8.layout.dtype = KVRT_DTYPE_FP8_E4M3;
        fp8.field_mask = KVRT_KV_CACHE_FIELD_SCALES;
        fp8.k_scales = (float *)((char *)scales_words + 1);
        fp8.v_scales = (float *)scales_words;
        st = cuda ? kvrt_cuda_gather_blocks(ctx, &fp8, (int32_t *)(m + 768), 1, m + 1024, NULL)
                  : kvrt_cpu_gather_blocks(ctx, &fp8, blocks, 1, m + 1024);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: k_scales + 1", side);
        /* Attention: an odd FP16 query, then block tables 2 bytes off. */
        kvrt_decode_attention_t a = {.num_seqs = 1, .num_q_heads = 1,
                                     .q_dtype = KVRT_DTYPE_FP16, .query = m + 801,
                                     .block_tables = (int32_t *)(m + 768), .table_stride = 1,
                                     .seq_lens = (int32_t *)(m + 776), .out = m + 832};
        st = cuda ? kvrt_cuda_decode_attention(ctx, &c, &a, NULL)
                  : kvrt_cpu_decode_attention(ctx, &c, &a);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: odd query", side);
        a.query = m + 800;
        a.block_tables = (int32_t *)(m + 770);
        st = cuda ? kvrt_cuda_decode_attention(ctx, &c, &a, NULL)
                  : kvrt_cpu_decode_attention(ctx, &c, &a);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: block_tables + 2", side);
        a.block_tables = (int32_t *)(m + 768);
        a.out = m + 834; /* FP32 output 2 bytes off */
        st = cuda ? kvrt_cuda_decode_attention(ctx, &c, &a, NULL)
                  : kvrt_cpu_decode_attention(ctx, &c, &a);
        cr_assert_eq(st, KVRT_ERR_INVALID_ARG, "side %d: out + 2", side);
    }
#if KVRT_HAVE_CUDA
    if (gpu) {
        cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess, "the device is still usable");
        cudaFree(mem);
    }
#endif
    kvrt_ctx_destroy(ctx);
}

#if KVRT_HAVE_CUDA

/*
 * An empty batch (a step with no decodes) is a no-op. The planner divided
 * by the workspace bytes per piece, which is 0 for 0 sequences: the host
 * process died with SIGFPE in both entry points.
 */
Test(kernels_cuda_edges, an_empty_batch_is_a_no_op)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    kvrt_kv_layout_t l = {.num_layers = 1, .num_kv_heads = 2, .head_dim = 128,
                          .tokens_per_block = 16};
    void *base = to_device(NULL, oracle_cache_bytes(&l, 4));
    kvrt_kv_cache_t cache = {.layout = l, .num_blocks = 4, .base = base};
    kvrt_decode_attention_t a = {.num_seqs = 0, .num_q_heads = 8, .q_dtype = KVRT_DTYPE_FP32,
                                 .table_stride = 64};
    uint64_t bytes = 7;
    cr_assert_eq(kvrt_cuda_decode_attention_workspace(NULL, &cache, &a, &bytes), KVRT_OK);
    cr_assert_eq(bytes, 0, "nothing to split");
    cr_assert_eq(kvrt_cuda_decode_attention(NULL, &cache, &a, NULL), KVRT_OK);
    void *ws = to_device(NULL, 4096);
    a.field_mask = KVRT_ATTN_FIELD_WORKSPACE;
    a.workspace = ws;
    a.workspace_bytes = 4096;
    cr_assert_eq(kvrt_cuda_decode_attention(NULL, &cache, &a, NULL), KVRT_OK);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cudaFree(ws);
    cudaFree(base);
}

/* out (in out_dtype) agrees with the CPU's: 1e-4 relative in FP32, one
 * rounding step of FP16 (2^-11) or BF16 (2^-8) with margin otherwise. */
static void assert_out_close(const void *cpu, const void *gpu, kvrt_dtype_t dtype, size_t n,
                             const char *what)
{
    double tol = dtype == KVRT_DTYPE_FP32 ? 1e-4 : dtype == KVRT_DTYPE_FP16 ? 1e-3 : 8e-3;
    for (size_t i = 0; i < n; i++) {
        double x = oracle_load(cpu, dtype, i), y = oracle_load(gpu, dtype, i);
        cr_assert_leq(fabs(x - y), tol * (1 + fabs(x)), "%s elem %zu: cpu %g gpu %g", what, i,
                      x, y);
    }
}

static size_t io_bytes(kvrt_dtype_t dtype) { return dtype == KVRT_DTYPE_FP32 ? 4 : 2; }

typedef struct attn_case {
    kvrt_dtype_t dtype;
    uint32_t dim, group, tpb;
    int arrangement;     /* format | order << 1 */
    kvrt_dtype_t q_dtype; /* and out_dtype */
} attn_case_t;

/* Sequences of 0, 1, tpb + 3 (a partial second block) and 1200 tokens. */
static void run_attention_case(const attn_case_t *k, uint64_t *rng)
{
    kvrt_kv_layout_t l = {.field_mask = KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT |
                                        KVRT_LAYOUT_FIELD_ORDER,
                          .num_layers = 2, .num_kv_heads = 2, .head_dim = k->dim,
                          .tokens_per_block = k->tpb, .dtype = k->dtype,
                          .format = (kvrt_kv_format_t)(k->arrangement & 1),
                          .order = (kvrt_kv_order_t)(k->arrangement >> 1)};
    enum { SEQS = 4, LONGEST = 1200, BLOCKS = 48 };
    int32_t lens[SEQS] = {0, 1, (int32_t)k->tpb + 3, LONGEST};
    uint32_t stride = (LONGEST + k->tpb - 1) / k->tpb;
    twin_t t;
    twin_init(&t, rng, &l, BLOCKS,
              k->arrangement & 1 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD);
    twin_bound_values(&t, rng);
    int32_t *tables = malloc(SEQS * stride * sizeof(int32_t));
    for (uint32_t i = 0; i < SEQS * stride; i++)
        tables[i] = (int32_t)test_rand_below(rng, BLOCKS);
    uint32_t q_heads = l.num_kv_heads * k->group;
    size_t n = (size_t)SEQS * q_heads * k->dim, eb = io_bytes(k->q_dtype);
    void *query = malloc(n * eb), *out_cpu = malloc(n * eb), *out_gpu = malloc(n * eb);
    oracle_fill_values(rng, query, k->q_dtype, n, 1.0f);
    void *d_query = to_device(query, n * eb), *d_out = to_device(NULL, n * eb);
    int32_t *d_tables = to_device(tables, SEQS * stride * 4), *d_lens = to_device(lens, SEQS * 4);
    kvrt_decode_attention_t a = {.field_mask = KVRT_ATTN_FIELD_OUT_DTYPE, .layer = 1,
                                 .num_seqs = SEQS, .num_q_heads = q_heads,
                                 .q_dtype = k->q_dtype, .query = query, .block_tables = tables,
                                 .table_stride = stride, .seq_lens = lens,
                                 .out_dtype = k->q_dtype, .out = out_cpu};
    cr_assert_eq(kvrt_cpu_decode_attention(NULL, &t.host, &a), KVRT_OK);
    a.query = d_query;
    a.block_tables = d_tables;
    a.seq_lens = d_lens;
    a.out = d_out;
    char what[128];
    snprintf(what, sizeof what, "dtype %d dim %u group %u tpb %u arrangement %d q %d",
             (int)k->dtype, k->dim, k->group, k->tpb, k->arrangement, (int)k->q_dtype);
    for (int split = 0; split < 2; split++) {
        void *ws = NULL;
        if (split) {
            ws = attach_workspace(&t.dev, &a);
            if (k->dim % 8 == 0) /* the simple path never splits */
                cr_assert_not_null(ws, "%s: 1200 tokens on a few CUDA blocks must split", what);
        }
        cr_assert_eq(cudaMemset(d_out, 0xff, n * eb), cudaSuccess); /* NaN: all written */
        cr_assert_eq(kvrt_cuda_decode_attention(NULL, &t.dev, &a, NULL), KVRT_OK, "%s", what);
        from_device(out_gpu, d_out, n * eb);
        assert_out_close(out_cpu, out_gpu, k->q_dtype, n, what);
        cudaFree(ws);
    }
    free_buffers((void *[]){d_query, d_out, d_tables, d_lens, NULL},
                 (void *[]){tables, query, out_cpu, out_gpu, NULL});
    twin_fini(&t);
}

/*
 * Every cache dtype x head_dim 64/128/256 (the main path's three widths)
 * and 36 (the simple path) x groups of 1, 4 and 8 query heads per KV head,
 * each unsplit and split into pieces, against the CPU reference; block
 * sizes 16/32/64, the four arrangements, FP8 per-head and per-block scales
 * and FP32/FP16/BF16 queries and outputs rotate through the cases.
 */
Test(kernels_cuda_edges, attention_matches_the_cpu_for_every_dtype_dim_group_and_split,
     .timeout = 240)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3};
    static const kvrt_dtype_t qs[] = {KVRT_DTYPE_FP32, KVRT_DTYPE_FP16, KVRT_DTYPE_BF16};
    static const uint32_t dims[] = {64, 128, 256, 36};
    static const uint32_t groups[] = {1, 4, 8};
    static const uint32_t tpbs[] = {16, 32, 64};
    uint64_t rng = 2026;
    uint32_t c = 0;
    for (int d = 0; d < 3; d++)
        for (int m = 0; m < 4; m++)
            for (int g = 0; g < 3; g++, c++) {
                attn_case_t k = {.dtype = dtypes[d], .dim = dims[m], .group = groups[g],
                                 .tpb = tpbs[c % 3], .arrangement = (int)((c / 3) % 4),
                                 .q_dtype = qs[(c / 2) % 3]};
                run_attention_case(&k, &rng);
            }
}

/*
 * A sequence of 2^31 - 64 tokens (a table of 2^25 - 1 entries of 64-token
 * blocks, the longest kvrt accepts), every id invalid except the first and
 * the last: the result is attention over those two blocks. Token indices
 * were int32: near the end, index + lookahead wrapped negative and the
 * kernel read block ids before the table (and looped on).
 */
Test(kernels_cuda_edges, a_sequence_of_2g_tokens_reads_nothing_past_its_table, .timeout = 240)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    kvrt_kv_layout_t l = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 64,
                          .tokens_per_block = 64};
    uint64_t rng = 31;
    twin_t t;
    twin_init(&t, &rng, &l, 2, KVRT_SCALE_PER_HEAD);
    twin_bound_values(&t, &rng);
    uint32_t stride = (1u << 25) - 1;
    int32_t len = (int32_t)(stride * 64u), first = 1, last = 0;
    int32_t *d_table = NULL;
    cr_assert_eq(cudaMalloc((void **)&d_table, (size_t)stride * 4), cudaSuccess);
    cr_assert_eq(cudaMemset(d_table, 0xff, (size_t)stride * 4), cudaSuccess); /* ids -1 */
    cudaMemcpy(d_table, &first, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(d_table + stride - 1, &last, 4, cudaMemcpyHostToDevice);
    float query[64], out_cpu[64], out_gpu[64];
    oracle_fill_values(&rng, query, KVRT_DTYPE_FP32, 64, 1.0f);
    int32_t table2[2] = {first, last}, len2 = 128;
    kvrt_decode_attention_t a = {.num_seqs = 1, .num_q_heads = 1, .q_dtype = KVRT_DTYPE_FP32,
                                 .query = query, .block_tables = table2, .table_stride = 2,
                                 .seq_lens = &len2, .out = out_cpu};
    cr_assert_eq(kvrt_cpu_decode_attention(NULL, &t.host, &a), KVRT_OK);
    void *d_query = to_device(query, sizeof query), *d_out = to_device(NULL, sizeof out_gpu);
    int32_t *d_len = to_device(&len, 4);
    a.query = d_query;
    a.block_tables = d_table;
    a.table_stride = stride;
    a.seq_lens = d_len;
    a.out = d_out;
    /* Split: a single CUDA block would take seconds over 2^31 tokens. */
    void *ws = attach_workspace(&t.dev, &a);
    cr_assert_not_null(ws);
    cr_assert_eq(kvrt_cuda_decode_attention(NULL, &t.dev, &a, NULL), KVRT_OK);
    from_device(out_gpu, d_out, sizeof out_gpu);
    assert_close(out_cpu, out_gpu, 64, 31);
    cudaFree(ws);
    cudaFree(d_query);
    cudaFree(d_out);
    cudaFree(d_len);
    cudaFree(d_table);
    twin_fini(&t);
}

/* ---- a pool past 4 GiB -------------------------------------------------- */

/* Copies the pages of `blocks` host -> device (to_dev) or checks that the
 * device holds what the host holds there. */
static void sync_pages(const kvrt_kv_cache_t *host, const kvrt_kv_cache_t *dev,
                       const int32_t *blocks, uint32_t count, bool to_dev, const char *what)
{
    uint64_t page = 0;
    kvrt_layout_page_bytes(&host->layout, &page);
    char *buf = malloc(page);
    for (uint32_t i = 0; i < count; i++)
        for (int half = 0; half < 2; half++) {
            uint64_t off = 0;
            cr_assert_eq(kvrt_layout_page_offset(&host->layout, host->num_blocks,
                                                 (uint32_t)blocks[i], 0, (kvrt_kv_half_t)half,
                                                 &off),
                         KVRT_OK);
            char *h = (char *)host->base + off, *d = (char *)dev->base + off;
            if (to_dev) {
                cr_assert_eq(cudaMemcpy(d, h, page, cudaMemcpyHostToDevice), cudaSuccess);
            } else {
                from_device(buf, d, page);
                cr_assert_eq(memcmp(buf, h, page), 0, "%s: block %d half %d differs", what,
                             blocks[i], half);
            }
        }
    free(buf);
}

/*
 * Offsets past 4 GiB: an 8 GiB layer-major cache whose last blocks' K
 * pages and every V page lie above 2^32 bytes. Attention, write, gather,
 * scatter and copy there agree with the CPU (a 32-bit product anywhere in
 * an address would land them 4 GiB low).
 */
Test(kernels_cuda_edges, a_pool_past_4_gib_is_addressed_in_full, .timeout = 120)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    kvrt_kv_layout_t l = {.num_layers = 1, .num_kv_heads = 8, .head_dim = 128,
                          .tokens_per_block = 16};
    uint32_t nb = (1u << 17) + 64; /* 32 KiB pages: K ends 2 MiB past 4 GiB */
    uint64_t bytes = oracle_cache_bytes(&l, nb), page = 32768;
    size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    if (free_bytes < bytes + (1ull << 30))
        cr_skip_test("needs %llu MiB of free device memory, %zu MiB free",
                     (unsigned long long)(bytes >> 20) + 1024, free_bytes >> 20);
    kvrt_kv_cache_t host = {.layout = l, .num_blocks = nb, .base = malloc(bytes)};
    cr_assert_not_null(host.base, "an 8 GiB host twin (pages untouched stay unallocated)");
    kvrt_kv_cache_t dev = host;
    cr_assert_eq(cudaMalloc(&dev.base, bytes), cudaSuccess);
    int32_t used[6] = {(int32_t)nb - 1, (int32_t)nb - 2, (int32_t)nb - 3, (int32_t)nb - 4, 5, 6};
    uint64_t rng = 4;
    for (int i = 0; i < 6; i++)
        for (int half = 0; half < 2; half++) {
            uint64_t off = 0;
            kvrt_layout_page_offset(&l, nb, (uint32_t)used[i], 0, (kvrt_kv_half_t)half, &off);
            oracle_fill_values(&rng, (char *)host.base + off, KVRT_DTYPE_FP16, page / 2, 1.0f);
        }
    sync_pages(&host, &dev, used, 6, true, "fill");

    /* Attention over high and low blocks, 32 query heads over 8. */
    int32_t tables[6] = {used[0], used[1], used[4], used[2], used[3], used[5]}, lens[2] = {40, 37};
    enum { QH = 32 };
    size_t n = 2 * QH * 128;
    float *query = malloc(n * 4), *out_cpu = malloc(n * 4), *out_gpu = malloc(n * 4);
    oracle_fill_values(&rng, query, KVRT_DTYPE_FP32, n, 1.0f);
    kvrt_decode_attention_t a = {.num_seqs = 2, .num_q_heads = QH, .q_dtype = KVRT_DTYPE_FP32,
                                 .query = query, .block_tables = tables, .table_stride = 3,
                                 .seq_lens = lens, .out = out_cpu};
    cr_assert_eq(kvrt_cpu_decode_attention(NULL, &host, &a), KVRT_OK);
    void *d_query = to_device(query, n * 4), *d_out = to_device(NULL, n * 4);
    int32_t *d_tables = to_device(tables, sizeof tables), *d_lens = to_device(lens, sizeof lens);
    a.query = d_query;
    a.block_tables = d_tables;
    a.seq_lens = d_lens;
    a.out = d_out;
    cr_assert_eq(kvrt_cuda_decode_attention(NULL, &dev, &a, NULL), KVRT_OK);
    from_device(out_gpu, d_out, n * 4);
    assert_close(out_cpu, out_gpu, n, 4);

    /* Rows written into the last block. */
    int64_t slots[3] = {(int64_t)(nb - 1) * 16, (int64_t)(nb - 1) * 16 + 5,
                        (int64_t)(nb - 1) * 16 + 15};
    size_t row_bytes = 8 * 128 * 2;
    uint16_t *kv = malloc(2 * 3 * row_bytes);
    oracle_fill_values(&rng, kv, KVRT_DTYPE_FP16, 2 * 3 * row_bytes / 2, 1.0f);
    kvrt_kv_rows_t rows = {.num_tokens = 3, .dtype = KVRT_DTYPE_FP16, .slot_mapping = slots};
    cr_assert_eq(kvrt_cpu_write_kv(NULL, &host, &rows, kv, (char *)kv + 3 * row_bytes), KVRT_OK);
    void *d_kv = to_device(kv, 2 * 3 * row_bytes);
    int64_t *d_slots = to_device(slots, sizeof slots);
    rows.slot_mapping = d_slots;
    cr_assert_eq(kvrt_cuda_write_kv(NULL, &dev, &rows, d_kv, (char *)d_kv + 3 * row_bytes, NULL),
                 KVRT_OK);
    sync_pages(&host, &dev, used, 1, false, "write_kv");

    /* Gather three blocks, scatter them elsewhere, copy one down low. */
    int32_t from[3] = {used[0], used[4], used[2]}, to[3] = {used[3], used[1], used[5]};
    uint64_t block_bytes = 2 * page;
    char *stage = malloc(3 * block_bytes), *stage_gpu = malloc(3 * block_bytes);
    cr_assert_eq(kvrt_cpu_gather_blocks(NULL, &host, from, 3, stage), KVRT_OK);
    int32_t *d_from = to_device(from, sizeof from), *d_to = to_device(to, sizeof to);
    void *d_stage = to_device(NULL, 3 * block_bytes);
    cr_assert_eq(kvrt_cuda_gather_blocks(NULL, &dev, d_from, 3, d_stage, NULL), KVRT_OK);
    from_device(stage_gpu, d_stage, 3 * block_bytes);
    cr_assert_eq(memcmp(stage, stage_gpu, 3 * block_bytes), 0, "gather");
    cr_assert_eq(kvrt_cpu_scatter_blocks(NULL, &host, stage, to, 3), KVRT_OK);
    cr_assert_eq(kvrt_cuda_scatter_blocks(NULL, &dev, d_stage, d_to, 3, NULL), KVRT_OK);
    sync_pages(&host, &dev, to, 3, false, "scatter");
    kvrt_block_copy_t copy = {.src_block = used[0], .dst_block = 7};
    void *d_copy = to_device(&copy, sizeof copy);
    cr_assert_eq(kvrt_cpu_copy_blocks(NULL, &host, &copy, 1), KVRT_OK);
    cr_assert_eq(kvrt_cuda_copy_blocks(NULL, &dev, d_copy, 1, NULL), KVRT_OK);
    int32_t seven = 7;
    sync_pages(&host, &dev, &seven, 1, false, "copy_blocks");

    cudaFree(d_copy);
    cudaFree(d_from);
    cudaFree(d_to);
    cudaFree(d_stage);
    cudaFree(d_kv);
    cudaFree(d_slots);
    cudaFree(d_query);
    cudaFree(d_out);
    cudaFree(d_tables);
    cudaFree(d_lens);
    cudaFree(dev.base);
    free(host.base);
    free(query);
    free(out_cpu);
    free(out_gpu);
    free(kv);
    free(stage);
    free(stage_gpu);
}

#endif /* KVRT_HAVE_CUDA */

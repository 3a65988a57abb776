/*
 * test_kernels_cuda.c - the CUDA kernels against the CPU references: the
 * same random input on both sides, results compared byte for byte (block
 * movement, FP8 quantization) or within float tolerance (attention, whose
 * summation order differs). Without a GPU these tests skip with the reason,
 * after checking that every kvrt_cuda_* call answers KVRT_ERR_NO_GPU.
 */
#include <criterion/criterion.h>

#include "kvrt/kernels.h"
#include "test_kernels_cuda_twin.h"

Test(kernels_cuda, without_a_gpu_every_call_says_no_gpu)
{
    if (gpu_present())
        cr_skip_test("a GPU is present; the no-GPU answers cannot be observed");
    uint64_t base[8]; /* aligned for the FP16 layout */
    kvrt_kv_cache_t cache = {.layout = {.num_layers = 1, .num_kv_heads = 1, .head_dim = 1,
                                        .tokens_per_block = 1},
                             .num_blocks = 2, .base = base};
    int64_t slot = 0;
    uint16_t row[1] = {0};
    int32_t block = 1;
    kvrt_kv_rows_t rows = {.num_tokens = 1, .dtype = KVRT_DTYPE_FP16, .slot_mapping = &slot};
    kvrt_block_copy_t copy = {.src_block = 0, .dst_block = 1};
    kvrt_decode_attention_t attn = {.num_q_heads = 1, .q_dtype = KVRT_DTYPE_FP32};
    int count = -1;
    cr_assert_eq(kvrt_cuda_device_count(&count), KVRT_ERR_NO_GPU);
    cr_assert_eq(count, -1, "not written on failure");
    cr_assert_eq(kvrt_cuda_write_kv(NULL, &cache, &rows, row, row, NULL), KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_read_kv(NULL, &cache, &rows, row, row, NULL), KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_gather_blocks(NULL, &cache, &block, 1, base, NULL), KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_scatter_blocks(NULL, &cache, base, &block, 1, NULL), KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_copy_blocks(NULL, &cache, &copy, 1, NULL), KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_decode_attention(NULL, &cache, &attn, NULL), KVRT_ERR_NO_GPU);
    uint64_t bytes = 7;
    cr_assert_eq(kvrt_cuda_decode_attention_workspace(NULL, &cache, &attn, &bytes),
                 KVRT_ERR_NO_GPU);
    cr_assert_eq(bytes, 7, "not written on failure");
    cr_assert_eq(kvrt_cuda_gather_blocks_to_host(NULL, &cache, &block, 1, base, NULL),
                 KVRT_ERR_NO_GPU);
    cr_assert_eq(kvrt_cuda_scatter_blocks_from_host(NULL, &cache, base, &block, 1, NULL),
                 KVRT_ERR_NO_GPU);
}

#if KVRT_HAVE_CUDA

Test(kernels_cuda, movement_matches_the_cpu_reference_bit_for_bit)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3};
    for (uint64_t seed = 1; seed <= 24; seed++) {
        uint64_t rng = seed;
        kvrt_kv_layout_t l = oracle_layout(&rng, dtypes[seed % 3]);
        twin_t t;
        twin_init(&t, &rng, &l, 3 + test_rand_below(&rng, 8),
                  seed % 2 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD);
        uint32_t row = l.num_kv_heads * l.head_dim;
        kvrt_dtype_t src = l.dtype == KVRT_DTYPE_FP8_E4M3
                               ? (seed % 4 < 2 ? KVRT_DTYPE_FP16 : KVRT_DTYPE_BF16)
                               : l.dtype;
        uint32_t n = 1 + test_rand_below(&rng, 64);
        uint64_t num_slots = (uint64_t)t.host.num_blocks * l.tokens_per_block;
        int64_t *slots = malloc(n * sizeof(int64_t));
        for (uint32_t i = 0; i < n; i++)
            slots[i] = test_rand_below(&rng, 8) == 0 ? -1 : (int64_t)((i * 37 + seed) % num_slots);
        for (uint32_t i = 0; i < n; i++) /* distinct slots: GPU order is unspecified */
            for (uint32_t j = 0; j < i; j++)
                if (slots[j] == slots[i])
                    slots[i] = -1;
        size_t rows_bytes = (size_t)n * row * 2;
        void *key = malloc(rows_bytes), *value = malloc(rows_bytes);
        oracle_fill_values(&rng, key, src, (size_t)n * row, 300.0f);
        oracle_fill_values(&rng, value, src, (size_t)n * row, 300.0f);
        void *d_key = to_device(key, rows_bytes), *d_value = to_device(value, rows_bytes);
        int64_t *d_slots = to_device(slots, n * sizeof(int64_t));
        kvrt_kv_rows_t rows = {.layer = test_rand_below(&rng, l.num_layers), .num_tokens = n,
                               .dtype = src, .slot_mapping = slots};
        cr_assert_eq(kvrt_cpu_write_kv(NULL, &t.host, &rows, key, value), KVRT_OK);
        rows.slot_mapping = d_slots;
        cr_assert_eq(kvrt_cuda_write_kv(NULL, &t.dev, &rows, d_key, d_value, NULL), KVRT_OK);
        twin_compare(&t, "write_kv");

        /* Read back as FP32 on both sides. */
        float *k_cpu = malloc((size_t)n * row * 4), *k_gpu = malloc((size_t)n * row * 4);
        float *v_cpu = malloc((size_t)n * row * 4);
        void *d_k = to_device(NULL, (size_t)n * row * 4), *d_v = to_device(NULL, (size_t)n * row * 4);
        rows.dtype = KVRT_DTYPE_FP32;
        rows.slot_mapping = slots;
        cr_assert_eq(kvrt_cpu_read_kv(NULL, &t.host, &rows, k_cpu, v_cpu), KVRT_OK);
        rows.slot_mapping = d_slots;
        cr_assert_eq(kvrt_cuda_read_kv(NULL, &t.dev, &rows, d_k, d_v, NULL), KVRT_OK);
        from_device(k_gpu, d_k, (size_t)n * row * 4);
        cr_assert_eq(memcmp(k_cpu, k_gpu, (size_t)n * row * 4), 0, "read_kv");
        if (l.dtype != KVRT_DTYPE_FP8_E4M3) { /* same dtype: the row-copy path */
            rows.dtype = l.dtype;
            rows.slot_mapping = slots;
            cr_assert_eq(kvrt_cpu_read_kv(NULL, &t.host, &rows, k_cpu, v_cpu), KVRT_OK);
            rows.slot_mapping = d_slots;
            cr_assert_eq(kvrt_cuda_read_kv(NULL, &t.dev, &rows, d_k, d_v, NULL), KVRT_OK);
            from_device(k_gpu, d_v, (size_t)n * row * 2);
            cr_assert_eq(memcmp(v_cpu, k_gpu, (size_t)n * row * 2), 0, "read_kv same dtype");
        }

        /* Gather every block (block 0 first), scatter it back rotated. */
        uint32_t nb = t.host.num_blocks;
        uint64_t block_bytes = t.bytes / nb;
        int32_t *blocks = malloc(nb * sizeof(int32_t));
        for (uint32_t i = 0; i < nb; i++)
            blocks[i] = (int32_t)i;
        int32_t *d_blocks = to_device(blocks, nb * sizeof(int32_t));
        char *stage_cpu = malloc(t.bytes), *stage_gpu = malloc(t.bytes);
        void *d_stage = to_device(NULL, t.bytes);
        cr_assert_eq(kvrt_cpu_gather_blocks(NULL, &t.host, blocks, nb, stage_cpu), KVRT_OK);
        cr_assert_eq(kvrt_cuda_gather_blocks(NULL, &t.dev, d_blocks, nb, d_stage, NULL), KVRT_OK);
        from_device(stage_gpu, d_stage, t.bytes);
        cr_assert_eq(memcmp(stage_cpu, stage_gpu, t.bytes), 0, "gather");
        for (uint32_t i = 0; i < nb; i++)
            blocks[i] = (int32_t)((i + 1) % nb);
        cudaMemcpy(d_blocks, blocks, nb * sizeof(int32_t), cudaMemcpyHostToDevice);
        cr_assert_eq(kvrt_cpu_scatter_blocks(NULL, &t.host, stage_cpu, blocks, nb), KVRT_OK);
        cr_assert_eq(kvrt_cuda_scatter_blocks(NULL, &t.dev, d_stage, d_blocks, nb, NULL), KVRT_OK);
        twin_compare(&t, "scatter");
        (void)block_bytes;

        /* Copy-on-write pairs, per-block scales included. */
        kvrt_block_copy_t copies[2] = {{.src_block = 0, .dst_block = (int32_t)nb - 1},
                                       {.src_block = 1, .dst_block = 1}};
        void *d_copies = to_device(copies, sizeof copies);
        cr_assert_eq(kvrt_cpu_copy_blocks(NULL, &t.host, copies, 2), KVRT_OK);
        cr_assert_eq(kvrt_cuda_copy_blocks(NULL, &t.dev, d_copies, 2, NULL), KVRT_OK);
        twin_compare(&t, "copy_blocks");

        cudaFree(d_key);
        cudaFree(d_value);
        cudaFree(d_slots);
        cudaFree(d_k);
        cudaFree(d_v);
        cudaFree(d_blocks);
        cudaFree(d_stage);
        cudaFree(d_copies);
        free(slots);
        free(key);
        free(value);
        free(k_cpu);
        free(k_gpu);
        free(v_cpu);
        free(blocks);
        free(stage_cpu);
        free(stage_gpu);
        twin_fini(&t);
    }
}

Test(kernels_cuda, decode_attention_matches_the_cpu_reference)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3};
    for (uint64_t seed = 1; seed <= 18; seed++) {
        uint64_t rng = seed;
        kvrt_kv_layout_t l = oracle_layout(&rng, dtypes[seed % 3]);
        twin_t t;
        twin_init(&t, &rng, &l, 2 + test_rand_below(&rng, 10),
                  seed % 2 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD);
        twin_bound_values(&t, &rng);
        uint32_t q_heads = l.num_kv_heads << test_rand_below(&rng, 4);
        uint32_t seqs = 1 + test_rand_below(&rng, 6), stride = 1 + test_rand_below(&rng, 4);
        int32_t *tables = malloc(seqs * stride * sizeof(int32_t)), *lens = malloc(seqs * 4);
        for (uint32_t s = 0; s < seqs; s++) {
            lens[s] = s == 0 ? 0 : (int32_t)test_rand_below(&rng, stride * l.tokens_per_block + 1);
            for (uint32_t b = 0; b < stride; b++)
                tables[s * stride + b] = (int32_t)test_rand_below(&rng, t.host.num_blocks);
        }
        size_t q_elems = (size_t)seqs * q_heads * l.head_dim;
        float *query = malloc(q_elems * 4), *out_cpu = malloc(q_elems * 4),
              *out_gpu = malloc(q_elems * 4);
        oracle_fill_values(&rng, query, KVRT_DTYPE_FP32, q_elems, 1.0f);
        void *d_query = to_device(query, q_elems * 4), *d_out = to_device(NULL, q_elems * 4);
        int32_t *d_tables = to_device(tables, seqs * stride * 4), *d_lens = to_device(lens, seqs * 4);
        kvrt_decode_attention_t a = {.layer = test_rand_below(&rng, l.num_layers), .num_seqs = seqs,
                                     .num_q_heads = q_heads, .q_dtype = KVRT_DTYPE_FP32,
                                     .query = query, .block_tables = tables,
                                     .table_stride = stride, .seq_lens = lens, .out = out_cpu};
        cr_assert_eq(kvrt_cpu_decode_attention(NULL, &t.host, &a), KVRT_OK);
        a.query = d_query;
        a.block_tables = d_tables;
        a.seq_lens = d_lens;
        a.out = d_out;
        cr_assert_eq(kvrt_cuda_decode_attention(NULL, &t.dev, &a, NULL), KVRT_OK);
        from_device(out_gpu, d_out, q_elems * 4);
        assert_close(out_cpu, out_gpu, q_elems, seed);
        /* The same call split into pieces where the plan splits at all. */
        void *ws = attach_workspace(&t.dev, &a);
        cr_assert_eq(kvrt_cuda_decode_attention(NULL, &t.dev, &a, NULL), KVRT_OK);
        from_device(out_gpu, d_out, q_elems * 4);
        assert_close(out_cpu, out_gpu, q_elems, seed);
        cudaFree(ws);
        cudaFree(d_query);
        cudaFree(d_out);
        cudaFree(d_tables);
        cudaFree(d_lens);
        free(tables);
        free(lens);
        free(query);
        free(out_cpu);
        free(out_gpu);
        twin_fini(&t);
    }
}



/*
 * Long sequences, every dtype, head_dim 64/128/256 and groups from 1 to 12
 * query heads per KV head (12 takes two query-head chunks), with the
 * workspace, so sequences split into pieces and merge; FP16 queries and
 * outputs; one table entry past the sequence holds an id the GPU must not
 * follow; half the cases give a max_seq_len hint below the longest
 * sequence. A head_dim of 36 takes the simple path.
 */
Test(kernels_cuda, decode_attention_splits_long_sequences_like_the_cpu)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    static const kvrt_dtype_t dtypes[] = {KVRT_DTYPE_FP16, KVRT_DTYPE_BF16, KVRT_DTYPE_FP8_E4M3};
    static const uint32_t dims[] = {64, 128, 256, 36};
    static const uint32_t groups[] = {1, 3, 8, 12};
    uint64_t rng = 99;
    for (int c = 0; c < 12; c++) {
        kvrt_kv_layout_t l = {.field_mask = KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT |
                                            KVRT_LAYOUT_FIELD_ORDER,
                              .num_layers = 2, .num_kv_heads = 2, .head_dim = dims[c % 4],
                              .tokens_per_block = 16, .dtype = dtypes[c % 3],
                              .format = (kvrt_kv_format_t)(c % 2),
                              .order = (kvrt_kv_order_t)((c / 2) % 2)};
        uint32_t seqs = 3, stride = 160, num_blocks = 200;
        twin_t t;
        twin_init(&t, &rng, &l, num_blocks, c % 2 ? KVRT_SCALE_PER_BLOCK : KVRT_SCALE_PER_HEAD);
        twin_bound_values(&t, &rng);
        uint32_t q_heads = l.num_kv_heads * groups[(c + c / 4) % 4];
        int32_t lens[3] = {2500, 17, 1031};
        int32_t *tables = malloc(seqs * stride * sizeof(int32_t));
        for (uint32_t i = 0; i < seqs * stride; i++)
            tables[i] = (int32_t)test_rand_below(&rng, num_blocks);
        tables[1 * stride + 2] = 1 << 30; /* past seq 1's 17 tokens: never read */
        size_t q_elems = (size_t)seqs * q_heads * l.head_dim;
        uint16_t *query = malloc(q_elems * 2), *out_gpu = malloc(q_elems * 2);
        uint16_t *out_cpu = malloc(q_elems * 2);
        oracle_fill_values(&rng, query, KVRT_DTYPE_FP16, q_elems, 1.0f);
        void *d_query = to_device(query, q_elems * 2), *d_out = to_device(NULL, q_elems * 2);
        int32_t *d_tables = to_device(tables, seqs * stride * 4), *d_lens = to_device(lens, 12);
        kvrt_decode_attention_t a = {.field_mask = KVRT_ATTN_FIELD_OUT_DTYPE |
                                                   KVRT_ATTN_FIELD_MAX_SEQ_LEN,
                                     .layer = 1, .num_seqs = seqs, .num_q_heads = q_heads,
                                     .q_dtype = KVRT_DTYPE_FP16, .query = query,
                                     .block_tables = tables, .table_stride = stride,
                                     .seq_lens = lens, .out_dtype = KVRT_DTYPE_FP16,
                                     .out = out_cpu,
                                     /* odd cases: a hint below the longest */
                                     .max_seq_len = c % 2 ? 1024 : 2560};
        cr_assert_eq(kvrt_cpu_decode_attention(NULL, &t.host, &a), KVRT_OK);
        a.query = d_query;
        a.block_tables = d_tables;
        a.seq_lens = d_lens;
        a.out = d_out;
        void *ws = attach_workspace(&t.dev, &a);
        if (l.head_dim % 8 == 0)
            cr_assert_not_null(ws, "2560 tokens on a few CUDA blocks must split");
        cr_assert_eq(kvrt_cuda_decode_attention(NULL, &t.dev, &a, NULL), KVRT_OK);
        from_device(out_gpu, d_out, q_elems * 2);
        for (size_t i = 0; i < q_elems; i++) {
            double x = kv_ref_f16(out_cpu[i]), y = kv_ref_f16(out_gpu[i]);
            /* FP16 output: 1e-4 in fp32 can still round to neighbouring halves. */
            cr_assert_leq(fabs(x - y), 1e-3 * (1 + fabs(x)), "case %d elem %zu: %g vs %g", c,
                          i, x, y);
        }
        cudaFree(ws); /* NULL when the simple path does not split */
        free_buffers((void *[]){d_query, d_out, d_tables, d_lens, NULL},
                     (void *[]){tables, query, out_cpu, out_gpu, NULL});
        twin_fini(&t);
    }
}

/*
 * Host staging in pinned memory: gather to the host and scatter back
 * (rotated) give what the CPU movers give on the host twin, for every
 * arrangement; pageable staging and a bad id are refused before anything
 * is enqueued.
 */
Test(kernels_cuda, host_staging_moves_match_the_cpu_movers)
{
    if (!gpu_present())
        cr_skip_test("no CUDA device (or kvrt built without CUDA)");
    cudaStream_t stream;
    cr_assert_eq(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    kvrt_cuda_stream_t *s = (kvrt_cuda_stream_t *)stream;
    for (uint64_t seed = 1; seed <= 16; seed++) {
        uint64_t rng = seed * 7;
        kvrt_kv_layout_t l = oracle_layout(&rng, seed % 2 ? KVRT_DTYPE_FP16 : KVRT_DTYPE_BF16);
        l.format = (kvrt_kv_format_t)(seed % 2);
        l.order = (kvrt_kv_order_t)((seed / 2) % 2);
        twin_t t;
        twin_init(&t, &rng, &l, 4 + test_rand_below(&rng, 8), KVRT_SCALE_PER_HEAD);
        uint32_t nb = t.host.num_blocks, n = nb - 1;
        int32_t *blocks = malloc(nb * sizeof(int32_t));
        for (uint32_t i = 0; i < n; i++) /* a run of neighbours, then a gap */
            blocks[i] = (int32_t)(i < n / 2 ? i + 1 : (i * 5 + seed) % nb);
        uint64_t bytes = t.bytes / nb * n;
        char *pinned = NULL, *stage_cpu = malloc(bytes);
        cr_assert_eq(cudaMallocHost((void **)&pinned, bytes), cudaSuccess);
        memset(pinned, 0xAB, bytes);
        cr_assert_eq(kvrt_cpu_gather_blocks(NULL, &t.host, blocks, n, stage_cpu), KVRT_OK);
        cr_assert_eq(kvrt_cuda_gather_blocks_to_host(NULL, &t.dev, blocks, n, pinned, s),
                     KVRT_OK);
        cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
        cr_assert_eq(memcmp(stage_cpu, pinned, bytes), 0, "seed %llu: gather to host",
                     (unsigned long long)seed);

        for (uint32_t i = 0; i < n; i++)
            blocks[i] = (int32_t)((i + seed) % nb); /* distinct: the last image wins */
        oracle_fill_bytes(&rng, pinned, bytes);
        memcpy(stage_cpu, pinned, bytes);
        cr_assert_eq(kvrt_cpu_scatter_blocks(NULL, &t.host, stage_cpu, blocks, n), KVRT_OK);
        cr_assert_eq(kvrt_cuda_scatter_blocks_from_host(NULL, &t.dev, pinned, blocks, n, s),
                     KVRT_OK);
        cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
        twin_compare(&t, "scatter from host");

        kvrt_ctx_t *ctx = NULL;
        cr_assert_eq(kvrt_ctx_create(NULL, &ctx), KVRT_OK);
        cr_assert_eq(kvrt_cuda_gather_blocks_to_host(ctx, &t.dev, blocks, n, stage_cpu, s),
                     KVRT_ERR_INVALID_ARG, "pageable staging");
        cr_assert_not_null(strstr(kvrt_ctx_last_error(ctx), "pinned"));
        blocks[n - 1] = (int32_t)nb;
        memset(pinned, 0xCD, bytes);
        cr_assert_eq(kvrt_cuda_gather_blocks_to_host(ctx, &t.dev, blocks, n, pinned, s),
                     KVRT_ERR_INVALID_ARG, "block id out of range");
        cr_assert_eq(cudaStreamSynchronize(stream), cudaSuccess);
        for (uint64_t i = 0; i < bytes; i++)
            cr_assert_eq((unsigned char)pinned[i], 0xCD, "nothing moved on a refusal");
        kvrt_ctx_destroy(ctx);
        cudaFreeHost(pinned);
        free(stage_cpu);
        free(blocks);
        twin_fini(&t);
    }
    cudaStreamDestroy(stream);
}

#endif /* KVRT_HAVE_CUDA */

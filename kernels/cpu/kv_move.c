/*
 * kv_move.c - CPU reference kernels that move K/V through a paged cache:
 * write and read by slot, gather/scatter whole blocks, copy blocks.
 *
 * These are the reference the CUDA kernels are tested against, and they
 * are also what a CPU tier or a test harness runs, so they move memory the
 * way memcpy likes it: one memcpy per token row (num_kv_heads * head_dim
 * contiguous elements) or per run of adjacent pages, never element loops,
 * except where a dtype conversion has to touch every element.
 *
 * Every function validates all of its input, index arrays included, before
 * it writes a byte.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kv_args.h"
#include "kv_numeric.h"
#include "kvrt/kernels.h"

static bool scale_ok(float s) { return isfinite(s) && s > 0.0f; }

/*
 * Checks every slot (and, for per-block FP8 scales, the scale of every
 * block a slot touches; per-head scales of the layer are checked once).
 */
static kvrt_status_t check_slots(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                 const kvrt_kv_cache_t *cache, const kvrt_kv_rows_t *rows)
{
    for (uint32_t i = 0; i < rows->num_tokens; i++) {
        int64_t slot = rows->slot_mapping[i];
        if (slot >= 0 && (uint64_t)slot >= g->num_slots)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "slot_mapping[%u] = %lld is outside the cache's %llu slots", i,
                              (long long)slot, (unsigned long long)g->num_slots);
        if (g->fp8 && slot >= 0 && g->scale_mode == KVRT_SCALE_PER_BLOCK) {
            uint64_t s = kv_scale_index(g, rows->layer, (uint64_t)slot / g->tokens_per_block, 0);
            if (!scale_ok(cache->k_scales[s]) || !scale_ok(cache->v_scales[s]))
                return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                                  "scale of block %llu is not finite and positive",
                                  (unsigned long long)slot / g->tokens_per_block);
        }
    }
    if (g->fp8 && g->scale_mode == KVRT_SCALE_PER_HEAD) {
        for (uint32_t h = 0; h < g->num_kv_heads; h++) {
            uint64_t s = kv_scale_index(g, rows->layer, 0, h);
            if (!scale_ok(cache->k_scales[s]) || !scale_ok(cache->v_scales[s]))
                return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                                  "scale of layer %u head %u is not finite and positive",
                                  rows->layer, h);
        }
    }
    return KVRT_OK;
}

/* Quantizes (write) or dequantizes (read) one token row of one half. */
static void convert_row(const kv_geometry_t *g, const float *scales, uint32_t layer,
                        uint64_t block, const void *src, kvrt_dtype_t src_dtype, void *dst,
                        kvrt_dtype_t dst_dtype, bool quantize)
{
    for (uint32_t h = 0; h < g->num_kv_heads; h++) {
        float scale = 1.0f;
        if (g->fp8)
            scale = scales[kv_scale_index(g, layer, block, h)];
        uint64_t first = (uint64_t)h * g->head_dim;
        for (uint64_t e = first; e < first + g->head_dim; e++) {
            float v = kv_load_elem(src, src_dtype, e);
            if (g->fp8)
                v = quantize ? v / scale : v * scale;
            kv_store_elem(dst, dst_dtype, e, v);
        }
    }
}

/* Everything write_kv and read_kv check before touching memory. */
static kvrt_status_t check_rows_call(kvrt_ctx_t *ctx, const char *func,
                                     const kvrt_kv_cache_t *cache, const kvrt_kv_rows_t *rows,
                                     const void *k, const void *v, bool writing,
                                     kv_geometry_t *g, uint64_t *stride)
{
    kvrt_status_t status = kv_geometry_init(ctx, func, cache, g);
    if (status == KVRT_OK)
        status = kv_rows_check(ctx, func, g, rows, k, v, writing, stride);
    if (status == KVRT_OK)
        status = check_slots(ctx, func, g, cache, rows);
    return status;
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_write_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                            const kvrt_kv_rows_t *rows, const void *key,
                                            const void *value)
{
    kv_geometry_t g;
    uint64_t stride;
    kvrt_status_t status = check_rows_call(ctx, __func__, cache, rows, key, value, true, &g, &stride);
    if (status != KVRT_OK)
        return status;

    char *base = cache->base;
    uint64_t src_stride = stride * kv_io_dtype_bytes(rows->dtype);
    const void *src[2] = {key, value};
    float *scales[2] = {cache->k_scales, cache->v_scales};
    for (uint32_t i = 0; i < rows->num_tokens; i++) {
        int64_t slot = rows->slot_mapping[i];
        if (slot < 0)
            continue;
        uint64_t block = (uint64_t)slot / g.tokens_per_block;
        uint64_t row = (uint64_t)slot % g.tokens_per_block;
        for (uint32_t half = 0; half < 2; half++) {
            char *dst = base + kv_page_offset(&g, block, rows->layer, half) + row * g.row_bytes;
            const char *s = (const char *)src[half] + i * src_stride;
            if (g.fp8)
                convert_row(&g, scales[half], rows->layer, block, s, rows->dtype, dst,
                            KVRT_DTYPE_FP8_E4M3, true);
            else
                memcpy(dst, s, g.row_bytes);
        }
    }
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_read_kv(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                           const kvrt_kv_rows_t *rows, void *key_out,
                                           void *value_out)
{
    kv_geometry_t g;
    uint64_t stride;
    kvrt_status_t status = check_rows_call(ctx, __func__, cache, rows, key_out, value_out, false, &g, &stride);
    if (status != KVRT_OK)
        return status;

    const char *base = cache->base;
    uint32_t out_elem = kv_io_dtype_bytes(rows->dtype);
    uint64_t out_stride = stride * out_elem;
    void *out[2] = {key_out, value_out};
    float *scales[2] = {cache->k_scales, cache->v_scales};
    for (uint32_t i = 0; i < rows->num_tokens; i++) {
        int64_t slot = rows->slot_mapping[i];
        for (uint32_t half = 0; half < 2; half++) {
            char *d = (char *)out[half] + i * out_stride;
            if (slot < 0) {
                memset(d, 0, (size_t)g.row_elems * out_elem);
                continue;
            }
            uint64_t block = (uint64_t)slot / g.tokens_per_block;
            uint64_t row = (uint64_t)slot % g.tokens_per_block;
            const char *s =
                base + kv_page_offset(&g, block, rows->layer, half) + row * g.row_bytes;
            if (rows->dtype == g.dtype)
                memcpy(d, s, g.row_bytes);
            else
                convert_row(&g, scales[half], rows->layer, block, s, g.dtype, d, rows->dtype,
                            false);
        }
    }
    return KVRT_OK;
}

/* ---- whole-block movement --------------------------------------------- */

/*
 * Large moves stream past the cache. glibc's memcpy switches to
 * non-temporal stores once one call copies more than about 3/4 of a
 * thread's share of the last-level cache: the destination is then written
 * without first being read into the cache, a third less memory traffic.
 * A block move is many page-sized copies, each far below that size, so
 * memcpy alone would never stream and would run at about 2/3 of one big
 * memcpy of the same bytes. The movers apply the same rule to the whole
 * call instead: past the threshold every piece is copied with
 * non-temporal stores (SSE2, part of x86-64), then one fence.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <unistd.h>

static uint64_t streaming_threshold(void)
{
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE), cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (llc <= 0)
        llc = 8l << 20;
    if (cpus <= 0)
        cpus = 1;
    return (uint64_t)llc / (uint64_t)cpus * 3 / 4;
}

/* Wide streaming stores where the CPU has them (AVX-512, else AVX2), over
 * four 4 KiB pages at a time as glibc's large memcpy does (the four
 * streams' DRAM pages stay open): 0.9-1.0x of glibc's streaming memcpy on
 * the reference machine, against 0.83x for SSE2 stores one page after the
 * other. STREAM_128 moves one 128-byte chunk. */
#define STREAMING_COPY(name, isa, STREAM_128)                                              \
    __attribute__((target(isa))) static void name(char *dst, const char *src, size_t len) \
    {                                                                                      \
        enum { PAGE = 4096, STREAMS = 4 };                                                 \
        for (; len >= STREAMS * PAGE;                                                      \
             dst += STREAMS * PAGE, src += STREAMS * PAGE, len -= STREAMS * PAGE)          \
            for (size_t off = 0; off < PAGE; off += 128)                                   \
                for (size_t p = 0; p < STREAMS; p++)                                       \
                    STREAM_128(dst + p * PAGE + off, src + p * PAGE + off);                \
        for (; len >= 128; dst += 128, src += 128, len -= 128)                             \
            STREAM_128(dst, src);                                                          \
        memcpy(dst, src, len);                                                             \
    }

#define STREAM_128_AVX512(d, s)                                                            \
    do {                                                                                   \
        __m512i a_ = _mm512_loadu_si512((const void *)(s));                                \
        __m512i b_ = _mm512_loadu_si512((const void *)((s) + 64));                         \
        _mm512_stream_si512((void *)(d), a_);                                              \
        _mm512_stream_si512((void *)((d) + 64), b_);                                       \
    } while (0)

#define STREAM_128_AVX2(d, s)                                                              \
    do {                                                                                   \
        for (int q_ = 0; q_ < 4; q_++)                                                     \
            _mm256_stream_si256((__m256i *)((d) + 32 * q_),                                \
                                _mm256_loadu_si256((const __m256i *)((s) + 32 * q_)));     \
    } while (0)

STREAMING_COPY(copy_streaming_avx512, "avx512f", STREAM_128_AVX512)
STREAMING_COPY(copy_streaming_avx2, "avx2", STREAM_128_AVX2)

static void copy_streaming(char *dst, const char *src, size_t len)
{
    size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
    if (head > len)
        head = len;
    memcpy(dst, src, head);
    dst += head, src += head, len -= head;
    if (__builtin_cpu_supports("avx512f")) {
        copy_streaming_avx512(dst, src, len);
        return;
    }
    if (__builtin_cpu_supports("avx2")) {
        copy_streaming_avx2(dst, src, len);
        return;
    }
    for (; len >= 64; dst += 64, src += 64, len -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src);
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
    memcpy(dst, src, len);
}

static void streaming_done(void) { _mm_sfence(); }
#else
static uint64_t streaming_threshold(void) { return UINT64_MAX; }
static void copy_streaming(char *dst, const char *src, size_t len) { memcpy(dst, src, len); }
static void streaming_done(void) {}
#endif

/* Adjacent copies merge into one: a BLOCK_MAJOR + FUSED block moves in one
 * call, a LAYER_MAJOR + FUSED one in one call per layer. */
typedef struct copy_run {
    char *dst;
    const char *src;
    size_t len;
    bool streaming; /* the whole move is past streaming_threshold() */
} copy_run_t;

/* Staging is written to leave: to disk, to the network, to a lower tier,
 * read next by a DMA engine or much later, not by this core now. Gathers
 * into it stream from this size on (below it the fence is not worth it),
 * whatever the cache share: a tier offloading one 8 MiB block at a time
 * otherwise runs at 2/3 of memcpy. */
#define STAGING_STREAMING_BYTES (1ull << 20)

static void run_start(copy_run_t *run, uint64_t total_bytes, bool to_staging)
{
    memset(run, 0, sizeof *run);
    run->streaming = total_bytes >= streaming_threshold() ||
                     (to_staging && total_bytes >= STAGING_STREAMING_BYTES);
}

static void run_copy(const copy_run_t *run)
{
    if (run->streaming)
        copy_streaming(run->dst, run->src, run->len);
    else
        memcpy(run->dst, run->src, run->len);
}

static void run_add(copy_run_t *run, char *dst, const char *src, size_t len)
{
    if (run->len && run->dst + run->len == dst && run->src + run->len == src) {
        run->len += len;
        return;
    }
    if (run->len)
        run_copy(run);
    run->dst = dst;
    run->src = src;
    run->len = len;
}

static void run_flush(copy_run_t *run)
{
    if (run->len)
        run_copy(run);
    run->len = 0;
    if (run->streaming)
        streaming_done();
}

static kvrt_status_t check_block_ids(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                     const int32_t *blocks, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        if (blocks[i] < 0 || (uint32_t)blocks[i] >= g->num_blocks)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "blocks[%u] = %d is outside 0 .. %u", i, blocks[i],
                              g->num_blocks - 1);
    return KVRT_OK;
}

/* Moves blocks between the cache and staging ([i][layer][K, V][page]). */
static void move_blocks(const kv_geometry_t *g, char *base, char *staging,
                        const int32_t *blocks, uint32_t count, bool to_staging)
{
    copy_run_t run;
    run_start(&run, g->block_bytes * count, to_staging);
    char *stage = staging;
    for (uint32_t i = 0; i < count; i++) {
        for (uint32_t layer = 0; layer < g->num_layers; layer++) {
            for (uint32_t half = 0; half < 2; half++) {
                char *page = base + kv_page_offset(g, (uint64_t)blocks[i], layer, half);
                if (to_staging)
                    run_add(&run, stage, page, g->page_bytes);
                else
                    run_add(&run, page, stage, g->page_bytes);
                stage += g->page_bytes;
            }
        }
    }
    run_flush(&run);
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_gather_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                                 const int32_t *blocks, uint32_t count,
                                                 void *staging_out)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_blocks_check(ctx, __func__, &g, blocks, count, staging_out);
    if (status == KVRT_OK)
        status = check_block_ids(ctx, __func__, &g, blocks, count);
    if (status != KVRT_OK)
        return status;
    move_blocks(&g, cache->base, staging_out, blocks, count, true);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_scatter_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                                  const void *staging, const int32_t *blocks,
                                                  uint32_t count)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_blocks_check(ctx, __func__, &g, blocks, count, staging);
    if (status == KVRT_OK)
        status = check_block_ids(ctx, __func__, &g, blocks, count);
    if (status != KVRT_OK)
        return status;
    /* move_blocks only reads staging in this direction. */
    move_blocks(&g, cache->base, (char *)(uintptr_t)staging, blocks, count, false);
    return KVRT_OK;
}

/*
 * Copy pairs must be independent: a dst that is another pair's src or dst
 * would make the result depend on order (and race on a GPU). Checked with
 * a bitmap of destinations; a src == dst pair is a no-op and ignored.
 */
static kvrt_status_t check_copies(kvrt_ctx_t *ctx, const char *func, const kv_geometry_t *g,
                                  const kvrt_block_copy_t *copies, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        int32_t s = copies[i].src_block, d = copies[i].dst_block;
        if (s < 0 || d < 0 || (uint32_t)s >= g->num_blocks || (uint32_t)d >= g->num_blocks)
            return kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                              "copies[%u] = %d -> %d is outside 0 .. %u", i, s, d,
                              g->num_blocks - 1);
    }
    if (count < 2)
        return KVRT_OK;
    uint64_t *dst_seen = calloc((g->num_blocks + 63) / 64, sizeof(uint64_t));
    if (!dst_seen)
        return kvrt_fail_(ctx, func, KVRT_ERR_NO_MEMORY, "no memory for the overlap check");
    kvrt_status_t status = KVRT_OK;
    for (uint32_t i = 0; i < count && status == KVRT_OK; i++) {
        uint32_t d = (uint32_t)copies[i].dst_block;
        if ((uint32_t)copies[i].src_block == d)
            continue;
        if (dst_seen[d / 64] & (1ull << (d % 64)))
            status = kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                                "block %u is the destination of two copies", d);
        dst_seen[d / 64] |= 1ull << (d % 64);
    }
    for (uint32_t i = 0; i < count && status == KVRT_OK; i++) {
        uint32_t s = (uint32_t)copies[i].src_block;
        if (s != (uint32_t)copies[i].dst_block && (dst_seen[s / 64] & (1ull << (s % 64))))
            status = kvrt_fail_(ctx, func, KVRT_ERR_INVALID_ARG,
                                "block %u is both a copy source and a destination", s);
    }
    free(dst_seen);
    return status;
}

KVRT_EXPORT kvrt_status_t kvrt_cpu_copy_blocks(kvrt_ctx_t *ctx, const kvrt_kv_cache_t *cache,
                                               const kvrt_block_copy_t *copies, uint32_t count)
{
    kv_geometry_t g;
    kvrt_status_t status = kv_geometry_init(ctx, __func__, cache, &g);
    if (status == KVRT_OK)
        status = kv_copies_check(ctx, __func__, copies, count);
    if (status == KVRT_OK)
        status = check_copies(ctx, __func__, &g, copies, count);
    if (status != KVRT_OK)
        return status;

    char *base = cache->base;
    bool block_scales = g.fp8 && g.scale_mode == KVRT_SCALE_PER_BLOCK;
    copy_run_t run;
    run_start(&run, g.block_bytes * count, false);
    for (uint32_t i = 0; i < count; i++) {
        uint64_t s = (uint64_t)copies[i].src_block, d = (uint64_t)copies[i].dst_block;
        if (s == d)
            continue;
        for (uint32_t layer = 0; layer < g.num_layers; layer++) {
            for (uint32_t half = 0; half < 2; half++)
                run_add(&run, base + kv_page_offset(&g, d, layer, half),
                        base + kv_page_offset(&g, s, layer, half), g.page_bytes);
            if (block_scales) {
                cache->k_scales[kv_scale_index(&g, layer, d, 0)] =
                    cache->k_scales[kv_scale_index(&g, layer, s, 0)];
                cache->v_scales[kv_scale_index(&g, layer, d, 0)] =
                    cache->v_scales[kv_scale_index(&g, layer, s, 0)];
            }
        }
    }
    run_flush(&run);
    return KVRT_OK;
}

/*
 * suite_tier.c - kvrt-bench `tier`: the tiers below the pool against the
 * tools they must keep up with, measured in the same run.
 *
 *   tier.ssd.write / tier.ssd.read  whole blocks through the tier's I/O
 *        thread (io_uring, registered buffers, header + bytes per block,
 *        checksums computed and verified) against fio on the same file
 *        system with the same block size, O_DIRECT and queue depth
 *        (target >= 0.9x). The directory is $KVRT_BENCH_TIER_DIR or /tmp.
 *   tier.host.offload  pool -> host slot copies (staging order) against
 *        memcpy of the same bytes (target >= 0.9x).
 *   tier.onload.32k.host / .ssd  a 32,768-token prefix brought back into
 *        the pool from host memory and from SSD, match to landed.
 *   tier.cache_cycle  allocate (evicting) + insert + release one block
 *        with a tier attached against the same cycle without (<= 1.1x).
 *   tier.step_commit  the engine thread's tier poll + scheduler step +
 *        commit of a serving loop whose finished requests' blocks are
 *        evicted into the tier, against the same loop without (<= 1.1x).
 *
 * KVRT_BENCH_TIER_ONLY=ssd, host, onload or overhead runs one group (overhead:
 * the last two, for callgrind).
 *
 * Model: 8 layers, 8 KV heads of 128, FP16, 256 tokens per block (4 MiB
 * blocks, 128 blocks per 32k prefix); --quick uses 64-token blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "kvrt/kvrt.h"
#include "kvrt/sched.h"
#include "kvrt/tier.h"
#include "tier/tier_internal.h"

#define PREFIX_TOKENS 32768u

typedef struct rig {
    kvrt_ctx_t *ctx;
    kvrt_pool_t *pool;
    kvrt_cache_t *cache;
    kvrt_tier_t *tier;
    uint32_t tpb;
    uint64_t block_bytes;
    char dir[256];
} rig_t;

static const char *bench_dir(void)
{
    const char *d = getenv("KVRT_BENCH_TIER_DIR");
    return d && *d ? d : "/tmp";
}

static int rig_open(rig_t *r, uint32_t tpb, uint32_t pool_blocks, uint32_t host_blocks,
                    uint32_t ssd_blocks)
{
    memset(r, 0, sizeof(*r));
    r->tpb = tpb;
    snprintf(r->dir, sizeof(r->dir), "%s/kvrt-bench-tier-XXXXXX", bench_dir());
    if (!mkdtemp(r->dir) || kvrt_ctx_create(NULL, &r->ctx) != KVRT_OK)
        return -1;
    kvrt_pool_params_t pp = {
        .field_mask = KVRT_POOL_PARAM_WATERMARK,
        .layout = {.num_layers = 8, .num_kv_heads = 8, .head_dim = 128,
                   .tokens_per_block = tpb},
        .num_blocks = pool_blocks,
    };
    if (kvrt_pool_create(r->ctx, &pp, &r->pool) != KVRT_OK ||
        kvrt_cache_create(r->pool, NULL, &r->cache) != KVRT_OK)
        return -1;
    kvrt_pool_info_t info;
    kvrt_pool_info(r->pool, &info);
    r->block_bytes = info.block_bytes;
    memset(info.base, 0x5a, info.block_bytes * info.num_blocks); /* fault the pool in */
    if (!host_blocks)
        return 0;
    kvrt_tier_params_t tp = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS |
                                           KVRT_TIER_PARAM_QUEUE_DEPTH,
                             .host_blocks = host_blocks, .queue_depth = 32};
    if (ssd_blocks) {
        tp.field_mask |= KVRT_TIER_PARAM_SSD;
        tp.ssd_dir = r->dir;
        tp.ssd_blocks = ssd_blocks;
    }
    if (kvrt_tier_create(r->cache, &tp, &r->tier) != KVRT_OK) {
        fprintf(stderr, "tier: %s\n", kvrt_ctx_last_error(r->ctx));
        return -1;
    }
    return 0;
}

static void rig_close(rig_t *r)
{
    kvrt_tier_destroy(r->tier);
    kvrt_cache_destroy(r->cache);
    kvrt_pool_destroy(r->pool);
    kvrt_ctx_destroy(r->ctx);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "tier: could not remove %s\n", r->dir);
}

/* ---- fio, same file system, block size, O_DIRECT, queue depth --------------- */

static double fio_bytes_per_second(const char *dir, const char *rw, uint64_t bs,
                                   uint64_t bytes, uint32_t depth)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "fio --name=kvrt --filename='%s/fio.dat' --rw=%s --bs=%llu --size=%llu "
             "--direct=1 --ioengine=io_uring --iodepth=%u --output-format=terse "
             "--terse-version=3 2>/dev/null",
             dir, rw, (unsigned long long)bs, (unsigned long long)bytes, depth);
    FILE *p = popen(cmd, "r");
    if (!p)
        return 0;
    char line[8192] = {0};
    if (!fgets(line, sizeof(line), p))
        line[0] = 0;
    pclose(p);
    /* terse v3: field 7 is read bandwidth (KiB/s), field 48 write bandwidth. */
    int field = 1;
    double value = 0;
    int want = !strcmp(rw, "read") ? 7 : 48;
    for (char *s = line, *tok; (tok = strsep(&s, ";")); field++)
        if (field == want)
            value = atof(tok) * 1024.0;
    return value;
}

static void unlink_fio(const char *dir)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/fio.dat", dir);
    unlink(path);
}

/* A figure and its ratio to the same-run baseline, the ratio carrying the
 * target. */
static void report_pair(const char *name, const char *unit, double value, const char *base_name,
                        double base, double target, bool lower_is_better, const char *note)
{
    bench_report(&(bench_figure_t){.name = name, .unit = unit, .value = value,
                                   .baseline_name = base_name, .baseline_value = base,
                                   .lower_is_better = lower_is_better, .note = note});
    char ratio_name[96];
    snprintf(ratio_name, sizeof(ratio_name), "%s.ratio", name);
    bench_report(&(bench_figure_t){.name = ratio_name, .unit = "x",
                                   .value = base > 0 ? value / base : 0, .target = target,
                                   .lower_is_better = lower_is_better});
}

/* ---- the tier's I/O path, driven directly ---------------------------------- */

typedef struct io_rig {
    tier_worker_t w;
    ssd_file_t f;
    void *slab;
    uint32_t blocks;
} io_rig_t;

/* Runs `kind` on every slot, queue full all the time; bytes per second. */
static double io_pass(rig_t *r, io_rig_t *io, tier_job_kind_t kind, uint64_t *failed)
{
    uint64_t start = bench_now_ns();
    uint32_t submitted = 0, done = 0;
    tier_job_t out[128];
    while (done < io->blocks) {
        while (submitted < io->blocks) {
            tier_job_t job = {.kind = kind, .host_slot = (int32_t)submitted,
                              .ssd_slot = (int32_t)submitted};
            job.name.key = (kvrt_block_hash_t){submitted, 1};
            job.name.content = job.name.key;
            if (!tier_worker_submit(&io->w, &job))
                break;
            submitted++;
        }
        kvrt_cq_wait(io->w.done, 100);
        uint32_t n = kvrt_cq_poll(io->w.done, out, 128);
        for (uint32_t i = 0; i < n; i++)
            *failed += out[i].err || out[i].miss;
        done += n;
    }
    return (double)io->blocks * (double)r->block_bytes / ((double)(bench_now_ns() - start) * 1e-9);
}

/* The tier's I/O thread over a slab and a file of its own: the code path
 * of write-back and onload (headers, checksums, verification included),
 * without the pool in between. */
static int io_rates(rig_t *r, uint32_t blocks, double *write_out, double *read_out)
{
    io_rig_t io = {.blocks = blocks};
    kvrt_block_hash_t root = {1, 2};
    if (tier_ssd_open(r->ctx, &io.f, r->dir, &root, 7, r->block_bytes, false) != KVRT_OK)
        return -1;
    tier_ssd_reserve(r->ctx, &io.f, blocks);
    if (io.f.buffered)
        fprintf(stderr, "tier: %s refuses O_DIRECT; figures are buffered I/O\n", r->dir);
    uint64_t stride = tier_slot_bytes(r->block_bytes);
    if (posix_memalign(&io.slab, 2u << 20, stride * blocks) != 0)
        return -1;
    memset(io.slab, 0x3c, stride * blocks);
    io.w.queue_depth = 32;
    io.w.host_base = io.slab;
    io.w.host_stride = stride;
    io.w.ssd = &io.f;
    uint64_t failed = 0;
    int rc = -1;
    if (tier_worker_start(r->ctx, &io.w, blocks) == KVRT_OK) {
        *write_out = io_pass(r, &io, JOB_WRITE, &failed);
        *read_out = io_pass(r, &io, JOB_READ, &failed);
        rc = failed ? -1 : 0;
        if (failed)
            fprintf(stderr, "tier: %llu blocks failed I/O or verification\n",
                    (unsigned long long)failed);
    }
    tier_worker_stop(&io.w);
    tier_ssd_close(&io.f);
    unlink(io.f.path);
    free(io.slab);
    return rc;
}

static int bench_ssd(rig_t *r, const bench_options_t *o, int n)
{
    uint32_t blocks = (uint32_t)(((o->quick ? 128ull : 512ull) << 20) / r->block_bytes);
    uint64_t bs = tier_slot_bytes(r->block_bytes); /* what the tier moves per block */
    double ow[5], fw[5], orr[5], fr[5];
    for (int i = 0; i < n; i++) {
        if (io_rates(r, blocks, &ow[i], &orr[i]) != 0)
            return -1;
        fw[i] = fio_bytes_per_second(r->dir, "write", bs, bs * blocks, 32);
        fr[i] = fio_bytes_per_second(r->dir, "read", bs, bs * blocks, 32);
        unlink_fio(r->dir);
    }
    char note[200];
    snprintf(note, sizeof(note), "%u blocks of %llu bytes in %s; fio bs=%llu iodepth=32 "
             "O_DIRECT io_uring (the tier: 32 slots in flight, one op each)", blocks,
             (unsigned long long)r->block_bytes, bench_dir(), (unsigned long long)bs);
    report_pair("tier.ssd.write", "GB/s", bench_median(ow, n) / 1e9, "fio write",
                bench_median(fw, n) / 1e9, 0.9, false, note);
    report_pair("tier.ssd.read", "GB/s", bench_median(orr, n) / 1e9, "fio read",
                bench_median(fr, n) / 1e9, 0.9, false, "reads verify header and XXH3");
    return 0;
}

/* ---- host tier against memcpy ----------------------------------------------- */

static int bench_host(rig_t *r, int n)
{
    /* Offload: the kernel-order gather the worker runs, pool -> host slot. */
    kvrt_pool_info_t info;
    kvrt_kv_layout_t layout;
    kvrt_pool_info(r->pool, &info);
    kvrt_pool_layout(r->pool, &layout);
    kvrt_kv_cache_t view = {.layout = layout, .num_blocks = info.num_blocks, .base = info.base};
    uint32_t blocks = info.num_blocks - 1;
    uint8_t *dst = NULL;
    if (posix_memalign((void **)&dst, 2u << 20, r->block_bytes * blocks) != 0)
        return -1;
    memset(dst, 1, r->block_bytes * blocks);
    double ours[16], base[16];
    for (int i = 0; i < n; i++) {
        uint64_t t0 = bench_now_ns();
        memcpy(dst, (uint8_t *)info.base + r->block_bytes, r->block_bytes * blocks);
        uint64_t t1 = bench_now_ns();
        for (int32_t b = 1; b <= (int32_t)blocks; b++)
            kvrt_cpu_gather_blocks(NULL, &view, &b, 1, dst + (uint64_t)(b - 1) * r->block_bytes);
        uint64_t t2 = bench_now_ns();
        bench_consume(dst);
        base[i] = (double)(r->block_bytes * blocks) / ((double)(t1 - t0) * 1e-9) / 1e9;
        ours[i] = (double)(r->block_bytes * blocks) / ((double)(t2 - t1) * 1e-9) / 1e9;
    }
    free(dst);
    report_pair("tier.host.offload", "GB/s", bench_median(ours, n), "memcpy",
                bench_median(base, n), 0.9, false, "pool -> host slot, one block per copy");
    return 0;
}

/* ---- onload latency of a 32k-token prefix ------------------------------------ */

/* Prefills the prefix, pushes it out of the pool (into the tier), then
 * times match -> onload -> landed. */
static int onload_once(rig_t *r, bool via_ssd, double *ms_out)
{
    uint32_t nb = PREFIX_TOKENS / r->tpb;
    int32_t *tokens = malloc(sizeof(int32_t) * PREFIX_TOKENS);
    int32_t *blocks = malloc(sizeof(int32_t) * nb);
    kvrt_block_hash_t *hashes = malloc(sizeof(*hashes) * nb);
    int rc = -1;
    if (!tokens || !blocks || !hashes)
        goto out;
    for (uint32_t i = 0; i < PREFIX_TOKENS; i++)
        tokens[i] = (int32_t)(i * 7 + (via_ssd ? 3 : 1));
    kvrt_block_hash_t parent;
    kvrt_cache_root(r->cache, &parent);
    if (kvrt_pool_alloc(r->pool, nb, blocks) != KVRT_OK)
        goto out;
    for (uint32_t i = 0; i < nb; i++) {
        kvrt_block_hash_t h;
        kvrt_block_hash(&parent, tokens + i * r->tpb, r->tpb, i * r->tpb, NULL, &h);
        kvrt_cache_insert(r->cache, blocks[i], &h, NULL, i, NULL);
        parent = h;
    }
    for (uint32_t i = nb; i-- > 0;)
        kvrt_pool_free(r->pool, 1, &blocks[i]);
    /* Pressure until the whole prefix is below the pool: each round lets
     * the tier copy ahead, then evicts about what it copied. */
    kvrt_pool_info_t info;
    uint32_t got;
    kvrt_pool_info(r->pool, &info);
    /* Up to every block of the pool: more than the prefix's nb. */
    int32_t *squeeze = malloc(sizeof(int32_t) * info.num_blocks);
    if (!squeeze)
        goto out;
    for (int round = 0; round < 1000; round++) {
        kvrt_tier_drain(r->tier, 60000, NULL, 0, &got);
        kvrt_pool_info(r->pool, &info);
        if (!info.cached_blocks)
            break;
        uint32_t evict = info.cached_blocks < 16 ? info.cached_blocks : 16;
        uint32_t want = info.free_blocks + evict;
        if (kvrt_pool_alloc(r->pool, want, squeeze) != KVRT_OK) {
            free(squeeze);
            goto out;
        }
        kvrt_pool_free(r->pool, want, squeeze);
    }
    free(squeeze);
    kvrt_tier_match_t m;
    uint64_t t0 = bench_now_ns();
    if (kvrt_tier_match(r->tier, tokens, PREFIX_TOKENS, NULL, nb, blocks, hashes, &m) !=
        KVRT_OK)
        goto out;
    uint32_t below = m.host_blocks + m.ssd_blocks;
    int32_t *fresh = blocks + m.gpu_blocks;
    if (kvrt_pool_alloc(r->pool, below, fresh) != KVRT_OK)
        goto out;
    uint64_t ticket;
    kvrt_tier_onload(r->tier, m.gpu_blocks, below, hashes + m.gpu_blocks,
                     m.gpu_blocks ? &hashes[m.gpu_blocks - 1] : NULL, NULL, fresh, &ticket,
                     NULL);
    kvrt_tier_completion_t done;
    kvrt_tier_drain(r->tier, 60000, &done, 1, &got);
    uint64_t t1 = bench_now_ns();
    *ms_out = (double)(t1 - t0) * 1e-6;
    fprintf(stderr, "tier: 32k onload %s: %u in pool, %u host, %u ssd, %u landed\n",
            via_ssd ? "ssd" : "host", m.gpu_blocks, m.host_blocks, m.ssd_blocks,
            got ? done.landed : 0);
    kvrt_pool_free(r->pool, m.gpu_blocks + below, blocks);
    rc = got == 1 && done.landed == below ? 0 : -1;
    if (rc)
        fprintf(stderr, "tier: onload landed %u of %u (miss %d)\n", got ? done.landed : 0,
                below, got ? (int)done.miss : -1);
out:
    free(tokens);
    free(blocks);
    free(hashes);
    return rc;
}

static int bench_onload(const bench_options_t *o, uint32_t tpb, bool via_ssd)
{
    rig_t r;
    uint32_t nb = PREFIX_TOKENS / tpb;
    /* A pool one prefix and a half big; host slots for all of it (host
     * run), or a quarter plus two queue depths (SSD run: the rest is
     * written back). */
    if (rig_open(&r, tpb, nb + nb / 2 + 1, via_ssd ? nb / 4 + 64 : nb + 64, via_ssd ? 2 * nb : 0))
        return -1;
    double ms = 0;
    int rc = onload_once(&r, via_ssd, &ms);
    kvrt_tier_stats_t s;
    kvrt_tier_stats(r.tier, &s);
    char note[160];
    snprintf(note, sizeof(note), "%u blocks of %llu bytes; host %llu onloads, ssd %llu",
             nb, (unsigned long long)r.block_bytes, (unsigned long long)s.host.onloads,
             (unsigned long long)s.ssd.onloads);
    bench_report(&(bench_figure_t){.name = via_ssd ? "tier.onload.32k.ssd" : "tier.onload.32k.host",
                                   .unit = "ms", .value = ms, .lower_is_better = true,
                                   .note = note});
    rig_close(&r);
    (void)o;
    return rc;
}

/* ---- the cost of having a tier attached -------------------------------------- */

/* The engine thread's CPU time, not wall time: the tier's copies run on
 * its own thread, which on a small shared machine competes for the same
 * cores and would otherwise be billed to the engine. */
static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static double cycle_ns(rig_t *r, uint32_t cycles)
{
    kvrt_block_hash_t parent;
    kvrt_cache_root(r->cache, &parent);
    int32_t tokens[256];
    uint64_t t0 = thread_cpu_ns();
    for (uint32_t c = 0; c < cycles; c++) {
        int32_t block;
        for (uint32_t i = 0; i < r->tpb; i++)
            tokens[i] = (int32_t)(c * 131 + i);
        kvrt_block_hash_t h;
        kvrt_block_hash(&parent, tokens, r->tpb, 0, NULL, &h);
        if (kvrt_pool_alloc(r->pool, 1, &block) != KVRT_OK)
            return 0;
        kvrt_cache_insert(r->cache, block, &h, NULL, 0, NULL);
        kvrt_pool_free(r->pool, 1, &block);
        if (r->tier && (c & 15) == 15) {
            uint32_t n;
            kvrt_tier_poll(r->tier, NULL, 0, &n);
        }
    }
    uint64_t t1 = thread_cpu_ns();
    if (r->tier) {
        uint32_t n;
        kvrt_tier_drain(r->tier, 60000, NULL, 0, &n);
    }
    return (double)(t1 - t0) / cycles;
}

static int bench_overhead(const bench_options_t *o, int n)
{
    double with[16], without[16];
    uint32_t cycles = o->quick ? 2000 : 20000;
    for (int i = 0; i < n; i++) {
        rig_t a, b;
        if (rig_open(&a, 16, 257, 0, 0) || rig_open(&b, 16, 257, 1024, 0))
            return -1;
        without[i] = cycle_ns(&a, cycles);
        with[i] = cycle_ns(&b, cycles);
        rig_close(&a);
        rig_close(&b);
    }
    report_pair("tier.cache_cycle", "ns/block", bench_median(with, n), "no tier",
                bench_median(without, n), 1.1, true,
                "engine-thread CPU per alloc (evicting) + hash + insert + free, 16-token "
                "blocks of 256 KiB, tier polled every 16 blocks");
    return 0;
}

/* A serving loop: 32 requests live (64-token prompts, 32 output tokens,
 * new prompts as others end, so the finished ones' cached blocks are
 * evicted into the tier), and per step the engine-thread CPU of tier poll
 * (when attached) + step + commit, mean; and the median of the steps' wall
 * times (*wall_out): reading a thread's CPU clock is a system call whose
 * cost grows while another thread of the process runs, the monotonic
 * clock is not. Requests are added and drained outside the timed part. */
static inline __attribute__((always_inline)) double step_commit_ns(rig_t *r, uint32_t steps,
                                                                   double *wall_out)
{
    double *wall = malloc(steps * sizeof(*wall));
    *wall_out = 0;
    if (!wall)
        return 0;
    kvrt_sched_t *sched;
    kvrt_sched_params_t sp = {.field_mask = KVRT_SCHED_PARAM_WATERMARK, .use_watermark = 0};
    if (kvrt_sched_create(r->ctx, r->pool, r->cache, &sp, &sched) != KVRT_OK) {
        free(wall);
        return 0;
    }
    int32_t prompt[64], tokens[256];
    uint32_t next = 0;
    uint64_t cpu = 0;
    kvrt_seq_info_t ended[64];
    for (uint32_t step = 0; step < steps; step++) {
        kvrt_sched_stats_t st;
        kvrt_sched_stats(sched, &st);
        for (uint64_t live = st.waiting + st.running + st.awaiting_kv; live < 32; live++) {
            for (uint32_t i = 0; i < 64; i++)
                prompt[i] = (int32_t)(next * 64 + i);
            kvrt_seq_params_t p = {.prompt = prompt, .prompt_len = 64, .max_new_tokens = 32};
            kvrt_seq_id_t id;
            if (kvrt_seq_add(sched, &p, &id) != KVRT_OK)
                break;
            next++;
        }
        uint64_t t0 = thread_cpu_ns(), w0 = bench_now_ns();
        if (r->tier) {
            uint32_t n;
            kvrt_tier_poll(r->tier, NULL, 0, &n);
        }
        const kvrt_batch_plan_t *plan;
        if (kvrt_sched_step(sched, step, &plan) != KVRT_OK)
            break;
        uint32_t k = 0;
        for (uint32_t i = 0; i < plan->num_seqs && k < 256; i++)
            if (plan->seqs[i].sample)
                tokens[k++] = 1;
        kvrt_commit_t c = {.step = plan->step, .num_seqs = plan->num_seqs, .num_tokens = k,
                           .tokens = tokens};
        kvrt_sched_commit(sched, &c);
        wall[step] = (double)(bench_now_ns() - w0);
        cpu += thread_cpu_ns() - t0;
        uint32_t got;
        kvrt_sched_drain_ended(sched, ended, 64, &got);
    }
    kvrt_sched_destroy(sched);
    if (r->tier) {
        uint32_t n;
        kvrt_tier_drain(r->tier, 60000, NULL, 0, &n);
    }
    *wall_out = bench_median(wall, (int)steps);
    free(wall);
    return (double)cpu / steps;
}

/* Two names for the same loop, so that callgrind separates the runs
 * (valgrind --tool=callgrind --toggle-collect='step_commit_*'); each
 * leaves its own mark, or the compiler folds the two into one. */
static volatile int step_commit_mark;

static __attribute__((noinline)) double step_commit_no_tier(rig_t *r, uint32_t steps,
                                                           double *wall_out)
{
    double ns = step_commit_ns(r, steps, wall_out);
    step_commit_mark = 1; /* also: no tail call, callgrind sees the exit */
    return ns;
}

static __attribute__((noinline)) double step_commit_tier(rig_t *r, uint32_t steps,
                                                        double *wall_out)
{
    double ns = step_commit_ns(r, steps, wall_out);
    step_commit_mark = 2;
    return ns;
}

static int bench_step_commit(const bench_options_t *o, int n)
{
    double with[16], without[16], wall_with[16], wall_without[16];
    uint32_t steps = o->quick ? 500 : 5000;
    uint64_t offloads = 0;
    for (int i = 0; i < n; i++) {
        rig_t a, b;
        if (rig_open(&a, 16, 257, 0, 0) || rig_open(&b, 16, 257, 1024, 0))
            return -1;
        if (i % 2) {
            without[i] = step_commit_no_tier(&a, steps, &wall_without[i]);
            with[i] = step_commit_tier(&b, steps, &wall_with[i]);
        } else {
            with[i] = step_commit_tier(&b, steps, &wall_with[i]);
            without[i] = step_commit_no_tier(&a, steps, &wall_without[i]);
        }
        kvrt_tier_stats_t s;
        kvrt_tier_stats(b.tier, &s);
        offloads += s.host.offloads;
        rig_close(&a);
        rig_close(&b);
    }
    char note[200];
    snprintf(note, sizeof(note),
             "engine-thread CPU per step of tier poll + step + commit, 32 live requests "
             "(64-token prompts, 32 outputs), 16-token blocks of 256 KiB; %llu offloads",
             (unsigned long long)(offloads / (uint64_t)n));
    report_pair("tier.step_commit", "ns/step", bench_median(with, n), "no tier",
                bench_median(without, n), 1.1, true, note);
    report_pair("tier.step_commit.wall", "ns/step", bench_median(wall_with, n), "no tier",
                bench_median(wall_without, n), 1.1, true,
                "median wall time of a step, same loop and runs");
    return 0;
}

/* KVRT_BENCH_TIER_ONLY=ssd|host|onload|overhead runs one group of figures
 * (overhead: what one runs under callgrind). */
static bool wanted(const char *group)
{
    const char *only = getenv("KVRT_BENCH_TIER_ONLY");
    return !only || !*only || !strcmp(only, group);
}

static int run_tier(const bench_options_t *o)
{
    int n = o->quick ? 1 : (o->repeats > 5 ? 5 : o->repeats);
    uint32_t tpb = o->quick ? 64 : 256;
    int rc = 0;
    if (wanted("ssd") || wanted("host")) {
        rig_t r;
        if (rig_open(&r, tpb, 65, 0, 0) != 0)
            return -1;
        if (wanted("ssd"))
            rc = bench_ssd(&r, o, n);
        if (rc == 0 && wanted("host"))
            rc = bench_host(&r, n);
        rig_close(&r);
    }
    if (rc == 0 && wanted("onload"))
        rc = bench_onload(o, tpb, false);
    if (rc == 0 && wanted("onload"))
        rc = bench_onload(o, tpb, true);
    if (rc == 0 && wanted("overhead"))
        rc = bench_overhead(o, n);
    if (rc == 0 && wanted("overhead"))
        rc = bench_step_commit(o, n);
    return rc;
}

KVRT_BENCH_SUITE(tier, "tiers below the pool: SSD vs fio, host vs memcpy, onload, overhead",
                 run_tier, false)

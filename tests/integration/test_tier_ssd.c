/*
 * test_tier_ssd.c - the SSD tier on a real file system: write-back from
 * host memory and onload from SSD byte for byte; a restarted process finds
 * what the previous one offloaded, and another model finds nothing of it;
 * and the faults: a corrupted block, a truncated file, a deleted file, I/O
 * errors (a fault hook) and a full disk (a small tmpfs this test mounts);
 * and a reset of the cache, after which nothing from before is served, in
 * this process or the next.
 * Each is counted, the block dropped, the engine keeps running, nothing
 * leaks.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "test_helpers.h"

#include "../tier_helpers.h"
#include "tier/tier_internal.h"

static char dir[64];
static char mounted[80]; /* the tmpfs of the disk-full test, until unmounted */

static void ssd_setup(void)
{
    setup();
    snprintf(dir, sizeof(dir), "/tmp/kvrt-tier-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void ssd_teardown(void)
{
    teardown();
    if (mounted[0]) { /* an assertion ended the test before it unmounted */
        umount2(mounted, MNT_DETACH);
        rmdir(mounted);
    }
    remove_dir(dir);
}

TestSuite(tier_ssd, .init = ssd_setup, .fini = ssd_teardown);

static void open_tier_sized(const char *ssd_dir, const char *model, uint32_t host_blocks)
{
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_FINGERPRINT};
    kvrt_kv_layout_t layout = test_layout(TPB);
    ASSERT_OK(ctx, kvrt_model_fingerprint(model, &layout, &cp.model_fingerprint));
    pool = test_pool(ctx, 17, TPB);
    ASSERT_OK(ctx, kvrt_cache_create(pool, &cp, &cache));
    /* 4 host slots, 4 in flight: host slots are written back as soon as
     * they fill, so whatever is offloaded ends on SSD. */
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_SSD |
                                          KVRT_TIER_PARAM_QUEUE_DEPTH,
                            .host_blocks = host_blocks,
                            .ssd_blocks = 64,
                            .ssd_dir = ssd_dir,
                            .queue_depth = 4};
    if (getenv("KVRT_TEST_BUFFERED")) {
        p.field_mask |= KVRT_TIER_PARAM_FLAGS;
        p.flags = KVRT_TIER_SSD_BUFFERED;
    }
    ASSERT_OK(ctx, kvrt_tier_create(cache, &p, &tier));
}

static void open_tier(const char *ssd_dir, const char *model)
{
    open_tier_sized(ssd_dir, model, 4);
}

static void close_tier(void)
{
    ASSERT_OK(ctx, kvrt_tier_destroy(tier));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_eq(info.used_blocks, 0, "blocks leaked");
    ASSERT_OK(ctx, kvrt_cache_destroy(cache));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    tier = NULL;
    cache = NULL;
}

/* Prompt `seed` (4 blocks) offloaded: host, then SSD. The pool's cache is
 * emptied first (an allocation of every block: no victim may be kept), so
 * the prompt's blocks are the oldest and exactly they go down. */
static void offload_prompt(int32_t seed)
{
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    squeeze(info.free_blocks + info.cached_blocks);
    prefill(seed, 4);
    prefill(seed + 1, 4);
    squeeze_past_free(1);
    uint32_t n;
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, NULL, 0, &n));
}

static kvrt_tier_stats_t stats(void)
{
    kvrt_tier_stats_t s;
    ASSERT_OK(ctx, kvrt_tier_stats(tier, &s));
    return s;
}

static char *data_file(void)
{
    static char path[512];
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    path[0] = 0;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".kvblk"))
            snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    closedir(d);
    cr_assert(path[0], "no .kvblk file in %s", dir);
    return path;
}

Test(tier_ssd, blocks_written_back_to_ssd_come_back_byte_for_byte)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    kvrt_tier_stats_t s = stats();
    cr_assert_eq(s.host.offloads, 4);
    cr_assert_eq(s.ssd.offloads, 4, "host slots were not written back");
    kvrt_tier_match_t m;
    kvrt_tier_completion_t done = {0};
    cr_assert_eq(bring_back(100, 4, &m, &done), 4, "miss %d", done.miss);
    cr_assert_eq(m.ssd_blocks, 4);
    s = stats();
    cr_assert_eq(s.ssd.onloads, 4);
    cr_assert_eq(s.ssd.errors, 0);
    close_tier();
}

Test(tier_ssd, a_restarted_process_finds_what_it_offloaded_and_another_model_does_not)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    close_tier();
    open_tier(dir, "model-b"); /* same directory, another model */
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.ssd_blocks, 0, "served another model's blocks");
    close_tier();
    open_tier(dir, "model-a");
    cr_assert_eq(stats().ssd.used_blocks, 4, "the index was not rebuilt");
    cr_assert_eq(bring_back(100, 4, &m, NULL), 4);
    cr_assert_eq(m.ssd_blocks, 4);
    close_tier();
}

/* Two tier stacks of one model given one directory (two ranks, or an old
 * and a new process overlapping) would hand out the same slots and serve
 * each other's bytes: the second is refused while the first has the file,
 * and its cache is left as it was. */
Test(tier_ssd, a_second_tier_on_the_same_file_is_refused_while_the_first_has_it)
{
    open_tier(dir, "model-a");
    kvrt_cache_params_t cp = {.field_mask = KVRT_CACHE_PARAM_FINGERPRINT};
    kvrt_kv_layout_t layout = test_layout(TPB);
    ASSERT_OK(ctx, kvrt_model_fingerprint("model-a", &layout, &cp.model_fingerprint));
    kvrt_pool_t *pool2 = test_pool(ctx, 17, TPB);
    kvrt_cache_t *cache2 = NULL;
    ASSERT_OK(ctx, kvrt_cache_create(pool2, &cp, &cache2));
    kvrt_tier_params_t p = {.field_mask = KVRT_TIER_PARAM_HOST_BLOCKS | KVRT_TIER_PARAM_SSD,
                            .host_blocks = 4, .ssd_blocks = 64, .ssd_dir = dir};
    kvrt_tier_t *tier2 = NULL;
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_tier_create(cache2, &p, &tier2));
    cr_assert_null(tier2);
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "in use by another tier") != NULL, "%s",
              kvrt_ctx_last_error(ctx));
    close_tier();
    ASSERT_OK(ctx, kvrt_tier_create(cache2, &p, &tier2)); /* the file is free now */
    ASSERT_OK(ctx, kvrt_tier_destroy(tier2));
    ASSERT_OK(ctx, kvrt_cache_destroy(cache2));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool2));
}

/* Flips one byte of the block in slot `slot` (past the header). */
static void corrupt_slot(uint32_t slot, uint64_t slot_bytes)
{
    int fd = open(data_file(), O_RDWR);
    cr_assert_geq(fd, 0);
    uint8_t b;
    off_t at = (off_t)(slot * slot_bytes + TIER_HEADER_BYTES + 10);
    cr_assert_eq(pread(fd, &b, 1, at), 1);
    b ^= 0x40;
    cr_assert_eq(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

Test(tier_ssd, a_corrupted_block_is_a_miss_with_a_reason_never_data)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    uint64_t slot_bytes = TIER_HEADER_BYTES + (info.block_bytes + 4095) / 4096 * 4096;
    /* Slot 0 holds the first block written back: the deepest (leaf first). */
    for (uint32_t s = 0; s < 4; s++)
        corrupt_slot(s, slot_bytes);
    kvrt_tier_match_t m;
    kvrt_tier_completion_t done = {0};
    cr_assert_eq(bring_back(100, 4, &m, &done), 0);
    cr_assert_eq(done.miss, KVRT_TIER_MISS_CHECKSUM);
    kvrt_tier_stats_t s = stats();
    cr_assert_eq(s.ssd.errors, 4);
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.ssd_blocks, 0, "blocks that failed verification stay indexed");
    close_tier();
    /* Nor does the next process index them again, only to fail the check. */
    open_tier(dir, "model-a");
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.ssd_blocks, 0, "a slot that failed verification was indexed at restart");
    cr_assert_eq(stats().ssd.errors, 0);
    close_tier();
}

Test(tier_ssd, a_truncated_file_is_a_miss_and_the_tier_keeps_working)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    cr_assert_eq(truncate(data_file(), 0), 0);
    kvrt_tier_match_t m;
    kvrt_tier_completion_t done = {0};
    cr_assert_eq(bring_back(100, 4, &m, &done), 0);
    cr_assert_eq(done.miss, KVRT_TIER_MISS_TRUNCATED);
    cr_assert_gt(stats().ssd.errors, 0);
    offload_prompt(300); /* writes extend the file again */
    cr_assert_eq(bring_back(300, 4, &m, NULL), 4);
    close_tier();
}

Test(tier_ssd, a_deleted_file_drops_the_tier_and_is_created_again)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    char path[512];
    snprintf(path, sizeof(path), "%s", data_file());
    cr_assert_eq(unlink(path), 0);
    /* Poll checks the file at most every 10 ms: poll for up to 2 s. */
    uint32_t n;
    for (int i = 0; i < 2000 && !stats().ssd.errors; i++) {
        ASSERT_OK(ctx, kvrt_tier_poll(tier, NULL, 0, &n));
        usleep(1000);
    }
    ASSERT_OK(ctx, kvrt_tier_poll(tier, NULL, 0, &n)); /* created again, nothing in flight */
    kvrt_tier_stats_t s = stats();
    cr_assert_eq(s.ssd.used_blocks, 0);
    cr_assert_eq(s.ssd.errors, 1);
    cr_assert_geq(s.ssd.drops, 4);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "the file was not created again");
    offload_prompt(300);
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(300, 4, &m, NULL), 4);
    close_tier();
}

static int fail_every(void *user, tier_job_kind_t kind, int32_t slot)
{
    return kind == *(tier_job_kind_t *)user ? EIO : 0;
}

Test(tier_ssd, io_errors_are_counted_and_the_blocks_dropped)
{
    open_tier(dir, "model-a");
    tier_job_kind_t failing = JOB_WRITE;
    kvrt_tier_set_fault_hook(tier, fail_every, &failing);
    offload_prompt(100);
    kvrt_tier_stats_t s = stats();
    cr_assert_eq(s.ssd.offloads, 0);
    cr_assert_eq(s.ssd.errors, 4);
    cr_assert_eq(s.ssd.drops, 4);
    cr_assert_eq(s.ssd.used_blocks, 0);
    kvrt_tier_set_fault_hook(tier, NULL, NULL);
    offload_prompt(200);
    failing = JOB_READ;
    kvrt_tier_set_fault_hook(tier, fail_every, &failing);
    kvrt_tier_match_t m;
    kvrt_tier_completion_t done = {0};
    cr_assert_eq(bring_back(200, 4, &m, &done), 0);
    cr_assert_eq(m.ssd_blocks, 4);
    cr_assert_eq(done.miss, KVRT_TIER_MISS_IO);
    kvrt_tier_set_fault_hook(tier, NULL, NULL);
    close_tier();
}

Test(tier_ssd, a_full_disk_is_counted_and_the_engine_keeps_running)
{
    char mnt[80];
    snprintf(mnt, sizeof(mnt), "%s/small", dir);
    cr_assert_eq(mkdir(mnt, 0700), 0);
    /* 3 pages: room for the first slot's header and a little more. */
    if (mount("kvrt-tier-test", mnt, "tmpfs", 0, "size=12k") != 0) {
        rmdir(mnt);
        cr_skip_test("cannot mount a tmpfs here (%s): needs root or CAP_SYS_ADMIN",
                     strerror(errno));
    }
    snprintf(mounted, sizeof(mounted), "%s", mnt);
    open_tier(mnt, "model-a");
    for (int32_t p = 0; p < 4; p++)
        offload_prompt(100 * (p + 1));
    kvrt_tier_stats_t s = stats();
    cr_assert_gt(s.ssd.errors, 0, "a full disk must show as errors");
    cr_assert_gt(s.ssd.drops, 0);
    cr_assert_lt(s.ssd.offloads, 16);
    close_tier();
    cr_assert_eq(umount(mnt), 0, "%s", strerror(errno));
    mounted[0] = 0;
    rmdir(mnt);
}

/* The file is sized at create, so it is mostly never-written slots: the
 * rebuild finds a block written far into it and nothing else, and the
 * file's size covers every slot. */
Test(tier_ssd, rebuild_finds_a_block_past_reserved_holes)
{
    ssd_file_t f;
    kvrt_block_hash_t root = {11, 12};
    const uint64_t block_bytes = 6000; /* padded to 8 KiB: 12 KiB slots */
    ASSERT_OK(ctx, tier_ssd_open(ctx, &f, dir, &root, 99, block_bytes, true));
    tier_ssd_reserve(ctx, &f, 64);
    struct stat st;
    cr_assert_eq(fstat(f.fd, &st), 0);
    cr_assert_eq((uint64_t)st.st_size, 64 * f.slot_bytes, "the file is sized at create");
    uint8_t *slot = calloc(1, f.slot_bytes);
    cr_assert_not_null(slot);
    memset(slot + TIER_HEADER_BYTES, 0x5c, block_bytes);
    kvrt_cache_block_name_t name = {.key = {40, 41}, .content = {42, 43}, .depth = 3};
    tier_ssd_header_write(&f, &name, tier_checksum(slot + TIER_HEADER_BYTES, block_bytes), slot);
    cr_assert_eq(pwrite(f.fd, slot, f.slot_bytes, (off_t)(40 * f.slot_bytes)),
                 (ssize_t)f.slot_bytes);
    cr_assert_eq(fsync(f.fd), 0);
    slot_dir_t d;
    cr_assert_eq(tier_dir_init(&d, 64), KVRT_OK);
    cr_assert_eq(tier_ssd_rebuild(ctx, &f, &d), 1);
    cr_assert_eq(tier_dir_find(&d, &name.key), 40);
    cr_assert_eq(d.used, 1);
    cr_assert_eq(tier_dir_take(&d), 0, "the free slots are the others, lowest first");
    tier_dir_destroy(&d);
    free(slot);
    tier_ssd_close(&f);
}

/* A slot let go of keeps its header, and its key may be written again to
 * another slot: at the next start the first copy is indexed and the other
 * slots are free, counted once each (the free list used to take them a
 * second time, past its end). */
Test(tier_ssd, rebuild_indexes_one_copy_of_a_key_written_to_several_slots)
{
    ssd_file_t f;
    kvrt_block_hash_t root = {11, 12};
    const uint64_t block_bytes = 6000;
    ASSERT_OK(ctx, tier_ssd_open(ctx, &f, dir, &root, 99, block_bytes, true));
    uint8_t *slot = calloc(1, f.slot_bytes);
    cr_assert_not_null(slot);
    memset(slot + TIER_HEADER_BYTES, 0x5c, block_bytes);
    kvrt_cache_block_name_t name = {.key = {40, 41}, .content = {42, 43}, .depth = 3};
    tier_ssd_header_write(&f, &name, tier_checksum(slot + TIER_HEADER_BYTES, block_bytes), slot);
    static const uint32_t copies[3] = {2, 5, 7};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(pwrite(f.fd, slot, f.slot_bytes, (off_t)(copies[i] * f.slot_bytes)),
                     (ssize_t)f.slot_bytes);
    cr_assert_eq(fsync(f.fd), 0);
    slot_dir_t d;
    cr_assert_eq(tier_dir_init(&d, 8), KVRT_OK);
    cr_assert_eq(tier_ssd_rebuild(ctx, &f, &d), 1);
    cr_assert_eq(tier_dir_find(&d, &name.key), 2, "the first copy");
    cr_assert_eq(d.used, 1);
    cr_assert_eq(d.free_count, 7);
    uint32_t taken = 0;
    for (int32_t s = tier_dir_take(&d); s >= 0; s = tier_dir_take(&d)) {
        cr_assert_neq(s, 2, "the indexed slot is handed out");
        taken++;
    }
    cr_assert_eq(taken, 7);
    tier_dir_destroy(&d);
    free(slot);
    tier_ssd_close(&f);
}

/* A reset of the cache (new weights) reaches the tiers: what they held is
 * not matched after it, and the next process does not index it again
 * from the file. (The host level of this suite's tiers writes back at
 * once: test_tier_host has its own.) */
Test(tier_ssd, a_cache_reset_drops_what_the_tiers_hold_here_and_in_the_file)
{
    open_tier(dir, "model-a");
    offload_prompt(100);
    offload_prompt(300);
    cr_assert_geq(stats().ssd.used_blocks, 8);
    ASSERT_OK(ctx, kvrt_cache_reset(cache, 0));
    kvrt_tier_match_t m;
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.ssd_blocks + m.host_blocks, 0, "K/V of before the reset was matched");
    cr_assert_eq(bring_back(300, 4, &m, NULL), 0);
    cr_assert_eq(m.ssd_blocks + m.host_blocks, 0, "K/V of before the reset was matched");
    kvrt_tier_stats_t after = stats();
    cr_assert_eq(after.ssd.used_blocks, 0);
    cr_assert_eq(after.host.used_blocks, 0);
    close_tier();
    open_tier(dir, "model-a");
    cr_assert_eq(stats().ssd.used_blocks, 0, "the file still held blocks of before the reset");
    offload_prompt(100); /* and the tiers work on */
    cr_assert_eq(bring_back(100, 4, &m, NULL), 4);
    close_tier();
}

static int slow_read(void *user, tier_job_kind_t kind, int32_t slot)
{
    (void)user;
    (void)slot;
    if (kind == JOB_READ)
        usleep(300 * 1000);
    return 0;
}

/* A reset frees the cache's idle blocks at once: a clean-ahead copy still
 * reading one keeps it until the copy ends (before, the block was freed
 * under it, reused, and its new bytes came back under the old name), the
 * copy publishes nothing, and onloads under way land nothing. The worker
 * is held in a slow SSD read so that the copies are still queued when the
 * reset comes; the test then writes another request's bytes into every
 * block the pool hands out (a race with the copies, which TSan sees, if
 * one of theirs were among them). */
Test(tier_ssd, copies_under_way_at_a_cache_reset_publish_and_land_nothing)
{
    open_tier(dir, "model-a");
    offload_prompt(300); /* on SSD for the next process */
    close_tier();
    open_tier_sized(dir, "model-a", 32); /* room for clean-ahead */
    prefill(100, 4);
    prefill(200, 4);
    kvrt_tier_set_fault_hook(tier, slow_read, NULL);
    int32_t t[16], hits[4], fresh[1];
    kvrt_block_hash_t hashes[4];
    kvrt_tier_match_t m;
    prompt(t, 16, 300);
    ASSERT_OK(ctx, kvrt_tier_match(tier, t, 16, NULL, 4, hits, hashes, &m));
    cr_assert_geq(m.ssd_blocks, 1);
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, 1, fresh));
    uint64_t ticket;
    uint32_t accepted, n;
    ASSERT_OK(ctx, kvrt_tier_onload(tier, 0, 1, hashes, NULL, NULL, fresh, &ticket, &accepted));
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL); /* the worker is in the read */
    ASSERT_OK(ctx, kvrt_tier_poll(tier, NULL, 0, &n)); /* clean-ahead queues 100's blocks */
    cr_assert_gt(stats().in_flight, 1, "no clean-ahead copy queued behind the read");
    ASSERT_OK(ctx, kvrt_cache_reset(cache, 0));
    kvrt_pool_info_t info;
    ASSERT_OK(ctx, kvrt_pool_info(pool, &info));
    cr_assert_gt(info.used_blocks, 1, "the blocks being copied were freed under the copies");
    int32_t all[16];
    uint32_t nall = info.free_blocks;
    cr_assert_leq(nall, 16);
    ASSERT_OK(ctx, kvrt_pool_alloc(pool, nall, all));
    for (uint32_t i = 0; i < nall; i++)
        fill_block(all[i], 999, i); /* another request's bytes */
    kvrt_tier_completion_t done[4];
    ASSERT_OK(ctx, kvrt_tier_drain(tier, 10000, done, 4, &n));
    kvrt_tier_set_fault_hook(tier, NULL, NULL);
    cr_assert_eq(n, 1);
    cr_assert_eq(done[0].ticket, ticket);
    cr_assert_eq(done[0].landed, 0, "an onload under way at the reset landed");
    cr_assert_eq(done[0].miss, KVRT_TIER_MISS_RESET);
    ASSERT_OK(ctx, kvrt_pool_free(pool, nall, all));
    ASSERT_OK(ctx, kvrt_pool_free(pool, 1, fresh));
    cr_assert_eq(stats().host.offloads, 0, "a copy of before the reset was published");
    cr_assert_eq(bring_back(100, 4, &m, NULL), 0);
    cr_assert_eq(m.host_blocks + m.ssd_blocks, 0);
    close_tier();
}

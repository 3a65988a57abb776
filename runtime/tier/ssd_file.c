/*
 * ssd_file.c - the SSD tier's file: naming, opening (O_DIRECT, or buffered
 * where the file system refuses it), the block header, and the index
 * rebuild at start.
 *
 * The file is ssd_dir/kvrt-<root>-<layout>.kvblk: the root content hash
 * (derived from the model fingerprint) and a hash of the layout are in the
 * name, so two models or layouts never share a file, and again in every
 * header, so a file renamed or copied from elsewhere serves nothing. A
 * tier holds an exclusive flock on its file while it is open: a second
 * tier on the same file is refused.
 *
 * Header (TIER_HEADER_BYTES, little-endian, the rest zero):
 *   0 magic "KVRTBLK1"   8 version (u32)   12 header bytes (u32)
 *  16 root (lo, hi)     32 layout hash     40 block bytes
 *  48 key (lo, hi)      64 content (lo, hi) 80 parent key (lo, hi)
 *  96 depth (u32)      100 name flags (u32) 104 XXH3-64 of the block bytes
 * 112 XXH3-64 of bytes 0..111
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/endian.h"
#include "tier/tier_internal.h"

#define MAGIC "KVRTBLK1"
#define VERSION 1u
#define HEADER_SIGNED 112u

uint64_t tier_checksum(const void *bytes, uint64_t len) { return XXH3_64bits(bytes, len); }

static void store_hash(uint8_t *p, const kvrt_block_hash_t *h)
{
    kvrt_store_le64(p, h->lo);
    kvrt_store_le64(p + 8, h->hi);
}

static kvrt_block_hash_t load_hash(const uint8_t *p)
{
    return (kvrt_block_hash_t){kvrt_load_le64(p), kvrt_load_le64(p + 8)};
}

void tier_ssd_header_write(const ssd_file_t *f, const kvrt_cache_block_name_t *name,
                           uint64_t payload_checksum, void *header)
{
    uint8_t *h = header;
    memset(h, 0, TIER_HEADER_BYTES);
    memcpy(h, MAGIC, 8);
    kvrt_store_le32(h + 8, VERSION);
    kvrt_store_le32(h + 12, TIER_HEADER_BYTES);
    store_hash(h + 16, &f->root);
    kvrt_store_le64(h + 32, f->layout_hash);
    kvrt_store_le64(h + 40, f->block_bytes);
    store_hash(h + 48, &name->key);
    store_hash(h + 64, &name->content);
    store_hash(h + 80, &name->parent_key);
    kvrt_store_le32(h + 96, name->depth);
    kvrt_store_le32(h + 100, name->flags);
    kvrt_store_le64(h + 104, payload_checksum);
    kvrt_store_le64(h + HEADER_SIGNED, XXH3_64bits(h, HEADER_SIGNED));
}

/* The name in a header that verifies and belongs to this file. */
static bool header_parse(const ssd_file_t *f, const uint8_t *h, kvrt_cache_block_name_t *name,
                         uint64_t *checksum)
{
    if (memcmp(h, MAGIC, 8) || kvrt_load_le32(h + 8) != VERSION ||
        kvrt_load_le32(h + 12) != TIER_HEADER_BYTES ||
        kvrt_load_le64(h + HEADER_SIGNED) != XXH3_64bits(h, HEADER_SIGNED))
        return false;
    kvrt_block_hash_t root = load_hash(h + 16);
    if (root.lo != f->root.lo || root.hi != f->root.hi ||
        kvrt_load_le64(h + 32) != f->layout_hash || kvrt_load_le64(h + 40) != f->block_bytes)
        return false;
    *name = (kvrt_cache_block_name_t){
        .key = load_hash(h + 48),
        .content = load_hash(h + 64),
        .parent_key = load_hash(h + 80),
        .depth = kvrt_load_le32(h + 96),
        .flags = kvrt_load_le32(h + 100),
    };
    *checksum = kvrt_load_le64(h + 104);
    return true;
}

bool tier_ssd_header_check(const ssd_file_t *f, const void *header,
                           const kvrt_cache_block_name_t *expect, uint64_t *checksum_out)
{
    kvrt_cache_block_name_t name;
    if (!header_parse(f, header, &name, checksum_out))
        return false;
    return name.key.lo == expect->key.lo && name.key.hi == expect->key.hi &&
           name.content.lo == expect->content.lo && name.content.hi == expect->content.hi;
}

kvrt_status_t tier_ssd_open(kvrt_ctx_t *ctx, ssd_file_t *f, const char *dir,
                            const kvrt_block_hash_t *root, uint64_t layout_hash,
                            uint64_t block_bytes, bool want_buffered)
{
    memset(f, 0, sizeof(*f));
    f->fd = -1;
    f->root = *root;
    f->layout_hash = layout_hash;
    f->block_bytes = block_bytes;
    f->slot_bytes = tier_slot_bytes(block_bytes);
    int n = snprintf(f->path, sizeof(f->path), "%s/kvrt-%016" PRIx64 "%016" PRIx64 "-%016" PRIx64
                     ".kvblk", dir, root->hi, root->lo, layout_hash);
    if (n < 0 || (size_t)n >= sizeof(f->path))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "ssd_dir '%s' is too long", dir);
    int flags = O_RDWR | O_CREAT | O_CLOEXEC;
    if (!want_buffered) {
        f->fd = open(f->path, flags | O_DIRECT, 0600);
        if (f->fd < 0 && errno == EINVAL)
            kvrt_log(ctx, KVRT_LOG_WARN, "tier: %s refuses O_DIRECT; using buffered I/O",
                     f->path);
    }
    if (f->fd < 0) {
        f->fd = open(f->path, flags, 0600);
        f->buffered = true;
    }
    if (f->fd < 0)
        return kvrt_fail(ctx, KVRT_ERR_IO, "tier: cannot open %s: %s", f->path, strerror(errno));
    /* One tier per file: two (two ranks or replicas given one directory,
     * an old and a new process overlapping) would hand out the same slots
     * from their own directories, and one would serve the other's bytes
     * under its key, checksums and all. The lock goes with the descriptor
     * (a crashed process leaves none behind). */
    if (flock(f->fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        if (err == EWOULDBLOCK) {
            close(f->fd);
            f->fd = -1;
            return kvrt_fail(ctx, KVRT_ERR_BUSY,
                             "tier: %s is in use by another tier (in this process or "
                             "another); give each its own ssd_dir",
                             f->path);
        }
        kvrt_log(ctx, KVRT_LOG_WARN, "tier: cannot lock %s (%s); nothing keeps another tier "
                 "from sharing it", f->path, strerror(err));
    }
    return KVRT_OK;
}

void tier_ssd_reserve(kvrt_ctx_t *ctx, const ssd_file_t *f, uint32_t slots)
{
    /* The file's size too, not only its space: an O_DIRECT write past the
     * end of the file extends it, which ext4 runs synchronously under the
     * inode lock (one write at a time whatever the queue depth). The
     * reserved blocks are unwritten extents, holes to SEEK_DATA, so the
     * rebuild at the next start still reads only slots written. */
    uint64_t bytes = (uint64_t)slots * f->slot_bytes;
    if (fallocate(f->fd, 0, 0, (off_t)bytes) == 0)
        return;
    int err = errno;
    if (err == EOPNOTSUPP && ftruncate(f->fd, (off_t)bytes) == 0)
        return; /* no fallocate: at least writes never extend */
    kvrt_log(ctx, KVRT_LOG_WARN, "tier: cannot reserve %llu bytes for %s (%s); blocks "
             "that do not fit will fail to write and be dropped",
             (unsigned long long)bytes, f->path, strerror(err));
}

void tier_ssd_discard(kvrt_ctx_t *ctx, const ssd_file_t *f, uint32_t first, uint32_t count)
{
    /* Zeroed (unwritten extents, holes to SEEK_DATA, as a reserved file
     * is), else punched: either way a header no longer reads back. */
    off_t at = (off_t)((uint64_t)first * f->slot_bytes), len = (off_t)(count * f->slot_bytes);
    if (fallocate(f->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, at, len) == 0 ||
        fallocate(f->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, len) == 0)
        return;
    kvrt_log(ctx, KVRT_LOG_WARN, "tier: cannot clear slots %u..%u of %s (%s); a restart may "
             "index their blocks again", first, first + count - 1, f->path, strerror(errno));
}

void tier_ssd_close(ssd_file_t *f)
{
    if (f->fd >= 0)
        close(f->fd);
    f->fd = -1;
}

bool tier_ssd_lost(const ssd_file_t *f)
{
    struct stat by_fd, by_name;
    if (fstat(f->fd, &by_fd) != 0 || by_fd.st_nlink == 0)
        return true;
    return stat(f->path, &by_name) != 0 || by_name.st_ino != by_fd.st_ino ||
           by_name.st_dev != by_fd.st_dev;
}

uint32_t tier_ssd_rebuild(kvrt_ctx_t *ctx, const ssd_file_t *f, slot_dir_t *dir)
{
    /* A separate buffered descriptor: headers are read one page each,
     * once, at start. */
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    uint8_t *h = NULL;
    uint32_t found = 0, rejected = 0, duplicates = 0;
    if (fd < 0 || posix_memalign((void **)&h, TIER_ALIGN, TIER_HEADER_BYTES) != 0)
        goto out;
    /* Only slots in data: a reserved file is mostly holes (SEEK_DATA skips
     * unwritten extents), and reading their zeros would fill the page
     * cache. Where SEEK_DATA is not supported every slot is read. */
    off_t data = 0, hole = 0;
    for (uint32_t slot = 0; slot < dir->num_slots; slot++) {
        off_t at = (off_t)(slot * f->slot_bytes);
        if (at >= hole) {
            data = lseek(fd, at, SEEK_DATA);
            if (data < 0 && errno == ENXIO)
                break; /* nothing written past here */
            if (data < 0)
                data = at, hole = INT64_MAX;
            else
                hole = lseek(fd, data, SEEK_HOLE);
            if (hole < 0)
                hole = INT64_MAX;
            if (data > at) { /* resume at the first slot starting in data */
                uint64_t next = ((uint64_t)data + f->slot_bytes - 1) / f->slot_bytes;
                if (next >= dir->num_slots)
                    break;
                slot = (uint32_t)next - 1;
                continue;
            }
        }
        ssize_t got = pread(fd, h, TIER_HEADER_BYTES, at);
        if (got <= 0)
            break; /* end of file */
        kvrt_cache_block_name_t name;
        uint64_t checksum;
        if (got != TIER_HEADER_BYTES || !header_parse(f, h, &name, &checksum)) {
            rejected += got == TIER_HEADER_BYTES && h[0] != 0;
            continue;
        }
        /* A slot let go of keeps its header on disk (an eviction, a failed
         * read), and its key may have been written again elsewhere since:
         * the first copy is indexed, the others' slots are free. Either
         * holds the block's bytes or fails its checksum at onload. */
        if (tier_dir_find(dir, &name.key) >= 0) {
            duplicates++;
            continue;
        }
        dir->state[slot] = SLOT_FILLING;
        dir->used++;
        tier_dir_publish(dir, (int32_t)slot, &name);
        found++;
    }
    /* The free list again, without the slots found: lowest slot first. */
    dir->free_count = 0;
    for (uint32_t slot = dir->num_slots; slot-- > 0;)
        if (dir->state[slot] == SLOT_FREE)
            dir->free_stack[dir->free_count++] = (int32_t)slot;
    kvrt_log(ctx, KVRT_LOG_INFO,
             "tier: %s: %u blocks indexed, %u headers rejected, %u older copies dropped",
             f->path, found, rejected, duplicates);
out:
    free(h);
    if (fd >= 0)
        close(fd);
    return found;
}

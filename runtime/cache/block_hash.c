/*
 * block_hash.c - the block-hash spec of docs/block-hash.md, version 1.
 *
 * Every value is XXH3-128 (seed 0) of one *record*: a 4-byte tag
 * "kv" <version> <kind> followed by little-endian fields. Kinds:
 *   'F' model+layout fingerprint   'R' chain root
 *   'B' block content              'K' keys digest (adapter, salt)
 *   'X' block key (content + keys digest)
 * The tag separates the kinds, so a record of one kind never hashes like a
 * record of another, and carries the version, so a v2 encoding never
 * collides with v1 values.
 *
 * The block record is built in a stack buffer and hashed in one call for
 * blocks up to BLOCK_BUFFER_TOKENS tokens (the fast path: one memcpy of the
 * token ids and one XXH3 call); longer blocks and blocks with multimodal
 * items stream the same bytes through an XXH3 state, which by XXH3's
 * definition yields the same value.
 */
#include <string.h>
/* libxxhash's own header in its header-only mode: the short-record XXH3
 * path inlines into kvrt_cache_hash_block() (about 30% faster per 16-token
 * block than the call into the shared library; same function, same
 * values), and the streaming state can live on the stack. */
#define XXH_STATIC_LINKING_ONLY
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "cache/cache_internal.h"
#include "core/endian.h"

#define TAG(kind) ((uint32_t)'k' | (uint32_t)'v' << 8 | (uint32_t)KVRT_BLOCK_HASH_VERSION << 16 | \
                   (uint32_t)(kind) << 24)
#define BLOCK_BUFFER_TOKENS 512u
#define MODEL_ID_MAX 4096u

static inline void put_hash(uint8_t *p, const kvrt_block_hash_t *h)
{
    kvrt_store_le64(p, h->lo);
    kvrt_store_le64(p + 8, h->hi);
}

static inline kvrt_block_hash_t from_xxh(XXH128_hash_t h)
{
    return (kvrt_block_hash_t){.lo = h.low64, .hi = h.high64};
}

/* Token ids as int32 little endian: on little-endian hosts the caller's
 * array already is that encoding. */
static inline void put_tokens(uint8_t *p, const int32_t *tokens, uint32_t n)
{
#if KVRT_BIG_ENDIAN
    for (uint32_t i = 0; i < n; i++)
        kvrt_store_le32(p + 4 * i, (uint32_t)tokens[i]);
#else
    memcpy(p, tokens, (size_t)n * 4);
#endif
}

bool kvrt_cache_keys_valid(const kvrt_hash_keys_t *keys)
{
    if (!keys)
        return true;
    const uint64_t known = KVRT_HASH_KEY_ADAPTER | KVRT_HASH_KEY_SALT | KVRT_HASH_KEY_MM;
    if (keys->field_mask & ~known)
        return false;
    if ((keys->field_mask & KVRT_HASH_KEY_SALT) &&
        (!keys->salt || keys->salt_bytes == 0 || keys->salt_bytes > KVRT_CACHE_SALT_MAX))
        return false;
    if ((keys->field_mask & KVRT_HASH_KEY_MM) && keys->num_mm_items) {
        if (!keys->mm_items)
            return false;
        uint64_t end = 0;
        for (uint32_t i = 0; i < keys->num_mm_items; i++) {
            const kvrt_mm_item_t *m = &keys->mm_items[i];
            if (m->length == 0 || m->offset < end)
                return false; /* empty, unsorted or overlapping */
            end = (uint64_t)m->offset + m->length;
        }
    }
    return true;
}

/* The multimodal items of keys overlapping [first, first + n): a range of
 * the sorted array, found by binary search on the items' ends (sorted too,
 * since items do not overlap). */
static void mm_overlap(const kvrt_hash_keys_t *keys, uint32_t first, uint32_t n,
                       uint32_t *begin_out, uint32_t *count_out)
{
    *begin_out = 0;
    *count_out = 0;
    if (!keys || !(keys->field_mask & KVRT_HASH_KEY_MM) || keys->num_mm_items == 0)
        return;
    const kvrt_mm_item_t *items = keys->mm_items;
    uint32_t lo = 0, hi = keys->num_mm_items;
    while (lo < hi) { /* first item whose end is past `first` */
        uint32_t mid = lo + (hi - lo) / 2;
        if ((uint64_t)items[mid].offset + items[mid].length <= first)
            lo = mid + 1;
        else
            hi = mid;
    }
    uint64_t last = (uint64_t)first + n;
    uint32_t end = lo;
    while (end < keys->num_mm_items && items[end].offset < last)
        end++;
    *begin_out = lo;
    *count_out = end - lo;
}

/* Streams the block record: tag, num_tokens, parent, tokens, num_mm, mm. */
static kvrt_block_hash_t hash_block_streamed(const kvrt_block_hash_t *parent,
                                             const int32_t *tokens, uint32_t n,
                                             const kvrt_mm_item_t *mm, uint32_t num_mm)
{
    XXH3_state_t state;
    XXH3_INITSTATE(&state);
    XXH3_128bits_reset(&state);
    uint8_t head[24];
    kvrt_store_le32(head, TAG('B'));
    kvrt_store_le32(head + 4, n);
    put_hash(head + 8, parent);
    XXH3_128bits_update(&state, head, sizeof(head));
    uint8_t chunk[1024];
    for (uint32_t done = 0; done < n;) {
        uint32_t step = n - done < 256 ? n - done : 256;
        put_tokens(chunk, tokens + done, step);
        XXH3_128bits_update(&state, chunk, (size_t)step * 4);
        done += step;
    }
    uint8_t item[24];
    kvrt_store_le32(item, num_mm);
    XXH3_128bits_update(&state, item, 4);
    for (uint32_t i = 0; i < num_mm; i++) {
        put_hash(item, &mm[i].content_hash);
        kvrt_store_le32(item + 16, mm[i].offset);
        kvrt_store_le32(item + 20, mm[i].length);
        XXH3_128bits_update(&state, item, sizeof(item));
    }
    return from_xxh(XXH3_128bits_digest(&state));
}

/* The record of a text-only block of n tokens, in a buffer whose header
 * (tag, n) and footer (no multimodal items) are already written. Inlined
 * with a constant n where it can be, so XXH3's short path is specialised. */
static inline __attribute__((always_inline)) kvrt_block_hash_t
hash_text_block(uint8_t *buffer, const kvrt_block_hash_t *parent, const int32_t *tokens,
                uint32_t n)
{
    put_hash(buffer + 8, parent);
    put_tokens(buffer + 24, tokens, n);
    return from_xxh(XXH3_128bits(buffer, 24 + (size_t)n * 4 + 4));
}

static inline void put_text_frame(uint8_t *buffer, uint32_t n)
{
    kvrt_store_le32(buffer, TAG('B'));
    kvrt_store_le32(buffer + 4, n);
    kvrt_store_le32(buffer + 24 + (size_t)n * 4, 0);
}

kvrt_block_hash_t kvrt_cache_hash_block(const kvrt_block_hash_t *parent, const int32_t *tokens,
                                   uint32_t n, uint32_t first_token,
                                   const kvrt_hash_keys_t *keys)
{
    uint32_t mm_begin, num_mm;
    mm_overlap(keys, first_token, n, &mm_begin, &num_mm);
    if (KVRT_UNLIKELY(num_mm || n > BLOCK_BUFFER_TOKENS))
        return hash_block_streamed(parent, tokens, n,
                                   num_mm ? keys->mm_items + mm_begin : NULL, num_mm);
    uint8_t buffer[24 + BLOCK_BUFFER_TOKENS * 4 + 4];
    if (n == 16) { /* the common size, with a compile-time record length */
        put_text_frame(buffer, 16);
        return hash_text_block(buffer, parent, tokens, 16);
    }
    put_text_frame(buffer, n);
    return hash_text_block(buffer, parent, tokens, n);
}

void kvrt_cache_hash_run(const kvrt_block_hash_t *parent, const int32_t *tokens, uint32_t n,
                         uint32_t num_blocks, uint32_t first_token,
                         const kvrt_hash_keys_t *keys, kvrt_block_hash_t *hashes_out)
{
    bool text_only = !keys || !(keys->field_mask & KVRT_HASH_KEY_MM) || keys->num_mm_items == 0;
    if (!text_only || n > BLOCK_BUFFER_TOKENS) {
        for (uint32_t i = 0; i < num_blocks; i++) {
            hashes_out[i] = kvrt_cache_hash_block(parent, tokens + (size_t)i * n, n,
                                                  first_token + i * n, keys);
            parent = &hashes_out[i];
        }
        return;
    }
    /* The chain is serial (each record holds its parent), so what counts is
     * the latency of one hash: one frame for the whole run, and the
     * 16-token block (the common size) with a compile-time length. */
    uint8_t buffer[24 + BLOCK_BUFFER_TOKENS * 4 + 4];
    put_text_frame(buffer, n);
    if (n == 16) {
        for (uint32_t i = 0; i < num_blocks; i++) {
            hashes_out[i] = hash_text_block(buffer, parent, tokens + (size_t)i * 16, 16);
            parent = &hashes_out[i];
        }
        return;
    }
    for (uint32_t i = 0; i < num_blocks; i++) {
        hashes_out[i] = hash_text_block(buffer, parent, tokens + (size_t)i * n, n);
        parent = &hashes_out[i];
    }
}

bool kvrt_cache_keys_empty(const kvrt_hash_keys_t *keys)
{
    return !keys ||
           (!(keys->field_mask & KVRT_HASH_KEY_SALT) &&
            (!(keys->field_mask & KVRT_HASH_KEY_ADAPTER) || keys->adapter_id == 0));
}

kvrt_block_hash_t kvrt_cache_keys_digest(const kvrt_hash_keys_t *keys)
{
    uint8_t buffer[16 + KVRT_CACHE_SALT_MAX];
    uint64_t adapter = (keys->field_mask & KVRT_HASH_KEY_ADAPTER) ? keys->adapter_id : 0;
    uint32_t salt_bytes = (keys->field_mask & KVRT_HASH_KEY_SALT) ? keys->salt_bytes : 0;
    kvrt_store_le32(buffer, TAG('K'));
    kvrt_store_le64(buffer + 4, adapter);
    kvrt_store_le32(buffer + 12, salt_bytes);
    if (salt_bytes)
        memcpy(buffer + 16, keys->salt, salt_bytes);
    return from_xxh(XXH3_128bits(buffer, 16 + (size_t)salt_bytes));
}

kvrt_block_hash_t kvrt_cache_block_key(const kvrt_block_hash_t *content,
                                  const kvrt_block_hash_t *digest)
{
    uint8_t buffer[36];
    kvrt_store_le32(buffer, TAG('X'));
    put_hash(buffer + 4, content);
    put_hash(buffer + 20, digest);
    return from_xxh(XXH3_128bits(buffer, sizeof(buffer)));
}

kvrt_block_hash_t kvrt_cache_hash_root(const kvrt_block_hash_t *fingerprint)
{
    uint8_t buffer[20];
    kvrt_store_le32(buffer, TAG('R'));
    put_hash(buffer + 4, fingerprint);
    return from_xxh(XXH3_128bits(buffer, sizeof(buffer)));
}

/* ---- public, pure functions ------------------------------------------- */

KVRT_EXPORT kvrt_status_t kvrt_model_fingerprint(const char *model_id,
                                                 const kvrt_kv_layout_t *layout,
                                                 kvrt_block_hash_t *fingerprint_out)
{
    if (!model_id || !layout || !fingerprint_out)
        return KVRT_ERR_INVALID_ARG;
    size_t len = strnlen(model_id, MODEL_ID_MAX + 1);
    if (len == 0 || len > MODEL_ID_MAX)
        return KVRT_ERR_INVALID_ARG;
    kvrt_status_t status = kvrt_layout_validate(layout);
    if (status != KVRT_OK)
        return status;
    /* Optional fields resolved to their defaults, so a zeroed mask and an
     * explicit default give the same fingerprint. */
    const kvrt_kv_layout_t r = kvrt_layout_resolved(layout);
    uint8_t buffer[8 + MODEL_ID_MAX + 28];
    kvrt_store_le32(buffer, TAG('F'));
    kvrt_store_le32(buffer + 4, (uint32_t)len);
    memcpy(buffer + 8, model_id, len);
    uint8_t *p = buffer + 8 + len;
    const uint32_t fields[7] = {layout->num_layers, layout->num_kv_heads, layout->head_dim,
                                layout->tokens_per_block, (uint32_t)r.dtype,
                                (uint32_t)r.format, (uint32_t)r.order};
    for (int i = 0; i < 7; i++)
        kvrt_store_le32(p + 4 * i, fields[i]);
    *fingerprint_out = from_xxh(XXH3_128bits(buffer, 8 + len + 28));
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_block_hash_root(const kvrt_block_hash_t *fingerprint,
                                               kvrt_block_hash_t *root_out)
{
    if (!fingerprint || !root_out)
        return KVRT_ERR_INVALID_ARG;
    *root_out = kvrt_cache_hash_root(fingerprint);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_block_hash(const kvrt_block_hash_t *parent,
                                          const int32_t *tokens, uint32_t num_tokens,
                                          uint32_t first_token, const kvrt_hash_keys_t *keys,
                                          kvrt_block_hash_t *hash_out)
{
    if (!parent || !tokens || !hash_out || num_tokens == 0 ||
        num_tokens > KVRT_BLOCK_HASH_MAX_TOKENS || !kvrt_cache_keys_valid(keys))
        return KVRT_ERR_INVALID_ARG;
    *hash_out = kvrt_cache_hash_block(parent, tokens, num_tokens, first_token, keys);
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_block_key(const kvrt_block_hash_t *content,
                                         const kvrt_hash_keys_t *keys,
                                         kvrt_block_hash_t *key_out)
{
    if (!content || !key_out || !kvrt_cache_keys_valid(keys))
        return KVRT_ERR_INVALID_ARG;
    if (kvrt_cache_keys_empty(keys)) {
        *key_out = *content;
        return KVRT_OK;
    }
    kvrt_block_hash_t digest = kvrt_cache_keys_digest(keys);
    *key_out = kvrt_cache_block_key(content, &digest);
    return KVRT_OK;
}

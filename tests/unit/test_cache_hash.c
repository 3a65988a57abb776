/*
 * test_cache_hash.c - the block-hash spec (docs/block-hash.md, version 1):
 * the published test vectors, the byte encoding rebuilt here independently
 * and hashed with XXH3-128, and the properties the spec promises (chaining,
 * separation of models, adapters, tenants and multimodal content).
 */
#include <string.h>
#include <xxhash.h>

#include "test_helpers.h"

/* ---- the vectors of docs/block-hash.md, hard-coded ---------------------- */

static const kvrt_kv_layout_t vector_layout = {
    .num_layers = 32, .num_kv_heads = 8, .head_dim = 128, .tokens_per_block = 16};

#define ASSERT_HASH(h, want_lo, want_hi)                                         \
    do {                                                                         \
        cr_assert_eq((h).lo, (uint64_t)(want_lo), "lo 0x%016llx",                 \
                     (unsigned long long)(h).lo);                                \
        cr_assert_eq((h).hi, (uint64_t)(want_hi), "hi 0x%016llx",                 \
                     (unsigned long long)(h).hi);                                \
    } while (0)

static void vector_chain(kvrt_block_hash_t *fp, kvrt_block_hash_t *root,
                         kvrt_block_hash_t *b0, kvrt_block_hash_t *b1)
{
    int32_t t[16];
    cr_assert_eq(kvrt_model_fingerprint("meta-llama/Llama-3.1-8B", &vector_layout, fp), KVRT_OK);
    cr_assert_eq(kvrt_block_hash_root(fp, root), KVRT_OK);
    for (int i = 0; i < 16; i++)
        t[i] = i;
    cr_assert_eq(kvrt_block_hash(root, t, 16, 0, NULL, b0), KVRT_OK);
    for (int i = 0; i < 16; i++)
        t[i] = 16 + i;
    cr_assert_eq(kvrt_block_hash(b0, t, 16, 16, NULL, b1), KVRT_OK);
}

Test(cache_hash, published_vectors)
{
    kvrt_block_hash_t fp, root, b0, b1, k;
    vector_chain(&fp, &root, &b0, &b1);
    ASSERT_HASH(fp, 0xc1e80de4a94517c5ull, 0xe4f0862242077c76ull);
    ASSERT_HASH(root, 0xd308964d0d4006c0ull, 0xbec08c38efa3c491ull);
    ASSERT_HASH(b0, 0x668706b0a499cfadull, 0x7d6ba4d0ffbeb128ull);
    ASSERT_HASH(b1, 0xc80a7dc4a790fe08ull, 0x97dfc498bcecdbc5ull);

    kvrt_hash_keys_t salt = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "tenant-a", .salt_bytes = 8};
    cr_assert_eq(kvrt_block_key(&b0, &salt, &k), KVRT_OK);
    ASSERT_HASH(k, 0x3269030030b5c165ull, 0x45d94c94afcdb79full);
    kvrt_hash_keys_t adapter = {.field_mask = KVRT_HASH_KEY_ADAPTER, .adapter_id = 7};
    cr_assert_eq(kvrt_block_key(&b0, &adapter, &k), KVRT_OK);
    ASSERT_HASH(k, 0x0402194be5f7144dull, 0x8fb707b9ab4d802cull);
    kvrt_hash_keys_t both = {.field_mask = KVRT_HASH_KEY_ADAPTER | KVRT_HASH_KEY_SALT,
                             .adapter_id = 7, .salt = "tenant-a", .salt_bytes = 8};
    cr_assert_eq(kvrt_block_key(&b0, &both, &k), KVRT_OK);
    ASSERT_HASH(k, 0x9f5c2c2d95402ef0ull, 0x93fa4e28d79d4dedull);

    int32_t t[1024];
    for (int i = 0; i < 16; i++)
        t[i] = (i >= 4 && i < 12) ? 32000 : i;
    kvrt_mm_item_t item = {.content_hash = {0x0123456789abcdefull, 0xfedcba9876543210ull},
                           .offset = 4, .length = 8};
    kvrt_hash_keys_t mm = {.field_mask = KVRT_HASH_KEY_MM, .mm_items = &item, .num_mm_items = 1};
    kvrt_block_hash_t h;
    cr_assert_eq(kvrt_block_hash(&root, t, 16, 0, &mm, &h), KVRT_OK);
    ASSERT_HASH(h, 0xa16fffac08c223e9ull, 0x6b7b1b685ad686b3ull);
    for (int i = 0; i < 1024; i++)
        t[i] = i * 7;
    cr_assert_eq(kvrt_block_hash(&root, t, 1024, 0, NULL, &h), KVRT_OK);
    ASSERT_HASH(h, 0x79bf26234cb4ac39ull, 0x219150db3728378eull);
}

/* ---- the encoding, rebuilt from the spec's tables --------------------------- */

typedef struct bytes {
    uint8_t data[8192];
    size_t len;
} bytes_t;

static void put(bytes_t *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b->data[b->len++] = (uint8_t)(v >> (8 * i));
}

static void put_tag(bytes_t *b, char kind)
{
    const uint8_t tag[4] = {'k', 'v', 1, (uint8_t)kind};
    memcpy(b->data + b->len, tag, 4);
    b->len += 4;
}

static kvrt_block_hash_t xxh(const bytes_t *b)
{
    XXH128_hash_t h = XXH3_128bits(b->data, b->len);
    return (kvrt_block_hash_t){h.low64, h.high64};
}

Test(cache_hash, encoding_matches_the_spec)
{
    kvrt_block_hash_t fp, root, b0, b1;
    vector_chain(&fp, &root, &b0, &b1);

    bytes_t e = {.len = 0};
    put_tag(&e, 'F');
    const char *model = "meta-llama/Llama-3.1-8B";
    put(&e, strlen(model), 4);
    memcpy(e.data + e.len, model, strlen(model));
    e.len += strlen(model);
    const uint32_t fields[7] = {32, 8, 128, 16, KVRT_DTYPE_FP16, KVRT_KV_SEPARATE,
                                KVRT_ORDER_LAYER_MAJOR};
    for (int i = 0; i < 7; i++)
        put(&e, fields[i], 4);
    cr_assert(memcmp(&fp, &(kvrt_block_hash_t){xxh(&e).lo, xxh(&e).hi}, 16) == 0);

    e.len = 0;
    put_tag(&e, 'R');
    put(&e, fp.lo, 8);
    put(&e, fp.hi, 8);
    kvrt_block_hash_t want = xxh(&e);
    cr_assert(want.lo == root.lo && want.hi == root.hi);

    e.len = 0;
    put_tag(&e, 'B');
    put(&e, 16, 4);
    put(&e, b0.lo, 8);
    put(&e, b0.hi, 8);
    for (int i = 0; i < 16; i++)
        put(&e, (uint32_t)(16 + i), 4);
    put(&e, 0, 4);
    want = xxh(&e);
    cr_assert(want.lo == b1.lo && want.hi == b1.hi, "block record differs from the spec");

    /* Keys digest and block key. */
    e.len = 0;
    put_tag(&e, 'K');
    put(&e, 7, 8);
    put(&e, 8, 4);
    memcpy(e.data + e.len, "tenant-a", 8);
    e.len += 8;
    kvrt_block_hash_t digest = xxh(&e);
    e.len = 0;
    put_tag(&e, 'X');
    put(&e, b0.lo, 8);
    put(&e, b0.hi, 8);
    put(&e, digest.lo, 8);
    put(&e, digest.hi, 8);
    want = xxh(&e);
    kvrt_hash_keys_t both = {.field_mask = KVRT_HASH_KEY_ADAPTER | KVRT_HASH_KEY_SALT,
                             .adapter_id = 7, .salt = "tenant-a", .salt_bytes = 8};
    kvrt_block_hash_t k;
    cr_assert_eq(kvrt_block_key(&b0, &both, &k), KVRT_OK);
    cr_assert(want.lo == k.lo && want.hi == k.hi, "block key differs from the spec");
}

Test(cache_hash, streamed_and_buffered_paths_agree)
{
    /* 512 tokens take the one-call path, 513 the streamed one; a record
     * built by hand must match both. */
    static int32_t t[2048];
    for (int i = 0; i < 2048; i++)
        t[i] = (int32_t)(i * 2654435761u);
    kvrt_block_hash_t parent = {0x1111, 0x2222};
    for (uint32_t n = 510; n <= 515; n++) {
        static bytes_t e;
        e.len = 0;
        put_tag(&e, 'B');
        put(&e, n, 4);
        put(&e, parent.lo, 8);
        put(&e, parent.hi, 8);
        for (uint32_t i = 0; i < n; i++)
            put(&e, (uint32_t)t[i], 4);
        put(&e, 0, 4);
        kvrt_block_hash_t want = xxh(&e), got;
        cr_assert_eq(kvrt_block_hash(&parent, t, n, 0, NULL, &got), KVRT_OK);
        cr_assert(want.lo == got.lo && want.hi == got.hi, "n=%u", n);
    }
}

/* ---- properties ---------------------------------------------------------------- */

Test(cache_hash, everything_that_should_separate_does)
{
    kvrt_block_hash_t fp, root, b0, b1, other;
    vector_chain(&fp, &root, &b0, &b1);
    int32_t t[16];
    for (int i = 0; i < 16; i++)
        t[i] = 16 + i;
    /* Same tokens under another parent: another hash (chaining). */
    cr_assert_eq(kvrt_block_hash(&root, t, 16, 16, NULL, &other), KVRT_OK);
    cr_assert(other.lo != b1.lo || other.hi != b1.hi);
    /* A different layout or model: another fingerprint. */
    kvrt_kv_layout_t l2 = vector_layout;
    l2.field_mask = KVRT_LAYOUT_FIELD_DTYPE;
    l2.dtype = KVRT_DTYPE_BF16;
    kvrt_block_hash_t fp2, fp3;
    cr_assert_eq(kvrt_model_fingerprint("meta-llama/Llama-3.1-8B", &l2, &fp2), KVRT_OK);
    cr_assert(fp2.lo != fp.lo);
    cr_assert_eq(kvrt_model_fingerprint("meta-llama/Llama-3.1-8B-Instruct", &vector_layout, &fp3),
                 KVRT_OK);
    cr_assert(fp3.lo != fp.lo);
    /* An explicit default equals the default. */
    l2.dtype = KVRT_DTYPE_FP16;
    cr_assert_eq(kvrt_model_fingerprint("meta-llama/Llama-3.1-8B", &l2, &fp2), KVRT_OK);
    cr_assert(fp2.lo == fp.lo && fp2.hi == fp.hi);
    /* Empty keys, adapter 0: the key is the content hash. */
    kvrt_hash_keys_t base = {.field_mask = KVRT_HASH_KEY_ADAPTER, .adapter_id = 0};
    kvrt_block_hash_t k0, ka, kb;
    cr_assert_eq(kvrt_block_key(&b0, &base, &k0), KVRT_OK);
    cr_assert(k0.lo == b0.lo && k0.hi == b0.hi);
    kvrt_hash_keys_t sa = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "a", .salt_bytes = 1};
    kvrt_hash_keys_t sb = {.field_mask = KVRT_HASH_KEY_SALT, .salt = "b", .salt_bytes = 1};
    cr_assert_eq(kvrt_block_key(&b0, &sa, &ka), KVRT_OK);
    cr_assert_eq(kvrt_block_key(&b0, &sb, &kb), KVRT_OK);
    cr_assert(ka.lo != kb.lo && ka.lo != b0.lo);
    /* A multimodal item changes exactly the blocks it overlaps. */
    kvrt_mm_item_t item = {.content_hash = {1, 2}, .offset = 20, .length = 4};
    kvrt_hash_keys_t mm = {.field_mask = KVRT_HASH_KEY_MM, .mm_items = &item, .num_mm_items = 1};
    kvrt_block_hash_t with0, with1;
    for (int i = 0; i < 16; i++)
        t[i] = i;
    cr_assert_eq(kvrt_block_hash(&root, t, 16, 0, &mm, &with0), KVRT_OK);
    cr_assert(with0.lo == b0.lo && with0.hi == b0.hi, "item outside the block changed it");
    for (int i = 0; i < 16; i++)
        t[i] = 16 + i;
    cr_assert_eq(kvrt_block_hash(&b0, t, 16, 16, &mm, &with1), KVRT_OK);
    cr_assert(with1.lo != b1.lo, "item inside the block did not change it");
    item.content_hash.hi = 3; /* another image, same placeholder tokens */
    kvrt_block_hash_t with2;
    cr_assert_eq(kvrt_block_hash(&b0, t, 16, 16, &mm, &with2), KVRT_OK);
    cr_assert(with2.lo != with1.lo);
}

Test(cache_hash, bad_arguments_are_refused)
{
    kvrt_block_hash_t h = {0, 0}, out = {5, 5};
    int32_t t[4] = {1, 2, 3, 4};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(NULL, t, 4, 0, NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, NULL, 4, 0, NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, t, 0, 0, NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, t, 4097, 0, NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, t, 4, 0, NULL, NULL));
    kvrt_hash_keys_t bad = {.field_mask = 1u << 9};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, t, 4, 0, &bad, &out));
    kvrt_hash_keys_t nosalt = {.field_mask = KVRT_HASH_KEY_SALT, .salt = NULL, .salt_bytes = 3};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_key(&h, &nosalt, &out));
    char long_salt[KVRT_CACHE_SALT_MAX + 1] = {0};
    kvrt_hash_keys_t big = {.field_mask = KVRT_HASH_KEY_SALT, .salt = long_salt,
                            .salt_bytes = sizeof(long_salt)};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_key(&h, &big, &out));
    kvrt_mm_item_t items[2] = {{.offset = 8, .length = 4}, {.offset = 10, .length = 4}};
    kvrt_hash_keys_t overlap = {.field_mask = KVRT_HASH_KEY_MM, .mm_items = items,
                                .num_mm_items = 2};
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash(&h, t, 4, 0, &overlap, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_key(NULL, NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_key(&h, NULL, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash_root(NULL, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_block_hash_root(&h, NULL));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_model_fingerprint("", &vector_layout, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_model_fingerprint(NULL, &vector_layout, &out));
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_model_fingerprint("m", NULL, &out));
    kvrt_kv_layout_t broken = vector_layout;
    broken.tokens_per_block = 3;
    ASSERT_STATUS(KVRT_ERR_BAD_LAYOUT, kvrt_model_fingerprint("m", &broken, &out));
    cr_assert(out.lo == 5 && out.hi == 5, "output written on failure");
}

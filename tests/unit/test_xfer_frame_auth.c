/*
 * test_xfer_frame_auth.c - sealing and opening frames in every mode and
 * suite (tcp/frame_auth.h): what was sealed opens to the same bytes, and a
 * frame changed anywhere (header, payload, tag), replayed, skipped or
 * opened with another key, suite or mode fails. GMAC and AES-256-GCM are
 * checked against OpenSSL's one-shot GCM, so the suite is the standard
 * construction and not merely self-consistent.
 */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt/xfer.h"
#include "xfer/tcp/frame_auth.h"
#include "xfer/tcp/wire.h"

#define WORD(mode, suite) ((uint32_t)(mode) | (uint32_t)(suite) << KVRT_XFER_FRAME_SUITE_SHIFT)

static const uint32_t words[] = {
    WORD(KVRT_XFER_PROTECT_MAC, KVRT_XFER_SUITE_CHACHA),
    WORD(KVRT_XFER_PROTECT_AEAD, KVRT_XFER_SUITE_CHACHA),
    WORD(KVRT_XFER_PROTECT_MAC, KVRT_XFER_SUITE_AES),
    WORD(KVRT_XFER_PROTECT_AEAD, KVRT_XFER_SUITE_AES),
};

typedef struct pair {
    kvrt_xfer_frame_key_t tx, rx;
} pair_t;

static pair_t pair_up(uint32_t word, uint8_t seed)
{
    uint8_t key[KVRT_XFER_FRAME_KEY_BYTES];
    for (size_t i = 0; i < sizeof(key); i++)
        key[i] = (uint8_t)(seed + i * 7);
    pair_t p;
    cr_assert(kvrt_xfer_frame_key_init(&p.tx, word, key));
    cr_assert(kvrt_xfer_frame_key_init(&p.rx, word, key));
    return p;
}

static void pair_down(pair_t *p)
{
    kvrt_xfer_frame_key_clear(&p->tx);
    kvrt_xfer_frame_key_clear(&p->rx);
}

static void header(uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], uint64_t length)
{
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE, .region = 3, .tag = 99,
                                 .offset = 4096, .length = length};
    kvrt_xfer_wire_encode(&h, hdr);
}

Test(xfer_frame_auth, sealed_frames_open_in_every_mode_and_suite)
{
    uint64_t lengths[] = {0, 1, 15, 16, 17, 4096, 65537, KVRT_XFER_WIRE_FRAME_MAX};
    uint8_t *plain = malloc(KVRT_XFER_WIRE_FRAME_MAX), *wire = malloc(KVRT_XFER_WIRE_FRAME_MAX);
    for (uint32_t i = 0; i < KVRT_XFER_WIRE_FRAME_MAX; i++)
        plain[i] = (uint8_t)(i * 31 + 7);
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        bool aead = kvrt_xfer_frame_mode(words[w]) == KVRT_XFER_PROTECT_AEAD;
        pair_t p = pair_up(words[w], 1);
        for (size_t l = 0; l < sizeof(lengths) / sizeof(lengths[0]); l++) {
            uint64_t n = lengths[l];
            uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], tag[KVRT_XFER_FRAME_TAG_BYTES];
            header(hdr, n);
            memcpy(wire, plain, n);
            kvrt_xfer_frame_seal(&p.tx, words[w], hdr, wire, wire, n, tag);
            if (aead && n >= 16)
                cr_assert(memcmp(wire, plain, n) != 0, "AEAD payloads go encrypted");
            if (!aead)
                cr_assert(memcmp(wire, plain, n) == 0, "MAC leaves the payload alone");
            cr_assert(kvrt_xfer_frame_open(&p.rx, words[w], hdr, wire, n, tag),
                      "word %#x length %lu", words[w], (unsigned long)n);
            cr_assert(memcmp(wire, plain, n) == 0);
        }
        cr_assert_eq(p.tx.seq, p.rx.seq);
        pair_down(&p);
    }
    free(plain);
    free(wire);
}

Test(xfer_frame_auth, any_change_replay_or_mismatch_fails)
{
    enum { N = 1000 };
    uint8_t plain[N], wire[N], hdr[KVRT_XFER_WIRE_HEADER_BYTES], tag[KVRT_XFER_FRAME_TAG_BYTES];
    for (int i = 0; i < N; i++)
        plain[i] = (uint8_t)i;
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++) {
        pair_t p = pair_up(words[w], 2);
        header(hdr, N);
        /* Altered header, payload or tag: refused, and the receiver's
         * sequence stays where it was. */
        for (int what = 0; what < 3; what++) {
            memcpy(wire, plain, N);
            kvrt_xfer_frame_seal(&p.tx, words[w], hdr, wire, wire, N, tag);
            uint8_t h2[sizeof(hdr)], t2[sizeof(tag)];
            memcpy(h2, hdr, sizeof(hdr));
            memcpy(t2, tag, sizeof(tag));
            if (what == 0)
                h2[24] ^= 1; /* the offset */
            else if (what == 1)
                wire[N / 2] ^= 0x80;
            else
                t2[0] ^= 1;
            uint64_t seq = p.rx.seq;
            cr_assert(!(kvrt_xfer_frame_open(&p.rx, words[w], h2, wire, N, t2)),
                          "word %#x change %d", words[w], what);
            cr_assert_eq(p.rx.seq, seq);
            p.rx.seq++; /* the connection would close; the test moves on */
        }
        /* Replay: the same frame twice; and a skipped frame. */
        memcpy(wire, plain, N);
        kvrt_xfer_frame_seal(&p.tx, words[w], hdr, wire, wire, N, tag);
        uint8_t copy[N];
        memcpy(copy, wire, N);
        cr_assert(kvrt_xfer_frame_open(&p.rx, words[w], hdr, wire, N, tag));
        cr_assert(!(kvrt_xfer_frame_open(&p.rx, words[w], hdr, copy, N, tag)), "replayed");
        p.tx.seq++;
        memcpy(wire, plain, N);
        kvrt_xfer_frame_seal(&p.tx, words[w], hdr, wire, wire, N, tag);
        cr_assert(!(kvrt_xfer_frame_open(&p.rx, words[w], hdr, wire, N, tag)), "skipped one");
        pair_down(&p);

        /* Another key, another suite or mode: refused. */
        pair_t a = pair_up(words[w], 3), b = pair_up(words[w], 4);
        memcpy(wire, plain, N);
        kvrt_xfer_frame_seal(&a.tx, words[w], hdr, wire, wire, N, tag);
        cr_assert(!(kvrt_xfer_frame_open(&b.rx, words[w], hdr, wire, N, tag)), "other key");
        pair_down(&a);
        pair_down(&b);
        for (size_t o = 0; o < sizeof(words) / sizeof(words[0]); o++) {
            if (o == w)
                continue;
            a = pair_up(words[w], 5);
            b = pair_up(words[o], 5);
            memcpy(wire, plain, N);
            kvrt_xfer_frame_seal(&a.tx, words[w], hdr, wire, wire, N, tag);
            cr_assert(!(kvrt_xfer_frame_open(&b.rx, words[o], hdr, wire, N, tag)),
                          "sealed %#x, opened %#x", words[w], words[o]);
            pair_down(&a);
            pair_down(&b);
        }
    }
}

/* OpenSSL's AES-256-GCM in one call: nonce = le64(seq) || 0. */
static void reference_gcm(const uint8_t key[32], uint64_t seq, const uint8_t *aad,
                          size_t aad_bytes, const uint8_t *in, uint8_t *out, size_t n,
                          uint8_t tag[16])
{
    uint8_t nonce[12] = {0};
    for (int i = 0; i < 8; i++)
        nonce[i] = (uint8_t)(seq >> (8 * i));
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int done = 0;
    cr_assert_eq(EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, key, nonce), 1);
    cr_assert_eq(EVP_EncryptUpdate(c, NULL, &done, aad, (int)aad_bytes), 1);
    if (n)
        cr_assert_eq(EVP_EncryptUpdate(c, out, &done, in, (int)n), 1);
    cr_assert_eq(EVP_EncryptFinal_ex(c, out, &done), 1);
    cr_assert_eq(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag), 1);
    EVP_CIPHER_CTX_free(c);
}

Test(xfer_frame_auth, the_aes_suite_is_standard_gcm_and_gmac)
{
    enum { N = 3000 };
    uint8_t key[32], plain[N], wire[N], expect[N], hdr[KVRT_XFER_WIRE_HEADER_BYTES];
    uint8_t tag[16], want[16], aad[KVRT_XFER_WIRE_HEADER_BYTES + N];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)(200 - i);
    for (int i = 0; i < N; i++)
        plain[i] = (uint8_t)(i ^ 0x3c);
    header(hdr, N);
    kvrt_xfer_frame_key_t k;
    cr_assert(kvrt_xfer_frame_key_init(&k, WORD(KVRT_XFER_PROTECT_AEAD, KVRT_XFER_SUITE_AES),
                                       key));
    k.seq = 41;
    memcpy(wire, plain, N);
    kvrt_xfer_frame_seal(&k, WORD(KVRT_XFER_PROTECT_AEAD, KVRT_XFER_SUITE_AES), hdr, wire,
                         wire, N, tag);
    reference_gcm(key, 41, hdr, sizeof(hdr), plain, expect, N, want);
    cr_assert(memcmp(wire, expect, N) == 0 && memcmp(tag, want, 16) == 0, "AES-256-GCM");
    kvrt_xfer_frame_key_clear(&k);

    cr_assert(kvrt_xfer_frame_key_init(&k, WORD(KVRT_XFER_PROTECT_MAC, KVRT_XFER_SUITE_AES),
                                       key));
    k.seq = 7;
    kvrt_xfer_frame_seal(&k, WORD(KVRT_XFER_PROTECT_MAC, KVRT_XFER_SUITE_AES), hdr, plain, NULL,
                         N, tag);
    cr_assert_eq(k.seq, 8);
    memcpy(aad, hdr, sizeof(hdr));
    memcpy(aad + sizeof(hdr), plain, N);
    reference_gcm(key, 7, aad, sizeof(aad), NULL, NULL, 0, want);
    cr_assert(memcmp(tag, want, 16) == 0, "GMAC over header || payload");
    kvrt_xfer_frame_key_clear(&k);
}

Test(xfer_frame_auth, protection_words_known_and_offered)
{
    for (size_t w = 0; w < sizeof(words) / sizeof(words[0]); w++)
        cr_assert(kvrt_xfer_frame_protection_known(words[w]));
    cr_assert(!(kvrt_xfer_frame_protection_known(WORD(2, 0))));
    cr_assert(!(kvrt_xfer_frame_protection_known(WORD(0, KVRT_XFER_SUITE_COUNT))));
    cr_assert(!(kvrt_xfer_frame_protection_known(0xffffffffu)));
    setenv("KVRT_XFER_FRAME_SUITE", "chacha", 1);
    cr_assert_eq(kvrt_xfer_frame_suite_offer(), KVRT_XFER_SUITE_CHACHA);
    setenv("KVRT_XFER_FRAME_SUITE", "aes", 1);
    cr_assert_eq(kvrt_xfer_frame_suite_offer(), KVRT_XFER_SUITE_AES);
    unsetenv("KVRT_XFER_FRAME_SUITE");
}

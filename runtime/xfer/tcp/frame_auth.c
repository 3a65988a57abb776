/*
 * frame_auth.c - sealing and opening TCP data frames (see frame_auth.h).
 *
 * Suite AES uses OpenSSL's EVP AES-256-GCM, which runs on AES-NI and
 * carry-less multiplication (VAES and AVX-512 where present): GMAC hashes
 * about 4x faster than libsodium 1.0.18's Poly1305 here, and AES-256-GCM
 * seals about 3x faster than its ChaCha20-Poly1305 (docs/transfer.md,
 * Security). libsodium's own AES-256-GCM is slower than OpenSSL's and
 * cannot hash associated data alone at speed, so OpenSSL it is. Each key
 * is expanded once, in its cipher context; a frame only sets the nonce.
 */
#include "frame_auth.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "core/endian.h"
#include "kvrt/xfer.h"
#include "wire.h"

#define NONCE_BYTES crypto_aead_chacha20poly1305_IETF_NPUBBYTES /* 12, as GCM's */

static void frame_nonce(uint64_t seq, uint8_t nonce[NONCE_BYTES])
{
    kvrt_store_le64(nonce, seq);
    kvrt_store_le32(nonce + 8, 0);
}

bool kvrt_xfer_frame_protection_known(uint32_t protection)
{
    uint32_t mode = kvrt_xfer_frame_mode(protection);
    return (mode == KVRT_XFER_PROTECT_MAC || mode == KVRT_XFER_PROTECT_AEAD) &&
           kvrt_xfer_frame_suite(protection) < KVRT_XFER_SUITE_COUNT;
}

kvrt_xfer_frame_suite_t kvrt_xfer_frame_suite_offer(void)
{
    const char *forced = getenv("KVRT_XFER_FRAME_SUITE");
    if (forced && strcmp(forced, "chacha") == 0)
        return KVRT_XFER_SUITE_CHACHA;
    if (forced && strcmp(forced, "aes") == 0)
        return KVRT_XFER_SUITE_AES;
    if (sodium_init() < 0) /* it detects the CPU's features */
        return KVRT_XFER_SUITE_CHACHA;
    /* Without AES-NI OpenSSL's AES is several times slower than ChaCha20
     * (and table-based on the oldest CPUs): the portable suite then. */
    return sodium_runtime_has_aesni() && sodium_runtime_has_pclmul() ? KVRT_XFER_SUITE_AES
                                                                      : KVRT_XFER_SUITE_CHACHA;
}

bool kvrt_xfer_frame_crypto_init(void)
{
    return OPENSSL_init_crypto(OPENSSL_INIT_LOAD_CONFIG, NULL) == 1;
}

bool kvrt_xfer_frame_key_init(kvrt_xfer_frame_key_t *k, uint32_t protection,
                              const uint8_t key[KVRT_XFER_FRAME_KEY_BYTES])
{
    memset(k, 0, sizeof(*k));
    /* libsodium picks its fast code (SSE, AVX2) only once initialized. */
    if (sodium_init() < 0)
        return false;
    memcpy(k->key, key, sizeof(k->key));
    if (kvrt_xfer_frame_suite(protection) != KVRT_XFER_SUITE_AES)
        return true;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (!ctx || EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->key, NULL, 1) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        sodium_memzero(k, sizeof(*k));
        return false;
    }
    k->aes = ctx;
    return true;
}

void kvrt_xfer_frame_key_clear(kvrt_xfer_frame_key_t *k)
{
    EVP_CIPHER_CTX_free(k->aes); /* wipes the key schedule */
    sodium_memzero(k, sizeof(*k));
}

/* ---- suite CHACHA ------------------------------------------------------ */

/* Poly1305(header || payload) under the frame's one-time key. */
static void poly1305_mac(const uint8_t *key, const uint8_t *nonce, const uint8_t *hdr,
                         const uint8_t *payload, uint64_t length,
                         uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES])
{
    uint8_t otk[crypto_onetimeauth_KEYBYTES];
    crypto_stream_chacha20_ietf(otk, sizeof(otk), nonce, key);
    crypto_onetimeauth_state s;
    crypto_onetimeauth_init(&s, otk);
    crypto_onetimeauth_update(&s, hdr, KVRT_XFER_WIRE_HEADER_BYTES);
    if (length)
        crypto_onetimeauth_update(&s, payload, length);
    crypto_onetimeauth_final(&s, tag);
    sodium_memzero(otk, sizeof(otk));
}

static void chacha_seal(kvrt_xfer_frame_key_t *k, bool aead, const uint8_t *nonce,
                        const uint8_t *hdr, const uint8_t *payload, uint8_t *cipher_out,
                        uint64_t length, uint8_t *tag)
{
    uint8_t none = 0; /* libsodium wants buffers even for empty payloads */
    if (!length) {
        payload = &none;
        cipher_out = &none;
    }
    if (aead)
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(
            cipher_out, tag, NULL, payload, length, hdr, KVRT_XFER_WIRE_HEADER_BYTES, NULL,
            nonce, k->key);
    else
        poly1305_mac(k->key, nonce, hdr, payload, length, tag);
}

static bool chacha_open(kvrt_xfer_frame_key_t *k, bool aead, const uint8_t *nonce,
                        const uint8_t *hdr, uint8_t *payload, uint64_t length,
                        const uint8_t *tag)
{
    uint8_t none = 0;
    if (!length)
        payload = &none;
    if (aead)
        return crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                   payload, NULL, payload, length, tag, hdr, KVRT_XFER_WIRE_HEADER_BYTES,
                   nonce, k->key) == 0;
    uint8_t expect[KVRT_XFER_FRAME_TAG_BYTES];
    poly1305_mac(k->key, nonce, hdr, payload, length, expect);
    return crypto_verify_16(expect, tag) == 0;
}

/* ---- suite AES --------------------------------------------------------- */

/* EVP takes int lengths: longer runs go in pieces. out NULL: associated data. */
static bool gcm_update(EVP_CIPHER_CTX *ctx, uint8_t *out, const uint8_t *in, uint64_t length)
{
    while (length) {
        int n = length > (INT_MAX / 2) ? INT_MAX / 2 : (int)length, done = 0;
        if (EVP_CipherUpdate(ctx, out, &done, in, n) != 1)
            return false;
        in += n;
        if (out)
            out += n;
        length -= (uint64_t)n;
    }
    return true;
}

/*
 * One GCM pass: MAC hashes header || payload as associated data (GMAC);
 * AEAD hashes the header and en/decrypts the payload. Encrypting, tag gets
 * the tag; decrypting, tag is checked. False on a bad tag (or an OpenSSL
 * failure, which only a broken library gives: then no frame is trusted).
 */
static bool gcm_pass(kvrt_xfer_frame_key_t *k, bool aead, int enc, const uint8_t *nonce,
                     const uint8_t *hdr, const uint8_t *in, uint8_t *out, uint64_t length,
                     uint8_t *tag)
{
    EVP_CIPHER_CTX *ctx = k->aes;
    int done = 0;
    uint8_t end[16];
    if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, enc) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &done, hdr, KVRT_XFER_WIRE_HEADER_BYTES) != 1 ||
        !gcm_update(ctx, aead ? out : NULL, in, length))
        return false;
    if (enc)
        return EVP_CipherFinal_ex(ctx, end, &done) == 1 &&
               EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, KVRT_XFER_FRAME_TAG_BYTES, tag) == 1;
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, KVRT_XFER_FRAME_TAG_BYTES, tag) == 1 &&
           EVP_CipherFinal_ex(ctx, end, &done) == 1;
}

/* ---- frames ------------------------------------------------------------ */

void kvrt_xfer_frame_seal(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, const uint8_t *payload,
                          uint8_t *cipher_out, uint64_t length,
                          uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES])
{
    uint8_t nonce[NONCE_BYTES];
    frame_nonce(k->seq++, nonce);
    bool aead = kvrt_xfer_frame_mode(protection) == KVRT_XFER_PROTECT_AEAD;
    if (kvrt_xfer_frame_suite(protection) != KVRT_XFER_SUITE_AES) {
        chacha_seal(k, aead, nonce, hdr, payload, cipher_out, length, tag);
        return;
    }
    /* OpenSSL fails only when broken: a tag of zeros then fails at the
     * peer, which closes the connection; nothing goes out unauthenticated. */
    if (!gcm_pass(k, aead, 1, nonce, hdr, payload, cipher_out, length, tag))
        memset(tag, 0, KVRT_XFER_FRAME_TAG_BYTES);
}

bool kvrt_xfer_frame_open(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, uint8_t *payload, uint64_t length,
                          const uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES])
{
    uint8_t nonce[NONCE_BYTES];
    frame_nonce(k->seq, nonce);
    bool aead = kvrt_xfer_frame_mode(protection) == KVRT_XFER_PROTECT_AEAD, ok;
    if (kvrt_xfer_frame_suite(protection) != KVRT_XFER_SUITE_AES) {
        ok = chacha_open(k, aead, nonce, hdr, payload, length, tag);
    } else {
        uint8_t expect[KVRT_XFER_FRAME_TAG_BYTES];
        memcpy(expect, tag, sizeof(expect)); /* SET_TAG wants a writable buffer */
        ok = gcm_pass(k, aead, 0, nonce, hdr, payload, payload, length, expect);
    }
    if (ok)
        k->seq++;
    return ok;
}

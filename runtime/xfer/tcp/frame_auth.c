/*
 * frame_auth.c - sealing and opening TCP data frames (see frame_auth.h).
 */
#include "frame_auth.h"

#include <sodium.h>

#include "core/endian.h"
#include "kvrt/xfer.h"
#include "wire.h"

static void frame_nonce(uint64_t seq, uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES])
{
    kvrt_store_le64(nonce, seq);
    kvrt_store_le32(nonce + 8, 0);
}

/* Poly1305(header || payload) under the frame's one-time key. */
static void frame_mac(const uint8_t *key, const uint8_t *nonce, const uint8_t *hdr,
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

void kvrt_xfer_frame_seal(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, const uint8_t *payload,
                          uint8_t *cipher_out, uint64_t length,
                          uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES])
{
    uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];
    frame_nonce(k->seq++, nonce);
    uint8_t none = 0; /* libsodium wants buffers even for empty payloads */
    if (!length) {
        payload = &none;
        cipher_out = &none;
    }
    if (protection == KVRT_XFER_PROTECT_AEAD)
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(
            cipher_out, tag, NULL, payload, length, hdr, KVRT_XFER_WIRE_HEADER_BYTES, NULL,
            nonce, k->key);
    else
        frame_mac(k->key, nonce, hdr, payload, length, tag);
}

bool kvrt_xfer_frame_open(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, uint8_t *payload, uint64_t length,
                          const uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES])
{
    uint8_t nonce[crypto_aead_chacha20poly1305_IETF_NPUBBYTES];
    frame_nonce(k->seq, nonce);
    uint8_t none = 0;
    if (!length)
        payload = &none;
    bool ok;
    if (protection == KVRT_XFER_PROTECT_AEAD) {
        ok = crypto_aead_chacha20poly1305_ietf_decrypt_detached(
                 payload, NULL, payload, length, tag, hdr, KVRT_XFER_WIRE_HEADER_BYTES, nonce,
                 k->key) == 0;
    } else {
        uint8_t expect[KVRT_XFER_FRAME_TAG_BYTES];
        frame_mac(k->key, nonce, hdr, payload, length, expect);
        ok = crypto_verify_16(expect, tag) == 0;
    }
    if (ok)
        k->seq++;
    return ok;
}

/*
 * frame_auth.h - per-frame authentication of the TCP data path. Internal.
 *
 * The handshake (sidechannel.h) gives each socket two 32-byte keys, one
 * per direction. Every frame then carries a 16-byte tag after its payload:
 *
 *   MAC  (default): Poly1305 over header || payload, with the one-time key
 *        taken from ChaCha20(key, nonce) as in RFC 8439; payload in clear.
 *   AEAD          : ChaCha20-Poly1305 (IETF), header as associated data,
 *        payload encrypted.
 *
 * The nonce is the frame's sequence number on that socket and direction,
 * so a frame cannot be replayed, reordered, dropped unnoticed (the next
 * frame's tag fails) or moved to another socket or direction (other key).
 * The receiver stages a whole frame and checks its tag before it acts on
 * the header or copies a byte of the payload anywhere: a forged or altered
 * frame never reaches registered memory. A failed tag closes the
 * connection (the sequence is lost with it).
 */
#ifndef KVRT_XFER_FRAME_AUTH_H
#define KVRT_XFER_FRAME_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#define KVRT_XFER_FRAME_TAG_BYTES 16
#define KVRT_XFER_FRAME_KEY_BYTES 32

typedef struct kvrt_xfer_frame_key {
    uint8_t key[KVRT_XFER_FRAME_KEY_BYTES];
    uint64_t seq;          /* the next frame's nonce */
} kvrt_xfer_frame_key_t;

/*
 * Seals the next frame: writes its tag. With AEAD (protection
 * KVRT_XFER_PROTECT_AEAD) also encrypts `length` bytes of payload into
 * cipher_out (may equal payload); with MAC cipher_out is unused.
 */
void kvrt_xfer_frame_seal(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, const uint8_t *payload,
                          uint8_t *cipher_out, uint64_t length,
                          uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES]);

/*
 * Checks the next incoming frame's tag; with AEAD decrypts the payload in
 * place (only when the tag is good). False when the frame is not authentic.
 */
bool kvrt_xfer_frame_open(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, uint8_t *payload, uint64_t length,
                          const uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES]);

#endif /* KVRT_XFER_FRAME_AUTH_H */

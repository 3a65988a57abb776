/*
 * frame_auth.h - per-frame authentication of the TCP data path. Internal.
 *
 * The handshake (sidechannel.h) gives each socket two 32-byte keys, one
 * per direction, and the protection word both sides agreed on: the mode
 * the agent asked for (kvrt_xfer_protection_t, low byte) and the suite of
 * primitives the dialing side chose (bits 8-15). Every frame then carries
 * a 16-byte tag after its payload:
 *
 *   suite CHACHA (portable; what kvrt spoke before suites existed):
 *     MAC : Poly1305 over header || payload, with the one-time key taken
 *           from ChaCha20(key, nonce) as in RFC 8439; payload in clear.
 *     AEAD: ChaCha20-Poly1305 (IETF), header as associated data.
 *   suite AES (chosen where the CPU has AES-NI and PCLMULQDQ; OpenSSL):
 *     MAC : GMAC, i.e. AES-256-GCM with header || payload as associated
 *           data and nothing encrypted; payload in clear.
 *     AEAD: AES-256-GCM, header as associated data.
 *
 * The nonce is the frame's sequence number on that socket and direction,
 * so a frame cannot be replayed, reordered, dropped unnoticed (the next
 * frame's tag fails) or moved to another socket or direction (other key).
 * The receiver stages a whole frame and checks its tag before it acts on
 * the header or copies a byte of the payload anywhere: a forged or altered
 * frame never reaches registered memory. A failed tag closes the
 * connection (the sequence is lost with it).
 *
 * A key belongs to one thread at a time (its socket's sender or receiver).
 */
#ifndef KVRT_XFER_FRAME_AUTH_H
#define KVRT_XFER_FRAME_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#define KVRT_XFER_FRAME_TAG_BYTES 16
#define KVRT_XFER_FRAME_KEY_BYTES 32

/* The suite of primitives, in bits 8-15 of the protection word. */
#define KVRT_XFER_FRAME_SUITE_SHIFT 8
typedef enum kvrt_xfer_frame_suite {
    KVRT_XFER_SUITE_CHACHA = 0, /* Poly1305 / ChaCha20-Poly1305 (libsodium) */
    KVRT_XFER_SUITE_AES = 1,    /* GMAC / AES-256-GCM (OpenSSL) */
    KVRT_XFER_SUITE_COUNT = 2
} kvrt_xfer_frame_suite_t;

static inline uint32_t kvrt_xfer_frame_mode(uint32_t protection)
{
    return protection & 0xffu;
}

static inline uint32_t kvrt_xfer_frame_suite(uint32_t protection)
{
    return protection >> KVRT_XFER_FRAME_SUITE_SHIFT;
}

/* Whether a peer's protection word names a mode and suite this build
 * speaks (the listening side checks what the dialer chose). */
bool kvrt_xfer_frame_protection_known(uint32_t protection);

/*
 * The suite this process offers when it dials: AES where the CPU has
 * AES-NI and PCLMULQDQ, CHACHA otherwise. The environment variable
 * KVRT_XFER_FRAME_SUITE ("aes" or "chacha") overrides it, read once.
 */
kvrt_xfer_frame_suite_t kvrt_xfer_frame_suite_offer(void);

/*
 * Initializes OpenSSL's libcrypto (with its configuration file, as its
 * own first use would) on the calling thread; false when it fails. The
 * agent calls it when created, before its threads start. Left to itself,
 * libcrypto initializes at its first use, on whichever agent thread keys
 * the first AES socket, and registers its exit handler (OPENSSL_cleanup)
 * only then: after any handler the application registered once the agent
 * existed, so at exit it would run first. It frees the per-thread state
 * (error queue) of the thread that calls exit only, and forgets every
 * other thread's; agent threads joined after it, by a handler that
 * destroys the agent, would leave theirs behind, and the agent would free
 * its cipher contexts into a stopped library. Initialized here, the
 * handler runs after every handler registered once the agent exists.
 */
bool kvrt_xfer_frame_crypto_init(void);

typedef struct kvrt_xfer_frame_key {
    uint8_t key[KVRT_XFER_FRAME_KEY_BYTES];
    uint64_t seq;          /* the next frame's nonce */
    void *aes;             /* suite AES: the keyed cipher (EVP_CIPHER_CTX) */
} kvrt_xfer_frame_key_t;

/*
 * Makes k ready for `protection` (the handshake's word): copies key, resets
 * the sequence and, for suite AES, expands the key once. False without
 * memory (k then holds nothing to clear). Initializes libsodium (once per
 * process), without which it runs its slow portable code.
 */
bool kvrt_xfer_frame_key_init(kvrt_xfer_frame_key_t *k, uint32_t protection,
                              const uint8_t key[KVRT_XFER_FRAME_KEY_BYTES]);

/* Wipes k and frees what kvrt_xfer_frame_key_init gave it. */
void kvrt_xfer_frame_key_clear(kvrt_xfer_frame_key_t *k);

/*
 * Seals the next frame: writes its tag. With mode KVRT_XFER_PROTECT_AEAD
 * also encrypts `length` bytes of payload into cipher_out (may equal
 * payload); with MAC cipher_out is unused.
 */
void kvrt_xfer_frame_seal(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, const uint8_t *payload,
                          uint8_t *cipher_out, uint64_t length,
                          uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES]);

/*
 * Checks the next incoming frame's tag; with AEAD decrypts the payload in
 * place (the plaintext counts only when the tag is good: on false the
 * payload bytes are garbage). False when the frame is not authentic.
 */
bool kvrt_xfer_frame_open(kvrt_xfer_frame_key_t *k, uint32_t protection,
                          const uint8_t *hdr, uint8_t *payload, uint64_t length,
                          const uint8_t tag[KVRT_XFER_FRAME_TAG_BYTES]);

#endif /* KVRT_XFER_FRAME_AUTH_H */

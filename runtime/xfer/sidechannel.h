/*
 * sidechannel.h - the TCP side channel every connection starts on:
 * addresses, sockets with deadlines, small framed messages, the mutual
 * cluster-key authentication, and the queue-pair information a verbs
 * backend exchanges. Internal: nothing here is ABI.
 *
 * All functions block at most until a deadline on the kvrt_now_ns() clock,
 * take no locks and are safe from any thread (each socket is used by one
 * thread at a time). The listening side of the handshake does no I/O at
 * all: it is two steps (kvrt_xfer_sc_server_hello / _proof) an event loop
 * feeds with received frames (accept.c), so that no peer can make the
 * listener wait.
 *
 * Frames: [u32 magic "KVSC"][u16 type][u16 zero][u32 length][payload],
 * little-endian, payload <= KVRT_XFER_SC_PAYLOAD_MAX. Anything else is a
 * protocol error and the socket must be closed.
 *
 * Authentication (kvrt_xfer_sc_auth_client / _server), with K the 32-byte
 * BLAKE2b hash of the cluster key, HMAC = HMAC-SHA-256 and H = BLAKE2b-256
 * (libsodium):
 *   client -> HELLO  {version, backend, conn index, protection, session[16],
 *                     nonce_c, name}
 *   server -> CHALLENGE {nonce_s, name, instance,
 *                        HMAC(K, "kvrt-xfer-srv" H(HELLO) nonce_s name instance)}
 *   client    checks the server's MAC (a wrong key fails here: KVRT_ERR_AUTH)
 *   client -> PROOF  {HMAC(K, "kvrt-xfer-cli" H(HELLO CHALLENGE))}
 *   server    checks it, answers RESULT {status}: KVRT_OK, KVRT_ERR_AUTH, or
 *             KVRT_ERR_PROTOCOL (different backend, version or protection
 *             mode; the frame suite in protection's bits 8-15 is the
 *             client's choice, taken when known: tcp/frame_auth.h)
 * Both nonces are fresh random 32-byte values, so a recorded exchange cannot
 * be replayed; the two MACs carry different labels, so one side's answer
 * can never be reflected as the other's; and they cover every byte of
 * HELLO and CHALLENGE, so nothing in them (names, protection) can be
 * changed on the path.
 *
 * Instances: the listener states its agent's instance, 64 random bits
 * drawn when the agent is created. A region descriptor carries the
 * instance of the agent that registered it, and a dialer posts nothing
 * with a remote of another instance than the one at the far end of its
 * connection: a peer restarted on the same address (a new process, whose
 * region ids start over) is never written through a descriptor of its
 * predecessor. (Only dialed peers post, so the dialer need not state its
 * own.)
 *
 * Session keys: BLAKE2b-512 keyed with K over "kvrt-xfer-frames" and
 * H(HELLO CHALLENGE); the first 32 bytes key the frames client -> server,
 * the last 32 server -> client (tcp/frame_auth.h; the verbs backend's
 * SETUP, QP_INFO and READY frames below). Every socket has its own.
  */
#ifndef KVRT_XFER_SIDECHANNEL_H
#define KVRT_XFER_SIDECHANNEL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/core.h"
#include "kvrt/xfer.h"

#define KVRT_XFER_SC_VERSION 3
#define KVRT_XFER_SC_HEADER_BYTES 12
#define KVRT_XFER_SC_PAYLOAD_MAX 4096
#define KVRT_XFER_SESSION_BYTES 16
#define KVRT_XFER_KEY_BYTES 32
/* Handshake payloads (every one has exactly this size). */
#define KVRT_XFER_SC_HELLO_BYTES (16 + KVRT_XFER_SESSION_BYTES + 32 + KVRT_XFER_NAME_MAX)
#define KVRT_XFER_SC_CHALLENGE_BYTES (32 + KVRT_XFER_NAME_MAX + 8 + 32)
#define KVRT_XFER_SC_PROOF_BYTES 32
#define KVRT_XFER_SC_RESULT_BYTES 4

/* Side-channel frame types. Values >= 64 are free for backends (the verbs
 * backend's QP exchange uses KVRT_XFER_SC_QP_INFO). */
enum kvrt_xfer_sc_type {
    KVRT_XFER_SC_HELLO = 1,
    KVRT_XFER_SC_CHALLENGE = 2,
    KVRT_XFER_SC_PROOF = 3,
    KVRT_XFER_SC_RESULT = 4,
    KVRT_XFER_SC_QP_INFO = 16
};

/* A parsed "host:port" (IPv4, or IPv6 in brackets). */
typedef struct kvrt_xfer_addr {
    struct sockaddr_storage ss;
    socklen_t len;
} kvrt_xfer_addr_t;

/* Parses "host:port" or "[v6]:port" (numeric hosts only, no DNS).
 * Errors: KVRT_ERR_INVALID_ARG. */
kvrt_status_t kvrt_xfer_addr_parse(const char *text, kvrt_xfer_addr_t *addr_out);
/* Formats an address as "host:port" (IPv6 bracketed) into buf. */
void kvrt_xfer_addr_format(const kvrt_xfer_addr_t *addr, char *buf, size_t bytes);

/* A blocking, close-on-exec, TCP_NODELAY socket connected to addr before
 * deadline_ns. Errors: KVRT_ERR_CONNECT. */
kvrt_status_t kvrt_xfer_sc_dial(const kvrt_xfer_addr_t *addr, uint64_t deadline_ns,
                                int *fd_out);
/* A listening socket bound to addr (port 0 picks one; *bound_out gets the
 * real address). Errors: KVRT_ERR_IO. */
kvrt_status_t kvrt_xfer_sc_listen(const kvrt_xfer_addr_t *addr,
                                  kvrt_xfer_addr_t *bound_out, int *fd_out);

/* Sends exactly `bytes` / receives exactly `bytes` before deadline_ns.
 * Errors: KVRT_ERR_TIMEOUT, KVRT_ERR_PEER_FAILED (EOF or socket error). */
kvrt_status_t kvrt_xfer_sc_write_all(int fd, const void *buf, size_t bytes,
                                     uint64_t deadline_ns);
kvrt_status_t kvrt_xfer_sc_read_all(int fd, void *buf, size_t bytes,
                                    uint64_t deadline_ns);

/* A frame header for `bytes` payload bytes of `type`. */
void kvrt_xfer_sc_header_encode(uint8_t hdr[KVRT_XFER_SC_HEADER_BYTES], uint16_t type,
                                uint32_t bytes);
/* Checks a received frame header: magic, type `type`, payload at most
 * `capacity` (and KVRT_XFER_SC_PAYLOAD_MAX); *bytes_out gets its length.
 * Errors: KVRT_ERR_PROTOCOL. */
kvrt_status_t kvrt_xfer_sc_header_check(const uint8_t hdr[KVRT_XFER_SC_HEADER_BYTES],
                                        uint16_t type, uint32_t capacity, uint32_t *bytes_out);

/* One framed message each way. recv checks the magic and that the type is
 * `type`; *bytes_out gets the payload length (<= capacity).
 * Errors: those of write_all/read_all, KVRT_ERR_PROTOCOL (bad frame, other
 * type, longer than capacity). */
kvrt_status_t kvrt_xfer_sc_send(int fd, uint16_t type, const void *payload,
                                uint32_t bytes, uint64_t deadline_ns);
kvrt_status_t kvrt_xfer_sc_recv(int fd, uint16_t type, void *payload,
                                uint32_t capacity, uint32_t *bytes_out,
                                uint64_t deadline_ns);

/* The cluster key as both ends use it. */
typedef struct kvrt_xfer_key {
    uint8_t k[KVRT_XFER_KEY_BYTES];
} kvrt_xfer_key_t;

/* Derives K from the user's key bytes. Errors: INVALID_ARG (too short). */
kvrt_status_t kvrt_xfer_key_derive(const uint8_t *key, uint32_t bytes,
                                   kvrt_xfer_key_t *key_out);

/* What the dialing side states in its HELLO. */
typedef struct kvrt_xfer_hello {
    uint32_t version;                         /* KVRT_XFER_SC_VERSION */
    uint32_t backend;                         /* kvrt_xfer_backend_kind_t */
    uint32_t conn_index;                      /* 0 for a session's first socket */
    uint32_t protection;                      /* kvrt_xfer_protection_t */
    uint8_t session[KVRT_XFER_SESSION_BYTES]; /* names the dialing peer */
    char name[KVRT_XFER_NAME_MAX];            /* dialing agent's name */
} kvrt_xfer_hello_t;

/* What a handshake gives one socket: its frame keys, one per direction. */
typedef struct kvrt_xfer_sc_keys {
    uint8_t tx[KVRT_XFER_KEY_BYTES];          /* frames this side sends */
    uint8_t rx[KVRT_XFER_KEY_BYTES];          /* frames it receives */
    uint32_t protection;                      /* kvrt_xfer_protection_t */
} kvrt_xfer_sc_keys_t;

/*
 * Dialing side of the handshake on a connected socket. *server_name_out
 * (KVRT_XFER_NAME_MAX bytes, may be NULL) gets the listener's name (as
 * every name from the wire: bytes outside printable ASCII become '?'),
 * *server_instance_out (may be NULL) its agent's instance and *keys_out
 * (may be NULL) the socket's frame keys.
 * Errors: KVRT_ERR_AUTH (the server proved a different key, or refused
 * ours), KVRT_ERR_BUSY (the listener holds as many peers as it takes), KVRT_ERR_PROTOCOL (not a kvrt agent, other backend or version),
 * KVRT_ERR_TIMEOUT, KVRT_ERR_PEER_FAILED.
 */
kvrt_status_t kvrt_xfer_sc_auth_client(int fd, const kvrt_xfer_key_t *key,
                                       const kvrt_xfer_hello_t *hello,
                                       char *server_name_out, uint64_t *server_instance_out,
                                       kvrt_xfer_sc_keys_t *keys_out, uint64_t deadline_ns);

/* Whether the listener takes an authenticated HELLO (KVRT_OK) or refuses it
 * with the status returned (sent to the dialer in RESULT). */
typedef kvrt_status_t (*kvrt_xfer_sc_admit_fn)(void *arg, const kvrt_xfer_hello_t *hello);

/*
 * Listening side, as two steps without I/O. The caller reads the HELLO
 * frame (at most KVRT_XFER_SC_HELLO_BYTES of payload) and passes its
 * payload to kvrt_xfer_sc_server_hello(), which parses it into s->parsed
 * (name sanitized) and writes the CHALLENGE payload, stating the
 * listener's name and `server_instance`, to s->challenge
 * (Errors: KVRT_ERR_PROTOCOL, a HELLO of another size). The caller sends
 * it, reads the PROOF frame (at most KVRT_XFER_SC_PROOF_BYTES) and passes
 * it to kvrt_xfer_sc_server_proof(), which returns the verdict to send in
 * RESULT: KVRT_OK, KVRT_ERR_AUTH (a wrong or short proof),
 * KVRT_ERR_PROTOCOL (another version, backend or protection than ours), or
 * what admit (may be NULL) answered for the authenticated HELLO. On
 * KVRT_OK *keys_out (may be NULL) gets the socket's frame keys.
 */
typedef struct kvrt_xfer_sc_server {
    uint8_t hello[KVRT_XFER_SC_HELLO_BYTES];
    uint8_t challenge[KVRT_XFER_SC_CHALLENGE_BYTES];
    kvrt_xfer_hello_t parsed;
} kvrt_xfer_sc_server_t;

kvrt_status_t kvrt_xfer_sc_server_hello(kvrt_xfer_sc_server_t *s, const kvrt_xfer_key_t *key,
                                        const char *server_name, uint64_t server_instance,
                                        const uint8_t *hello, uint32_t bytes);
kvrt_status_t kvrt_xfer_sc_server_proof(kvrt_xfer_sc_server_t *s, const kvrt_xfer_key_t *key,
                                        uint32_t backend, uint32_t protection,
                                        kvrt_xfer_sc_admit_fn admit, void *admit_arg,
                                        const uint8_t *proof, uint32_t bytes,
                                        kvrt_xfer_sc_keys_t *keys_out);

/*
 * What the two ends of a verbs RC queue pair tell each other. The path MTU
 * used is the smaller of the two (kvrt_xfer_sc_mtu_min). Encoded
 * little-endian, 32 bytes each, by kvrt_xfer_sc_exchange_qp_info().
 */
typedef struct kvrt_xfer_sc_qp_info {
    uint32_t qp_num;
    uint32_t psn;        /* 24 bits */
    uint8_t gid[16];
    uint16_t lid;
    uint8_t mtu;         /* enum ibv_mtu value (1 = 256 .. 5 = 4096) */
    uint8_t port;
    uint32_t reserved;   /* zero */
} kvrt_xfer_sc_qp_info_t;

#define KVRT_XFER_SC_QP_MAX 64

/*
 * Sends `count` local QP infos and receives the peer's (the dialing side
 * sends first, the listening side receives first, so `dialer` says which
 * this is). The peer must send the same count. Each side's frame ends with
 * a MAC under its direction key of this socket (`keys`, from the
 * handshake: keyed BLAKE2b-256 over "kvrt-xfer-qp-info", the count and the
 * entries), so QP numbers, PSNs and GIDs cannot be changed or replayed on
 * the path: only the two authenticated ends decide which queue pairs are
 * connected.
 * Errors: KVRT_ERR_INVALID_ARG (count 0 or > KVRT_XFER_SC_QP_MAX, NULL),
 * KVRT_ERR_AUTH (the peer's MAC does not check), KVRT_ERR_PROTOCOL (other
 * count, malformed), and the I/O errors above.
 */
kvrt_status_t kvrt_xfer_sc_exchange_qp_info(int fd, bool dialer, const kvrt_xfer_sc_keys_t *keys,
                                            const kvrt_xfer_sc_qp_info_t *local,
                                            kvrt_xfer_sc_qp_info_t *remote,
                                            uint32_t count, uint64_t deadline_ns);

/*
 * A MAC for a backend's own side-channel frames after the handshake (the
 * verbs backend's SETUP and READY): keyed BLAKE2b-256 under one direction
 * key of the socket (`keys->tx` to send, `keys->rx` to check) over a
 * label, which keeps each kind of frame apart from every other use of the
 * key, and the payload. Each label is used once per socket and direction,
 * so a frame can be neither replayed within the socket nor taken from
 * another socket or reflected. kvrt_xfer_sc_frame_mac writes the MAC;
 * kvrt_xfer_sc_frame_mac_ok checks one in constant time.
 */
#define KVRT_XFER_SC_MAC_BYTES 32
void kvrt_xfer_sc_frame_mac(const uint8_t key[KVRT_XFER_KEY_BYTES], const char *label,
                            const uint8_t *payload, uint32_t bytes,
                            uint8_t mac[KVRT_XFER_SC_MAC_BYTES]);
bool kvrt_xfer_sc_frame_mac_ok(const uint8_t key[KVRT_XFER_KEY_BYTES], const char *label,
                               const uint8_t *payload, uint32_t bytes,
                               const uint8_t mac[KVRT_XFER_SC_MAC_BYTES]);

/* The smaller of two ibv_mtu enum values (0 counts as unset: the other wins). */
static inline uint8_t kvrt_xfer_sc_mtu_min(uint8_t a, uint8_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

#endif /* KVRT_XFER_SIDECHANNEL_H */

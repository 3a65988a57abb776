/*
 * fuzz_xfer_session.c - libFuzzer target that plays a hostile peer against
 * a real listening agent on loopback, a whole session per input: silent
 * sockets beside it, the handshake (with the cluster key, so the input
 * reaches the authenticated state, or with fields and bytes of its
 * choosing before that), then a sequence of frames decoded from the input:
 * sealed frames of any type, region, offset and length; raw headers;
 * tampered frames (a bit flipped after sealing, as a relay would); garbage;
 * messages (notifications, KV checksum exchanges); floods; a frame cut
 * short. Replies are read as they come and must be well-formed and
 * authentic.
 *
 * After every input: the legitimate handshake worked despite the silent
 * sockets, the agent let go of the peer and of every pending handshake,
 * and registered memory the peer was not granted (a read-only region, a
 * region with no rights, guard bytes around all of them) is byte for byte
 * what it was. Any breach aborts, as does a sanitizer report.
 *
 * Input: byte 0 flags (bit 0: drive the handshake from the input; bits
 * 1-3: silent sockets held meanwhile), then the handshake part, then
 * operations (see run_ops). tests/fuzz/corpus/xfer_session holds seeds for
 * the attacks of docs/transfer.md's threat model; make_session_seeds.py
 * writes them.
 */
#include <errno.h>
#include <poll.h>
#include <sodium.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/endian.h"
#include "kvrt/kvrt.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/frame_auth.h"
#include "xfer/tcp/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define KEY "kvrt-fuzz-cluster-key-0123456789"
#define GUARD 4096
#define RW_BYTES 8192
#define RO_BYTES 4096
#define NONE_BYTES 4096
#define MAX_OPS 64
#define MAX_PAYLOAD (KVRT_XFER_WIRE_FRAME_MAX + 4096)
#define FRAME_MAX_BYTES (KVRT_XFER_WIRE_HEADER_BYTES + MAX_PAYLOAD + KVRT_XFER_FRAME_TAG_BYTES)
#define IO_NS 2000000000ull /* per blocking step; an agent that stalls longer is a finding */

static struct {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *agent;
    kvrt_xfer_addr_t addr;
    kvrt_xfer_key_t key;
    /* [guard][rw][guard][ro][guard][none][guard] */
    uint8_t *arena, *expect;
    size_t arena_bytes;
    uint32_t ids[4]; /* rw, ro, none, pool */
    kvrt_pool_t *pool;
    uint8_t *frame;  /* a frame being built */
    uint8_t *rx;     /* replies being parsed */
    uint64_t replies; /* authentic frames received from the agent */
} g;

static void die(const char *why)
{
    fprintf(stderr, "fuzz_xfer_session: %s\n", why);
    abort();
}

static uint64_t stat_of(const char *name)
{
    uint64_t v = 0;
    if (kvrt_ctl_get_u64(g.ctx, name, &v) != KVRT_OK)
        die("ctl node missing");
    return v;
}

static uint32_t region_id(kvrt_xfer_region_t *r)
{
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    if (kvrt_xfer_region_descriptor(r, desc, sizeof(desc), &len) != KVRT_OK)
        die("descriptor");
    return kvrt_load_le32(desc + 8);
}

static uint32_t register_at(size_t offset, size_t bytes, uint32_t access)
{
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .address = g.arena + offset, .length = bytes,
                                      .access = access};
    kvrt_xfer_region_t *r = NULL;
    if (kvrt_xfer_register(g.agent, &rp, &r) != KVRT_OK)
        die("register");
    return region_id(r);
}

static void teardown(void)
{
    /* KVRT_FUZZ_STATS=1: what the inputs made the agent do. */
    if (getenv("KVRT_FUZZ_STATS")) {
        static const char *const names[] = {"refused", "auth_failures", "bytes_written",
                                            "bytes_read", "handshakes_dropped"};
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            char node[64];
            snprintf(node, sizeof(node), "xfer.0.%s", names[i]);
            fprintf(stderr, "fuzz_xfer_session: %s = %llu\n", node,
                    (unsigned long long)stat_of(node));
        }
        size_t changed = 0;
        for (size_t i = GUARD; i < GUARD + RW_BYTES; i++)
            changed += g.arena[i] != g.expect[i];
        fprintf(stderr, "fuzz_xfer_session: replies = %llu, read-write bytes changed = %zu\n",
                (unsigned long long)g.replies, changed);
    }
    /* Destroying the agent frees every peer, request and registration;
     * LeakSanitizer checks at exit that nothing is left. */
    kvrt_xfer_agent_destroy(g.agent);
    kvrt_pool_destroy(g.pool);
    kvrt_ctx_destroy(g.ctx);
    free(g.arena);
    free(g.expect);
    free(g.frame);
    free(g.rx);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvrt_ctx_params_t cp = {.field_mask = KVRT_CTX_PARAM_LOG_LEVEL, .log_level = KVRT_LOG_ERROR};
    kvrt_xfer_agent_params_t ap = {.field_mask = KVRT_XFER_AGENT_PARAM_BACKEND |
                                                 KVRT_XFER_AGENT_PARAM_TIMEOUT,
                                   .cluster_key = (const uint8_t *)KEY,
                                   .cluster_key_bytes = 32, .backend = KVRT_XFER_BACKEND_TCP,
                                   .default_timeout_ms = 2000};
    char text[96];
    if (kvrt_ctx_create(&cp, &g.ctx) != KVRT_OK ||
        kvrt_xfer_agent_create(g.ctx, &ap, &g.agent) != KVRT_OK ||
        kvrt_xfer_agent_address(g.agent, text, sizeof(text)) != KVRT_OK ||
        kvrt_xfer_addr_parse(text, &g.addr) != KVRT_OK ||
        kvrt_xfer_key_derive((const uint8_t *)KEY, 32, &g.key) != KVRT_OK)
        die("set-up");
    g.arena_bytes = 4 * GUARD + RW_BYTES + RO_BYTES + NONE_BYTES;
    g.arena = malloc(g.arena_bytes);
    g.expect = malloc(g.arena_bytes);
    g.frame = malloc(FRAME_MAX_BYTES);
    g.rx = malloc(2 * FRAME_MAX_BYTES);
    if (!g.arena || !g.expect || !g.frame || !g.rx)
        die("no memory");
    for (size_t i = 0; i < g.arena_bytes; i++)
        g.arena[i] = (uint8_t)(i * 131 + 7);
    g.ids[0] = register_at(GUARD, RW_BYTES, KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE);
    g.ids[1] = register_at(2 * GUARD + RW_BYTES, RO_BYTES, KVRT_XFER_REMOTE_READ);
    g.ids[2] = register_at(3 * GUARD + RW_BYTES + RO_BYTES, NONE_BYTES, 0);
    kvrt_pool_params_t pp = {.layout = {.num_layers = 2, .num_kv_heads = 1, .head_dim = 64,
                                        .tokens_per_block = 16},
                             .num_blocks = 4};
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_POOL |
                                                    KVRT_XFER_REGISTER_PARAM_ACCESS,
                                      .access = KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE};
    kvrt_xfer_region_t *pr = NULL;
    if (kvrt_pool_create(g.ctx, &pp, &g.pool) != KVRT_OK)
        die("pool");
    rp.pool = g.pool;
    if (kvrt_xfer_register(g.agent, &rp, &pr) != KVRT_OK)
        die("register pool");
    g.ids[3] = region_id(pr);
    memcpy(g.expect, g.arena, g.arena_bytes);
    /* Registered after the agent exists, so it runs before libcrypto's own
     * exit handler, which the agent's create registered (xfer.h). */
    atexit(teardown);
    return 0;
}

/* ---- the input ------------------------------------------------------------ */

typedef struct input {
    const uint8_t *p;
    size_t left;
} input_t;

static uint8_t u8(input_t *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}
static uint16_t u16(input_t *in) { return (uint16_t)(u8(in) | u8(in) << 8); }
static uint32_t u32(input_t *in) { return (uint32_t)u16(in) | (uint32_t)u16(in) << 16; }
static uint64_t u64(input_t *in) { return (uint64_t)u32(in) | (uint64_t)u32(in) << 32; }

/* Copies up to n input bytes to dst and fills the rest with a marker. */
static void take(input_t *in, uint8_t *dst, size_t n)
{
    size_t k = n < in->left ? n : in->left;
    memcpy(dst, in->p, k);
    memset(dst + k, 0xA5, n - k);
    in->p += k;
    in->left -= k;
}

/* ---- the session ---------------------------------------------------------- */

typedef struct session {
    int fd;
    bool dead;               /* the agent closed it, or we gave up */
    bool authed;             /* frames from now on: replies are parsed */
    kvrt_xfer_frame_key_t tx, rx;
    size_t rx_have;
} session_t;

/* Parses and authenticates every whole frame the agent sent. */
static void rx_parse(session_t *s)
{
    size_t at = 0;
    while (s->rx_have - at >= KVRT_XFER_WIRE_HEADER_BYTES) {
        kvrt_xfer_wire_header_t h;
        if (kvrt_xfer_wire_parse(g.rx + at, KVRT_XFER_WIRE_HEADER_BYTES, &h) != KVRT_OK)
            die("the agent sent a malformed frame header");
        uint64_t payload = kvrt_xfer_wire_payload(&h);
        size_t whole = KVRT_XFER_WIRE_HEADER_BYTES + payload + KVRT_XFER_FRAME_TAG_BYTES;
        if (s->rx_have - at < whole)
            break;
        uint8_t *body = g.rx + at + KVRT_XFER_WIRE_HEADER_BYTES;
        if (!kvrt_xfer_frame_open(&s->rx, KVRT_XFER_PROTECT_MAC, g.rx + at, body, payload,
                                  body + payload))
            die("a frame from the agent failed authentication");
        g.replies++;
        at += whole;
    }
    memmove(g.rx, g.rx + at, s->rx_have - at);
    s->rx_have -= at;
}

/* Reads what is there (waiting at most wait_ms); false once closed. */
static bool rx_pump(session_t *s, int wait_ms)
{
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    if (poll(&p, 1, wait_ms) <= 0)
        return true;
    ssize_t n = recv(s->fd, g.rx + s->rx_have, 2 * FRAME_MAX_BYTES - s->rx_have, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        s->dead = true;
        return false;
    }
    if (n > 0 && s->authed) {
        s->rx_have += (size_t)n;
        rx_parse(s);
    }
    return true;
}

/* Sends bytes, reading replies whenever the socket will not take more (a
 * peer that never read would be stuck behind the agent's backpressure). */
static void tx_all(session_t *s, const uint8_t *buf, size_t n)
{
    uint64_t deadline = kvrt_now_ns() + IO_NS;
    while (n && !s->dead) {
        ssize_t k = send(s->fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            buf += k;
            n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EINTR) {
            s->dead = true;
            return;
        }
        if (kvrt_now_ns() > deadline) {
            s->dead = true; /* the agent stopped reading: fine, it may */
            return;
        }
        struct pollfd p = {.fd = s->fd, .events = POLLIN | POLLOUT};
        poll(&p, 1, 10);
        if (p.revents & POLLIN)
            rx_pump(s, 0);
    }
}

static uint32_t pick_region(input_t *in)
{
    uint8_t sel = u8(in) % 6;
    if (sel < 4)
        return g.ids[sel];
    return sel == 4 ? 0xdead0001u : u32(in);
}

static uint64_t pick_small_or_raw(input_t *in, uint32_t small_max)
{
    uint8_t sel = u8(in);
    return sel & 0x80 ? u64(in) : u16(in) % small_max;
}

/* Builds one sealed frame from the input into g.frame; returns its size,
 * 0 when its payload would be absurd. hdr_raw: 40 header bytes straight
 * from the input (the sealed frame still carries the right tag); msg: a
 * MSG frame of type 0..4. */
static size_t build_frame(session_t *s, input_t *in, bool hdr_raw, bool msg)
{
    uint8_t *hdr = g.frame;
    uint64_t payload = 0;
    bool pool_id = false;
    if (hdr_raw) {
        take(in, hdr, KVRT_XFER_WIRE_HEADER_BYTES);
        payload = u16(in) % 4096;
    } else {
        kvrt_xfer_wire_header_t h = {0};
        if (msg) {
            h.type = KVRT_XFER_WIRE_MSG;
            h.region = u8(in) % 5;
            h.length = u16(in) % 4096;
            /* KV messages name a region in their first 4 bytes: the
             * input may have the pool's id put there. */
            pool_id = u8(in) & 1;
        } else {
            h.type = u8(in) % 8;
            h.region = pick_region(in);
            h.offset = pick_small_or_raw(in, RW_BYTES + 64);
            h.length = pick_small_or_raw(in, 9000);
            h.status = u8(in) == 0xff ? (int32_t)u32(in) : 0;
        }
        h.tag = u16(in);
        kvrt_xfer_wire_encode(&h, hdr);
        kvrt_xfer_wire_header_t parsed;
        if (kvrt_xfer_wire_parse(hdr, KVRT_XFER_WIRE_HEADER_BYTES, &parsed) == KVRT_OK)
            payload = kvrt_xfer_wire_payload(&parsed);
    }
    if (payload > MAX_PAYLOAD)
        return 0;
    uint8_t *body = hdr + KVRT_XFER_WIRE_HEADER_BYTES;
    take(in, body, payload);
    if (pool_id && payload >= 4)
        kvrt_store_le32(body, g.ids[3]);
    kvrt_xfer_frame_seal(&s->tx, KVRT_XFER_PROTECT_MAC, hdr, body, NULL, payload, body + payload);
    return KVRT_XFER_WIRE_HEADER_BYTES + payload + KVRT_XFER_FRAME_TAG_BYTES;
}

/*
 * Operations, one byte each then their arguments:
 *   0 sealed frame (type, region, offset, length, status, tag, payload)
 *   1 sealed frame with a raw 40-byte header
 *   2 sealed frame with one bit flipped afterwards (a tampering relay)
 *   3 unsealed bytes (garbage)
 *   4 a message (type 0..4: notification, KV VERIFY, KV HASHES, others)
 *   5 read replies for a while
 *   6 a sealed frame cut short, then the end of the session (half WRITE)
 *   7 a flood of notifications, replies unread meanwhile
 */
static void run_ops(session_t *s, input_t *in)
{
    for (int op = 0; op < MAX_OPS && in->left && !s->dead; op++) {
        uint8_t kind = u8(in) % 8;
        size_t n;
        switch (kind) {
        case 0:
        case 1:
            if ((n = build_frame(s, in, kind == 1, false)))
                tx_all(s, g.frame, n);
            break;
        case 2:
            if ((n = build_frame(s, in, false, false))) {
                uint32_t bit = u32(in) % (uint32_t)(n * 8);
                g.frame[bit / 8] ^= (uint8_t)(1u << (bit % 8));
                tx_all(s, g.frame, n);
            }
            break;
        case 3:
            n = u8(in);
            take(in, g.frame, n);
            tx_all(s, g.frame, n);
            break;
        case 4:
            if ((n = build_frame(s, in, false, true)))
                tx_all(s, g.frame, n);
            break;
        case 5:
            rx_pump(s, u8(in) % 20);
            break;
        case 6: {
            uint32_t cut = u32(in);
            if ((n = build_frame(s, in, false, false)))
                tx_all(s, g.frame, cut % n);
            return;
        }
        default: {
            uint32_t count = 1 + u8(in) % 200;
            for (uint32_t i = 0; i < count && !s->dead; i++) {
                kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_MSG, .region = 1,
                                             .tag = i, .length = 1};
                kvrt_xfer_wire_encode(&h, g.frame);
                g.frame[KVRT_XFER_WIRE_HEADER_BYTES] = (uint8_t)i;
                kvrt_xfer_frame_seal(&s->tx, KVRT_XFER_PROTECT_MAC, g.frame,
                                     g.frame + KVRT_XFER_WIRE_HEADER_BYTES, NULL, 1,
                                     g.frame + KVRT_XFER_WIRE_HEADER_BYTES + 1);
                tx_all(s, g.frame, KVRT_XFER_WIRE_HEADER_BYTES + 1 + KVRT_XFER_FRAME_TAG_BYTES);
            }
            break;
        }
        }
    }
}

/* Handshake bytes of the input's choosing: chunks of raw bytes (a
 * slowloris sends one at a time), or a HELLO with chosen fields and the
 * right proof (other versions, backends, protections, extra sockets of
 * unknown sessions, hostile names). True when the result is a session. */
static bool handshake_from_input(session_t *s, input_t *in)
{
    if (u8(in) & 1) {
        while (in->left && !s->dead) {
            uint8_t chunk[256];
            size_t n = 1 + u8(in) % 64;
            take(in, chunk, n);
            tx_all(s, chunk, n);
            rx_pump(s, 0);
        }
        return false;
    }
    kvrt_xfer_hello_t hello = {.version = u8(in) & 1 ? u32(in) : KVRT_XFER_SC_VERSION,
                               .backend = u8(in) & 1 ? u32(in) : KVRT_XFER_BACKEND_TCP,
                               .conn_index = u8(in) & 1 ? u32(in) : 0,
                               .protection = u8(in) & 1 ? u32(in) : KVRT_XFER_PROTECT_MAC};
    take(in, hello.session, sizeof(hello.session));
    take(in, (uint8_t *)hello.name, u8(in) % KVRT_XFER_NAME_MAX);
    hello.name[KVRT_XFER_NAME_MAX - 1] = 0;
    kvrt_xfer_sc_keys_t keys;
    if (kvrt_xfer_sc_auth_client(s->fd, &g.key, &hello, NULL, NULL, &keys,
                                 kvrt_now_ns() + IO_NS) != KVRT_OK)
        return false;
    memcpy(s->tx.key, keys.tx, sizeof(s->tx.key));
    memcpy(s->rx.key, keys.rx, sizeof(s->rx.key));
    s->authed = true;
    return true;
}

static bool handshake_proper(session_t *s, input_t *in)
{
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION,
                               .backend = KVRT_XFER_BACKEND_TCP,
                               .protection = KVRT_XFER_PROTECT_MAC};
    randombytes_buf(hello.session, sizeof(hello.session));
    take(in, (uint8_t *)hello.name, u8(in) % KVRT_XFER_NAME_MAX);
    hello.name[KVRT_XFER_NAME_MAX - 1] = 0;
    kvrt_xfer_sc_keys_t keys;
    if (kvrt_xfer_sc_auth_client(s->fd, &g.key, &hello, NULL, NULL, &keys,
                                 kvrt_now_ns() + IO_NS) != KVRT_OK)
        die("a legitimate handshake failed beside the silent sockets");
    memcpy(s->tx.key, keys.tx, sizeof(s->tx.key));
    memcpy(s->rx.key, keys.rx, sizeof(s->rx.key));
    s->authed = true;
    return true;
}

/* Waits (bounded) until the agent holds no peer and no pending handshake:
 * whatever the input did, the session's resources go with it. */
static void wait_released(void)
{
    uint64_t end = kvrt_now_ns() + 5 * IO_NS;
    while (stat_of("xfer.0.peers") || stat_of("xfer.0.handshakes_pending")) {
        if (kvrt_now_ns() > end)
            die("the agent still holds the peer or a handshake after the session ended");
        usleep(500);
    }
}

static void check_memory(void)
{
    /* Only the read-write region and the pool may have changed. */
    const size_t rw = GUARD, rw_end = GUARD + RW_BYTES;
    for (size_t i = 0; i < g.arena_bytes; i++)
        if ((i < rw || i >= rw_end) && g.arena[i] != g.expect[i]) {
            fprintf(stderr, "byte %zu of the arena changed\n", i);
            die("memory the peer was not granted changed");
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input_t in = {data, size};
    uint8_t flags = u8(&in);
    int silent[7], nsilent = (flags >> 1) & 7;
    for (int i = 0; i < nsilent; i++)
        if (kvrt_xfer_sc_dial(&g.addr, kvrt_now_ns() + IO_NS, &silent[i]) != KVRT_OK)
            die("dial");
    session_t s = {.fd = -1};
    if (kvrt_xfer_sc_dial(&g.addr, kvrt_now_ns() + IO_NS, &s.fd) != KVRT_OK)
        die("dial");
    bool session = flags & 1 ? handshake_from_input(&s, &in) : handshake_proper(&s, &in);
    if (session && !s.dead) {
        run_ops(&s, &in);
        rx_pump(&s, 1);
    }
    close(s.fd);
    for (int i = 0; i < nsilent; i++)
        close(silent[i]);
    wait_released();
    check_memory();
    kvrt_xfer_notification_t notes[64];
    uint32_t got = 0;
    while (kvrt_xfer_notifications(g.agent, notes, 64, &got) == KVRT_OK && got == 64)
        ;
    return 0;
}

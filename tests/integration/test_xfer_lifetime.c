/*
 * test_xfer_lifetime.c - objects of the transfer engine live exactly as
 * long as some thread uses them: peers dropped while the accept thread
 * holds them, a disconnect while the upkeep thread reconnects, an agent
 * destroyed while connections come and go, requests whose post fails,
 * regions deregistered while a peer's access is in progress, user-owned
 * requests left at destroy, agents destroyed by an exit handler the
 * process registered once they existed. Also: what a post refuses before
 * it starts (device memory with integrity, engine-memory pools, malformed
 * descriptors), and that a failed create or register leaves no trace.
 */
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_xfer_raw.h"
#include "xfer/sidechannel.h"
#include "xfer/tcp/wire.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define DEADLINE (now_ns() + 3000000000ull)

/* An authenticated raw socket to the agent at `text`; -1 on failure (no
 * assertion, so that helper threads may call it). */
static int raw_connect_text(const char *text)
{
    kvrt_xfer_addr_t addr;
    if (kvrt_xfer_addr_parse(text, &addr) != KVRT_OK)
        return -1;
    int fd = -1;
    if (kvrt_xfer_sc_dial(&addr, DEADLINE, &fd) != KVRT_OK)
        return -1;
    kvrt_xfer_key_t key;
    kvrt_xfer_key_derive(test_xfer_key, 32, &key);
    kvrt_xfer_hello_t hello = {.version = KVRT_XFER_SC_VERSION, .backend = KVRT_XFER_BACKEND_TCP,
                               .name = "raw"};
    randombytes_buf(hello.session, sizeof(hello.session));
    if (kvrt_xfer_sc_auth_client(fd, &key, &hello, NULL, NULL, NULL, DEADLINE) != KVRT_OK) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A header no agent accepts: the connection is dropped and its passive
 * peer freed by the upkeep thread, possibly while the accept thread still
 * sets the connection up. */
static void send_malformed(int fd)
{
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_READ_REQ, .region = 1, .tag = 1,
                                 .length = 16};
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_encode(&h, hdr);
    hdr[0] ^= 0xff;
    (void)kvrt_xfer_sc_write_all(fd, hdr, sizeof(hdr), DEADLINE);
}

Test(xfer_lifetime, passive_peers_dropped_while_being_accepted)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, sizeof(text)));
    uint64_t refused0 = txu_stat(ctx, "xfer.0.refused");
    enum { ROUNDS = 40 };
    for (int i = 0; i < ROUNDS; i++) {
        int fd = raw_connect_text(text);
        cr_assert_geq(fd, 0);
        send_malformed(fd);
        close(fd);
    }
    /* Every connection is refused and its peer goes away. */
    uint64_t end = txu_now_ms() + 5000;
    while (txu_now_ms() < end &&
           (txu_stat(ctx, "xfer.0.refused") - refused0 < ROUNDS || txu_stat(ctx, "xfer.0.peers")))
        usleep(2000);
    cr_assert_eq(txu_stat(ctx, "xfer.0.refused") - refused0, ROUNDS);
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
}

typedef struct hammer {
    char text[96];
    volatile int stop;
    int rounds;
} hammer_t;

/* Most connections one hammer makes: it stops there, when told, or when
 * the agent no longer answers (destroy refuses new connections from its
 * start, and then closes the listener). */
#define HAMMER_MAX_ROUNDS 200

static void *hammer_main(void *arg)
{
    hammer_t *h = arg;
    while (!__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE) &&
           __atomic_load_n(&h->rounds, __ATOMIC_RELAXED) < HAMMER_MAX_ROUNDS) {
        int fd = raw_connect_text(h->text);
        if (fd < 0)
            break; /* the agent is being destroyed, or gone */
        if (__atomic_fetch_add(&h->rounds, 1, __ATOMIC_RELAXED) % 2)
            send_malformed(fd);
        close(fd);
    }
    return NULL;
}

Test(xfer_lifetime, agent_destroyed_while_peers_come_and_go)
{
    for (int round = 0; round < 3; round++) {
        kvrt_ctx_t *ctx = txu_ctx();
        kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
        hammer_t h = {.stop = 0};
        ASSERT_OK(ctx, kvrt_xfer_agent_address(a, h.text, sizeof(h.text)));
        pthread_t t;
        cr_assert_eq(pthread_create(&t, NULL, hammer_main, &h), 0);
        uint64_t end = txu_now_ms() + 2000;
        while (__atomic_load_n(&h.rounds, __ATOMIC_RELAXED) < 10 && txu_now_ms() < end)
            usleep(1000);
        ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
        __atomic_store_n(&h.stop, 1, __ATOMIC_RELEASE);
        pthread_join(t, NULL);
        kvrt_ctx_destroy(ctx);
    }
}

/* A listener that accepts and never answers: a handshake with it blocks
 * until its deadline. */
typedef struct mute {
    int fd;
    int accepted[8];
    int n;
} mute_t;

Test(xfer_lifetime, disconnect_while_the_upkeep_thread_reconnects)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    kvrt_xfer_agent_t *b = txu_agent(ctx, 3000);
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(b, text, sizeof(text)));
    kvrt_xfer_peer_t *peer = txu_connect(ctx, a, b);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(b));
    /* Something else answers at b's address now, and never says a word. */
    kvrt_xfer_addr_t addr, bound;
    cr_assert_eq(kvrt_xfer_addr_parse(text, &addr), KVRT_OK);
    mute_t m = {.fd = -1};
    cr_assert_eq(kvrt_xfer_sc_listen(&addr, &bound, &m.fd), KVRT_OK);
    uint64_t end = txu_now_ms() + 3000;
    while (m.n == 0 && txu_now_ms() < end) {
        int fd = accept(m.fd, NULL, NULL);
        if (fd >= 0)
            m.accepted[m.n++] = fd;
        else
            usleep(1000);
    }
    cr_assert_gt(m.n, 0, "a never redialed");
    /* The upkeep thread is in that handshake now, holding the peer. */
    uint64_t t0 = txu_now_ms();
    ASSERT_OK(ctx, kvrt_xfer_disconnect(peer));
    cr_assert_lt(txu_now_ms() - t0, 1000, "disconnect waited for the reconnect");
    cr_assert_eq(txu_stat(ctx, "xfer.0.peers"), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    for (int i = 0; i < m.n; i++)
        close(m.accepted[i]);
    close(m.fd);
    kvrt_ctx_destroy(ctx);
}

typedef struct pair {
    kvrt_ctx_t *ctx;
    kvrt_xfer_agent_t *a, *b;
    kvrt_xfer_peer_t *peer;
} pair_t;

static pair_t pair_up(uint32_t timeout_ms)
{
    pair_t p;
    p.ctx = txu_ctx();
    p.a = txu_agent(p.ctx, timeout_ms);
    p.b = txu_agent(p.ctx, timeout_ms);
    p.peer = txu_connect(p.ctx, p.a, p.b);
    return p;
}

Test(xfer_lifetime, self_freeing_requests_whose_post_fails)
{
    /* Requests posted without a handle free themselves; when the
     * connection dies under a post, the failed post completes them. */
    for (int round = 0; round < 4; round++) {
        pair_t p = pair_up(3000);
        enum { BYTES = 1 << 16 };
        uint8_t *src = aligned_alloc(4096, BYTES), *dst = aligned_alloc(4096, BYTES);
        memset(src, 1, BYTES);
        kvrt_xfer_region_t *l = txu_register(p.ctx, p.a, src, BYTES, 0);
        kvrt_xfer_region_t *r = txu_register(p.ctx, p.b, dst, BYTES,
                                             KVRT_XFER_REMOTE_WRITE | KVRT_XFER_REMOTE_READ);
        kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, r);
        kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = l, .remote = rem,
                             .length = 4096};
        uint32_t ok = 0;
        kvrt_status_t st = KVRT_OK;
        for (int i = 0; i < 20000 && st != KVRT_ERR_PEER_FAILED; i++) {
            if (i == 200)
                ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.b));
            st = kvrt_xfer_post(p.peer, &op, 1, NULL, NULL);
            if (st == KVRT_OK)
                ok++;
            if (st == KVRT_ERR_REQUEST_LIMIT) {
                kvrt_xfer_completion_t c[64];
                uint32_t n = 0;
                kvrt_xfer_poll(p.a, c, 64, &n);
            }
        }
        cr_assert_eq(st, KVRT_ERR_PEER_FAILED);
        cr_assert_gt(ok, 0);
        /* Every one of them completed once. */
        cr_assert_eq(txu_stat_drained(p.ctx, "xfer.0.outstanding", 5000), 0);
        ASSERT_OK(p.ctx, kvrt_xfer_deregister(l));
        ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.a));
        kvrt_ctx_destroy(p.ctx);
        free(src);
        free(dst);
    }
}

Test(xfer_lifetime, user_owned_requests_die_with_the_agent)
{
    pair_t p = pair_up(3000);
    enum { BYTES = 1 << 16 };
    uint8_t *src = aligned_alloc(4096, BYTES), *dst = aligned_alloc(4096, BYTES);
    memset(src, 7, BYTES);
    kvrt_xfer_region_t *l = txu_register(p.ctx, p.a, src, BYTES, 0);
    kvrt_xfer_region_t *r = txu_register(p.ctx, p.b, dst, BYTES, KVRT_XFER_REMOTE_WRITE);
    kvrt_xfer_remote_t *rem = txu_import(p.ctx, p.peer, r);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = l, .remote = rem, .length = BYTES};
    kvrt_xfer_request_t *done = NULL, *pending = NULL;
    ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, &op, 1, NULL, &done));
    ASSERT_OK(p.ctx, kvrt_xfer_request_wait(done, 3000));
    ASSERT_OK(p.ctx, kvrt_xfer_post(p.peer, &op, 1, NULL, &pending));
    /* Neither is released: destroy frees both (a leak checker would say
     * otherwise), the one in flight after it was canceled. */
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.a));
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.b));
    kvrt_ctx_destroy(p.ctx);
    free(src);
    free(dst);
}

/* A frame is acted on only once it arrived whole and authentic, so a WRITE
 * whose payload stops halfway pins nothing: deregistration completes at
 * once, and when the rest comes the region is gone and nothing lands. */
Test(xfer_lifetime, half_sent_write_pins_nothing)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    enum { BYTES = 1 << 16 };
    uint8_t *mem = aligned_alloc(4096, BYTES);
    memset(mem, 0, BYTES);
    kvrt_xfer_region_t *r = txu_register(ctx, a, mem, BYTES, KVRT_XFER_REMOTE_WRITE);
    uint32_t id = txu_region_id(ctx, r);
    char text[96];
    ASSERT_OK(ctx, kvrt_xfer_agent_address(a, text, sizeof(text)));
    txr_t raw = txr_connect(text, "stalls");
    kvrt_xfer_wire_header_t h = {.type = KVRT_XFER_WIRE_WRITE, .region = id, .tag = 5,
                                 .length = 8192};
    uint8_t hdr[KVRT_XFER_WIRE_HEADER_BYTES], payload[8192], tag[KVRT_XFER_FRAME_TAG_BYTES];
    memset(payload, 0xab, sizeof(payload));
    kvrt_xfer_wire_encode(&h, hdr);
    kvrt_xfer_frame_seal(&raw.tx, KVRT_XFER_PROTECT_MAC, hdr, payload, NULL, sizeof(payload), tag);
    cr_assert_eq(kvrt_xfer_sc_write_all(raw.fd, hdr, sizeof(hdr), DEADLINE), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_write_all(raw.fd, payload, 4096, DEADLINE), KVRT_OK);
    usleep(100000);

    /* Before frames were authenticated, this waited a second for the pin
     * and failed with KVRT_ERR_BUSY. */
    ASSERT_OK(ctx, kvrt_xfer_deregister(r));

    cr_assert_eq(kvrt_xfer_sc_write_all(raw.fd, payload + 4096, 4096, DEADLINE), KVRT_OK);
    cr_assert_eq(kvrt_xfer_sc_write_all(raw.fd, tag, sizeof(tag), DEADLINE), KVRT_OK);
    uint8_t buf[64];
    kvrt_xfer_wire_header_t ack = txr_recv(&raw, buf, sizeof(buf));
    cr_assert_eq(ack.tag, 5);
    cr_assert_eq(ack.status, KVRT_ERR_UNKNOWN_REGION);
    for (uint32_t i = 0; i < BYTES; i++)
        cr_assert_eq(mem[i], 0, "byte %u of a deregistered region was written", i);
    close(raw.fd);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    free(mem);
}

/* ---- refused before anything starts ---------------------------------- */

Test(xfer_lifetime, integrity_against_device_memory_is_unsupported)
{
    pair_t p = pair_up(3000);
    kvrt_pool_t *pa = txu_pool(p.ctx, 16, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    kvrt_pool_t *pb = txu_pool(p.ctx, 16, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    kvrt_xfer_region_t *ra = txu_register_pool(p.ctx, p.a, pa);
    kvrt_xfer_region_t *rb = txu_register_pool(p.ctx, p.b, pb);
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(p.ctx, kvrt_xfer_region_descriptor(rb, desc, sizeof(desc), &len));
    cr_assert_eq(desc[6], 1, "a host pool's descriptor carries only the layout flag");
    desc[6] |= 2; /* as a dmabuf pool's descriptor says */
    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_OK(p.ctx, kvrt_xfer_import(p.peer, desc, len, &rem));
    int32_t from[2] = {1, 2}, to[2] = {3, 4};
    kvrt_xfer_kv_params_t kp = {.field_mask = KVRT_XFER_KV_PARAM_INTEGRITY,
                                .opcode = KVRT_XFER_WRITE, .local = ra, .remote = rem,
                                .local_blocks = from, .remote_blocks = to, .count = 2,
                                .integrity = 1};
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_xfer_kv_post(p.peer, &kp, NULL));
    kp.opcode = KVRT_XFER_READ;
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_xfer_kv_post(p.peer, &kp, NULL));
    cr_assert(strstr(kvrt_ctx_last_error(p.ctx), "device memory") != NULL);
    /* A zero window is refused, not turned into a default. */
    kp.field_mask = KVRT_XFER_KV_PARAM_INFLIGHT;
    kp.max_inflight_bytes = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_kv_post(p.peer, &kp, NULL));
    cr_assert_eq(txu_stat(p.ctx, "xfer.0.requests"), 0);
    ASSERT_OK(p.ctx, kvrt_xfer_remote_release(rem));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(ra));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(rb));
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.a));
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.b));
    kvrt_pool_destroy(pa);
    kvrt_pool_destroy(pb);
    kvrt_ctx_destroy(p.ctx);
}

Test(xfer_lifetime, engine_memory_pool_needs_the_dmabuf_bit)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    kvrt_pool_params_t pp = {.field_mask = KVRT_POOL_PARAM_BASE | KVRT_POOL_PARAM_WATERMARK,
                             .layout = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 8,
                                        .tokens_per_block = 4},
                             .num_blocks = 8,
                             .watermark_blocks = 0};
    uint64_t block = 0;
    ASSERT_OK(ctx, kvrt_layout_block_bytes(&pp.layout, &block));
    pp.base_bytes = block * pp.num_blocks;
    pp.base = aligned_alloc(4096, (pp.base_bytes + 4095) & ~4095ull);
    kvrt_pool_t *pool = NULL;
    ASSERT_OK(ctx, kvrt_pool_create(ctx, &pp, &pool));
    kvrt_xfer_register_params_t rp = {
        .field_mask = KVRT_XFER_REGISTER_PARAM_POOL | KVRT_XFER_REGISTER_PARAM_ACCESS,
        .pool = pool, .access = KVRT_XFER_REMOTE_READ};
    kvrt_xfer_region_t *r = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_register(a, &rp, &r));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "DMABUF") != NULL);
    cr_assert_eq(txu_stat(ctx, "xfer.0.regions"), 0);
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_pool_destroy(pool);
    free(pp.base);
    kvrt_ctx_destroy(ctx);
}

Test(xfer_lifetime, a_registered_pool_cannot_be_destroyed)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    kvrt_pool_t *pool = txu_pool(ctx, 16, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    kvrt_xfer_register_params_t rp = {
        .field_mask = KVRT_XFER_REGISTER_PARAM_POOL | KVRT_XFER_REGISTER_PARAM_ACCESS,
        .pool = pool, .access = KVRT_XFER_REMOTE_READ | KVRT_XFER_REMOTE_WRITE};
    kvrt_xfer_region_t *r = NULL;
    ASSERT_OK(ctx, kvrt_xfer_register(a, &rp, &r));
    /* Peers may be writing into it: the pool stays until deregistration. */
    ASSERT_STATUS(KVRT_ERR_BUSY, kvrt_pool_destroy(pool));
    ASSERT_OK(ctx, kvrt_xfer_deregister(r));
    ASSERT_OK(ctx, kvrt_pool_destroy(pool));
    /* And a registration left to the context: the agent (and its regions)
     * go before the pool, whatever the creation order. */
    kvrt_pool_t *late = txu_pool(ctx, 16, KVRT_ORDER_BLOCK_MAJOR, KVRT_KV_FUSED);
    rp.pool = late;
    ASSERT_OK(ctx, kvrt_xfer_register(a, &rp, &r));
    kvrt_ctx_destroy(ctx);
}

Test(xfer_lifetime, descriptor_whose_pool_size_wraps_is_malformed)
{
    pair_t p = pair_up(3000);
    kvrt_pool_t *pool = txu_pool(p.ctx, 16, KVRT_ORDER_LAYER_MAJOR, KVRT_KV_SEPARATE);
    kvrt_xfer_region_t *r = txu_register_pool(p.ctx, p.b, pool);
    uint8_t desc[KVRT_XFER_DESCRIPTOR_MAX];
    size_t len = 0;
    ASSERT_OK(p.ctx, kvrt_xfer_region_descriptor(r, desc, sizeof(desc), &len));
    /* Every layout dimension at its limit: 1024 layers x 2 halves x 1024
     * heads x 1024 x 4096 tokens x 2 bytes = 2^44 bytes a block; with 2^20
     * blocks that is 2^64 bytes, which wraps to 0 and so "fits" any
     * length. */
    uint32_t v[5] = {1024, 1024, 1024, 4096, 1u << 20};
    uint32_t at[5] = {0, 4, 8, 12, 28};
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 4; k++)
            desc[32 + at[i] + k] = (uint8_t)(v[i] >> (8 * k));
    cr_assert_eq(desc[32 + 16], KVRT_DTYPE_FP16);
    kvrt_xfer_remote_t *rem = NULL;
    ASSERT_STATUS(KVRT_ERR_PARSE, kvrt_xfer_import(p.peer, desc, len, &rem));
    ASSERT_OK(p.ctx, kvrt_xfer_deregister(r));
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.a));
    ASSERT_OK(p.ctx, kvrt_xfer_agent_destroy(p.b));
    kvrt_pool_destroy(pool);
    kvrt_ctx_destroy(p.ctx);
}

Test(xfer_lifetime, failed_create_and_register_leave_no_trace)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_params_t bad = {.cluster_key = test_xfer_key, .cluster_key_bytes = 3};
    kvrt_xfer_agent_t *x = NULL;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_agent_create(ctx, &bad, &x));
    bad.cluster_key_bytes = 32;
    bad.field_mask = KVRT_XFER_AGENT_PARAM_LISTEN;
    bad.listen_address = "not an address";
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_agent_create(ctx, &bad, &x));
    /* The first agent that exists is agent 0. */
    kvrt_xfer_agent_t *a = txu_agent(ctx, 3000);
    cr_assert_eq(txu_stat(ctx, "xfer.0.regions"), 0);
    uint8_t *mem = aligned_alloc(4096, 4096);
    kvrt_xfer_register_params_t rp = {.field_mask = KVRT_XFER_REGISTER_PARAM_DMABUF,
                                      .address = mem, .length = 4096, .dmabuf_fd = 0};
    kvrt_xfer_region_t *r = NULL;
    ASSERT_STATUS(KVRT_ERR_UNSUPPORTED, kvrt_xfer_register(a, &rp, &r));
    /* The failed registration did not use up a generation of its slot. */
    r = txu_register(ctx, a, mem, 4096, 0);
    cr_assert_eq(txu_region_id(ctx, r), 1u | 1u << 16);
    /* Refusals of bad arguments say why. */
    size_t n = 0;
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_region_descriptor(r, NULL, 16, &n));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "kvrt_xfer_region_descriptor") != NULL);
    ASSERT_STATUS(KVRT_ERR_INVALID_ARG, kvrt_xfer_poll(a, NULL, 4, &(uint32_t){0}));
    cr_assert(strstr(kvrt_ctx_last_error(ctx), "kvrt_xfer_poll") != NULL);
    ASSERT_OK(ctx, kvrt_xfer_deregister(r));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    free(mem);
    kvrt_ctx_destroy(ctx);
}

/* ---- agents destroyed at exit -------------------------------------------- */

/*
 * A process may destroy its agents from an exit handler it registered once
 * they existed (fuzz_xfer_session does). When libcrypto initialized itself
 * on first use, keying a socket of the AES suite, its own exit handler
 * came later and so ran first: it frees only the exiting thread's state,
 * and the agent threads joined after it each left their error queue
 * behind (LeakSanitizer: 904 bytes from CRYPTO_zalloc at exit). The agent
 * now initializes libcrypto when created. xfer_exit_child is that process
 * (its exit status says which handler ran first).
 */
Test(xfer_lifetime, agents_destroyed_by_a_later_exit_handler)
{
    enum { CHILD_NOT_SET_UP = 3, CHILD_CRYPTO_STOPPED = 4 };
    char *argv[] = {KVRT_XFER_EXIT_CHILD, NULL};
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, KVRT_XFER_EXIT_CHILD, NULL, NULL, argv, environ), 0);
    int status = 0;
    pid_t done = 0;
    for (int i = 0; i < 3000 && (done = waitpid(pid, &status, WNOHANG)) == 0; i++)
        usleep(10000);
    if (done == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        cr_assert_fail("the child did not exit within 30 s");
    }
    cr_assert(WIFEXITED(status), "the child died of signal %d (a sanitizer report?)",
              WTERMSIG(status));
    cr_assert_neq(WEXITSTATUS(status), CHILD_NOT_SET_UP, "the child could not set up");
    cr_assert_neq(WEXITSTATUS(status), CHILD_CRYPTO_STOPPED,
                  "libcrypto's exit handler ran before one registered after the agents");
    cr_assert_eq(WEXITSTATUS(status), 0, "the child exited with %d", WEXITSTATUS(status));
}

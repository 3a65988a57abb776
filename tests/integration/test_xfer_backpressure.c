/*
 * test_xfer_backpressure.c - an authenticated peer that sends requests and
 * never reads the replies (notifications, writes, reads) must not grow the
 * agent: the replies held for it stay under max_queued_bytes, the agent
 * stops reading from it (so the flood backs up into the peer's own
 * socket), another peer is served meanwhile, and once the flooder leaves
 * the memory held for it is back to nothing.
 */
#include "test_xfer_flood.h"

#define CAP (64u << 10)
#define BATCH 1000u
#define FLOOD_MS 60000u
/* Resident memory growth allowed: AddressSanitizer keeps freed memory in
 * quarantine (each message's buffer, freed at once) and ThreadSanitizer
 * maps shadow memory for what is touched, so under them RSS says nothing
 * about what the agent holds; the queued_bytes bound still does. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TXF_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__) || defined(TXF_SANITIZED)
#define RSS_GROWTH_MAX (256ull << 20)
#else
#define RSS_GROWTH_MAX (8ull << 20)
#endif
/* Floods are sized in bytes past what the kernel can buffer on the way
 * (the agent's receive buffer autotunes up to tcp_rmem's 32 MiB here, and
 * its send buffer takes some replies): only an agent that stops reading
 * makes the flooder's writes stall. */

static void victim_up(txf_victim_t *v)
{
    txf_victim_up(v,
                  (kvrt_xfer_agent_params_t){.field_mask = KVRT_XFER_AGENT_PARAM_MAX_QUEUED,
                                             .max_queued_bytes = CAP},
                  1u << 20);
}

/* A legitimate peer's write to the victim while the flooder is held. */
static void other_peer_is_served(txf_victim_t *v)
{
    kvrt_ctx_t *ctx = txu_ctx();
    kvrt_xfer_agent_t *a = txu_agent(ctx, 5000);
    kvrt_xfer_peer_t *peer = txu_connect(ctx, a, v->agent);
    kvrt_xfer_remote_t *rem = txu_import(ctx, peer, v->rw);
    uint8_t *src = aligned_alloc(4096, 65536);
    txu_fill(src, 65536, 9);
    kvrt_xfer_region_t *ls = txu_register(ctx, a, src, 65536, 0);
    kvrt_xfer_op_t op = {.opcode = KVRT_XFER_WRITE, .local = ls, .remote = rem,
                         .remote_offset = 65536, .length = 65536};
    kvrt_xfer_request_t *req = NULL;
    ASSERT_OK(ctx, kvrt_xfer_post(peer, &op, 1, NULL, &req));
    ASSERT_STATUS(KVRT_OK, kvrt_xfer_request_wait(req, 10000));
    ASSERT_OK(ctx, kvrt_xfer_request_release(req));
    cr_assert(memcmp(v->mem + 65536, src, 65536) == 0);
    ASSERT_OK(ctx, kvrt_xfer_deregister(ls));
    ASSERT_OK(ctx, kvrt_xfer_agent_destroy(a));
    kvrt_ctx_destroy(ctx);
    free(src);
}

/* Floods the victim with up to `frames` frames made by `make` without
 * reading. */
static void flood(kvrt_xfer_wire_header_t (*make)(uint32_t id, uint32_t i), const void *payload,
                  uint32_t payload_bytes, uint32_t frames)
{
    txf_victim_t v;
    victim_up(&v);
    uint32_t id = txu_region_id(v.ctx, v.rw);
    /* Warm: the agent's threads, rings and caches exist before the baseline. */
    other_peer_is_served(&v);
    uint64_t rss0 = txf_rss(), rss_max = rss0, queued_max = 0;

    txr_t r = txf_connect_silent(v.ctx, v.agent, "flooder");
    size_t frame = KVRT_XFER_WIRE_HEADER_BYTES + payload_bytes + KVRT_XFER_FRAME_TAG_BYTES;
    size_t capacity = frame * BATCH;
    uint8_t *buf = malloc(capacity);
    uint32_t sent = 0;
    bool stopped = false;
    /* An agent that stopped reading lets only what the kernel frees trickle
     * in. The flood is bounded by its size (`frames`, far more than the
     * kernel can buffer) and FLOOD_MS only stops a run that no longer
     * moves: the agent pauses once the kernel's socket buffers (megabytes)
     * are full of replies, a few seconds on a quiet machine and tens of
     * seconds with several test programs on two cores. */
    uint64_t end = txu_now_ms() + FLOOD_MS;
    while (sent < frames && !stopped) {
        if (txu_now_ms() >= end) {
            stopped = true;
            break;
        }
        size_t at = 0;
        for (uint32_t i = 0; i < BATCH; i++)
            txf_seal(&r, buf, capacity, &at, make(id, sent + i), payload);
        /* A write that stalls 300 ms proves a pause only once the agent
         * says it paused: on a loaded machine its progress thread may just
         * not have run. Until then the rest of the batch goes on (a frame
         * cut in half would end the session). */
        size_t n = 0;
        for (;;) {
            n += txf_write(r.fd, buf + n, at - n, 300);
            if (n == at)
                break;
            if (txu_stat(v.ctx, "xfer.0.reads_paused") >= 1 || txu_now_ms() >= end) {
                stopped = true;
                break;
            }
        }
        sent += (uint32_t)(n / frame);
        uint64_t q = txu_stat(v.ctx, "xfer.0.queued_bytes");
        queued_max = q > queued_max ? q : queued_max;
        uint64_t rss = txf_rss();
        rss_max = rss > rss_max ? rss : rss_max;
    }
    free(buf);
    /* The agent stopped reading: the flood backed up into this socket. */
    cr_assert(stopped, "all %u frames went in: the agent never stopped reading", sent);
    cr_assert_geq(txu_stat(v.ctx, "xfer.0.reads_paused"), 1);
    /* At most one frame's reply beyond the cap. */
    cr_assert_leq(queued_max, CAP + 4096, "%llu bytes queued for one peer",
                  (unsigned long long)queued_max);
    cr_assert_lt(rss_max - rss0, RSS_GROWTH_MAX, "resident memory grew by %llu bytes",
                 (unsigned long long)(rss_max - rss0));
    /* Another peer is served while the flooder is held. */
    other_peer_is_served(&v);

    /* The flooder leaves: what was held for it is returned. */
    close(r.fd);
    cr_assert_eq(txu_stat_drained(v.ctx, "xfer.0.peers", 5000), 0);
    cr_assert_eq(txu_stat_drained(v.ctx, "xfer.0.queued_bytes", 5000), 0);
    uint64_t rss1 = txf_rss();
    cr_assert_lt(rss1 > rss0 ? rss1 - rss0 : 0, RSS_GROWTH_MAX, "resident memory after: +%llu bytes",
                 (unsigned long long)(rss1 > rss0 ? rss1 - rss0 : 0));
    txf_victim_down(&v);
}

static uint8_t note[KVRT_XFER_NOTIFY_MAX];

static kvrt_xfer_wire_header_t notify_frame(uint32_t id, uint32_t i)
{
    (void)id;
    return (kvrt_xfer_wire_header_t){.type = KVRT_XFER_WIRE_MSG, .region = 1 /* notify */,
                                     .tag = i, .length = sizeof(note)};
}

static uint8_t data[1024];

static kvrt_xfer_wire_header_t write_frame(uint32_t id, uint32_t i)
{
    return (kvrt_xfer_wire_header_t){.type = KVRT_XFER_WIRE_WRITE, .region = id, .tag = i,
                                     .offset = (uint64_t)(i % 256) * sizeof(data) + (1u << 19),
                                     .length = sizeof(data)};
}

static kvrt_xfer_wire_header_t read_frame(uint32_t id, uint32_t i)
{
    return (kvrt_xfer_wire_header_t){.type = KVRT_XFER_WIRE_READ_REQ, .region = id, .tag = i,
                                     .offset = (uint64_t)(i % 16) * 4096, .length = 4096};
}

Test(xfer_backpressure, notify_flood_from_a_peer_that_never_reads)
{
    flood(notify_frame, note, sizeof(note), 300000); /* 94 MB */
}

Test(xfer_backpressure, write_flood_from_a_peer_that_never_reads_acks)
{
    flood(write_frame, data, sizeof(data), 150000); /* 162 MB */
}

Test(xfer_backpressure, read_flood_from_a_peer_that_never_reads_responses)
{
    flood(read_frame, NULL, 0, 1500000); /* 84 MB */
}

/*
 * handoff_wire.h - the prefill/decode hand-off's two byte formats, shared by
 * the decode side (handoff_recv.c) and the prefill side (handoff_send.c).
 * Everything is little-endian. Internal.
 *
 * Ticket (decode -> prefill, shipped by the embedder):
 *   0  u32 magic "KVHT"      4  u16 version (2)    6  u16 address bytes A
 *   8  u64 token            16  u32 slot          20  u32 first block index
 *  24  u32 block count N    28  u16 descriptor bytes D   30 u16 0
 *  32  u32 budget ms        36  u32 0
 *  40  address (A bytes, no NUL), descriptor (D bytes), N x u32 block ids
 * The budget is the time that was left to the hand-off's deadline when the
 * decode node wrote the ticket (0 .. 3600000): hosts' clocks differ, so the
 * sender counts it from the moment it reads the ticket and posts nothing
 * once it ran out. (Version 1 had no budget and a 32-byte head.)
 *
 * Message (prefill -> decode, a transfer notification of 32 bytes):
 *   0  u32 magic "KVHN"      4  u16 kind (BATCH, ABORT)   6 u16 0
 *   8  u32 slot             12  u32 first (ticket index of the batch)
 *  16  u32 count            20  u32 0                    24 u64 token
 * A BATCH message closes the KV write of blocks [first, first + count) of
 * the ticket (the transfer engine delivers it once they landed, with the
 * status of their checksums); ABORT says the sender gave up and that
 * nothing it posted before is still in flight.
 */
#ifndef KVRT_CLUSTER_HANDOFF_WIRE_H
#define KVRT_CLUSTER_HANDOFF_WIRE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/core.h"
#include "core/endian.h"
#include "kvrt/xfer.h"

#define HANDOFF_TICKET_MAGIC 0x5448564bu /* "KVHT" */
#define HANDOFF_MSG_MAGIC 0x4e48564bu    /* "KVHN" */
#define HANDOFF_VERSION 2u
#define HANDOFF_TICKET_HEAD 40u
#define HANDOFF_BUDGET_MAX_MS 3600000u
#define HANDOFF_ADDRESS_MAX 255u
#define HANDOFF_MSG_BYTES 32u
/* Blocks per KV write: one closing message of the transfer engine's KV
 * layer covers them all, so its notification always names the batch. */
#define HANDOFF_BATCH_MAX 1024u

enum handoff_msg_kind { HANDOFF_MSG_BATCH = 1, HANDOFF_MSG_ABORT = 2 };

typedef struct handoff_ticket {
    uint64_t token;
    uint32_t slot;
    uint32_t first_block;
    uint32_t num_blocks;
    uint32_t budget_ms; /* left to the deadline when the ticket was written */
    char address[HANDOFF_ADDRESS_MAX + 1];
    const uint8_t *descriptor; /* into the ticket bytes */
    uint32_t descriptor_bytes;
    const uint8_t *blocks;     /* N x u32, into the ticket bytes */
} handoff_ticket_t;

typedef struct handoff_msg {
    uint32_t kind;
    uint32_t slot;
    uint32_t first;
    uint32_t count;
    uint64_t token;
} handoff_msg_t;

/* Checks every field of a ticket against its length (handoff_send.c);
 * descriptor and blocks point into p. KVRT_ERR_PARSE with a message. */
kvrt_status_t handoff_ticket_parse(kvrt_ctx_t *ctx, const uint8_t *p, size_t length,
                                   handoff_ticket_t *t);

static inline void handoff_msg_encode(uint8_t out[HANDOFF_MSG_BYTES], const handoff_msg_t *m)
{
    memset(out, 0, HANDOFF_MSG_BYTES);
    kvrt_store_le32(out, HANDOFF_MSG_MAGIC);
    kvrt_store_le16(out + 4, (uint16_t)m->kind);
    kvrt_store_le32(out + 8, m->slot);
    kvrt_store_le32(out + 12, m->first);
    kvrt_store_le32(out + 16, m->count);
    kvrt_store_le64(out + 24, m->token);
}

/* false when the bytes are not a hand-off message of a known kind. */
static inline bool handoff_msg_decode(const uint8_t *in, uint32_t bytes, handoff_msg_t *m)
{
    if (bytes != HANDOFF_MSG_BYTES || kvrt_load_le32(in) != HANDOFF_MSG_MAGIC)
        return false;
    m->kind = kvrt_load_le16(in + 4);
    m->slot = kvrt_load_le32(in + 8);
    m->first = kvrt_load_le32(in + 12);
    m->count = kvrt_load_le32(in + 16);
    m->token = kvrt_load_le64(in + 24);
    return m->kind == HANDOFF_MSG_BATCH || m->kind == HANDOFF_MSG_ABORT;
}

#endif /* KVRT_CLUSTER_HANDOFF_WIRE_H */

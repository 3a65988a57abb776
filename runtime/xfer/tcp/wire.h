/*
 * wire.h - the TCP backend's frame header: encoding and the parser that
 * every incoming header goes through before anything else looks at it.
 * Internal: nothing here is ABI.
 *
 * A frame is a 40-byte little-endian header, then `length` payload bytes
 * for WRITE, READ_RESP (status 0), MSG and MSG_REPLY, then a 16-byte tag
 * that authenticates both (frame_auth.h):
 *
 *   0  u32 magic "KVX1"     4  u8 type     5  u8 flags (0)   6  u16 zero
 *   8  u32 region id       12  i32 status (0 in requests)
 *  16  u64 tag (the sender's handle for the reply)
 *  24  u64 offset          32  u64 length
 *
 * The parser refuses anything it does not fully understand: unknown type,
 * non-zero reserved bits, a status in a request, fields that make no sense
 * for the type, lengths above the per-type limit, offset + length that
 * overflows. Bounds against registrations are checked later, by the agent.
 */
#ifndef KVRT_XFER_WIRE_H
#define KVRT_XFER_WIRE_H

#include <stdint.h>

#include "kvrt/status.h"

#define KVRT_XFER_WIRE_HEADER_BYTES 40
#define KVRT_XFER_WIRE_MAGIC 0x3158564bu /* "KVX1" little-endian */
/* Largest data payload of one frame; larger operations are split. Small
 * enough that a receiver stages a whole frame and checks its tag before it
 * acts on any of it. */
#define KVRT_XFER_WIRE_FRAME_MAX (256u << 10)
/* Largest message (MSG / MSG_REPLY) payload. */
#define KVRT_XFER_WIRE_MSG_MAX 65536u

typedef enum kvrt_xfer_wire_type {
    KVRT_XFER_WIRE_WRITE = 1,     /* payload goes to region+offset; ACK answers */
    KVRT_XFER_WIRE_READ_REQ = 2,  /* asks for region+offset, length bytes */
    KVRT_XFER_WIRE_READ_RESP = 3, /* status, then length bytes when status 0 */
    KVRT_XFER_WIRE_ACK = 4,       /* status of a WRITE */
    KVRT_XFER_WIRE_MSG = 5,       /* region = message type; payload */
    KVRT_XFER_WIRE_MSG_REPLY = 6  /* status and reply payload */
} kvrt_xfer_wire_type_t;

typedef struct kvrt_xfer_wire_header {
    uint8_t type;
    uint32_t region;
    int32_t status;
    uint64_t tag;
    uint64_t offset;
    uint64_t length;
} kvrt_xfer_wire_header_t;

void kvrt_xfer_wire_encode(const kvrt_xfer_wire_header_t *h,
                           uint8_t out[KVRT_XFER_WIRE_HEADER_BYTES]);

/*
 * Parses `bytes` bytes at `in` into *h (written only on success).
 * Errors: KVRT_ERR_PROTOCOL (short input or any rule above broken).
 */
kvrt_status_t kvrt_xfer_wire_parse(const uint8_t *in, uint64_t bytes,
                                   kvrt_xfer_wire_header_t *h);

/* Payload bytes that follow a parsed header. */
static inline uint64_t kvrt_xfer_wire_payload(const kvrt_xfer_wire_header_t *h)
{
    switch (h->type) {
    case KVRT_XFER_WIRE_WRITE:
    case KVRT_XFER_WIRE_MSG:
    case KVRT_XFER_WIRE_MSG_REPLY:
        return h->length;
    case KVRT_XFER_WIRE_READ_RESP:
        return h->status == 0 ? h->length : 0;
    default:
        return 0;
    }
}

#endif /* KVRT_XFER_WIRE_H */

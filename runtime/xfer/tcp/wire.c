/*
 * wire.c - frame header encoding and validation (see wire.h).
 */
#include "wire.h"
#include "core/endian.h"

#include <string.h>

void kvrt_xfer_wire_encode(const kvrt_xfer_wire_header_t *h,
                           uint8_t out[KVRT_XFER_WIRE_HEADER_BYTES])
{
    kvrt_store_le32(out, KVRT_XFER_WIRE_MAGIC);
    out[4] = h->type;
    out[5] = 0;
    out[6] = 0;
    out[7] = 0;
    kvrt_store_le32(out + 8, h->region);
    kvrt_store_le32(out + 12, (uint32_t)h->status);
    kvrt_store_le64(out + 16, h->tag);
    kvrt_store_le64(out + 24, h->offset);
    kvrt_store_le64(out + 32, h->length);
}

kvrt_status_t kvrt_xfer_wire_parse(const uint8_t *in, uint64_t bytes,
                                   kvrt_xfer_wire_header_t *h)
{
    if (!in || bytes < KVRT_XFER_WIRE_HEADER_BYTES)
        return KVRT_ERR_PROTOCOL;
    if (kvrt_load_le32(in) != KVRT_XFER_WIRE_MAGIC || in[5] != 0 || in[6] != 0 || in[7] != 0)
        return KVRT_ERR_PROTOCOL;
    kvrt_xfer_wire_header_t v = {
        .type = in[4],
        .region = kvrt_load_le32(in + 8),
        .status = (int32_t)kvrt_load_le32(in + 12),
        .tag = kvrt_load_le64(in + 16),
        .offset = kvrt_load_le64(in + 24),
        .length = kvrt_load_le64(in + 32),
    };
    /* offset + length must not wrap, whatever the type. */
    if (v.offset + v.length < v.offset)
        return KVRT_ERR_PROTOCOL;
    switch (v.type) {
    case KVRT_XFER_WIRE_WRITE:
    case KVRT_XFER_WIRE_READ_REQ:
        if (v.status != 0 || v.length == 0 || v.length > KVRT_XFER_WIRE_FRAME_MAX)
            return KVRT_ERR_PROTOCOL;
        break;
    case KVRT_XFER_WIRE_READ_RESP:
        /* An error answer carries no data; a success carries it all. */
        if (v.status > 0 || v.region != 0 || v.offset != 0 ||
            v.length > KVRT_XFER_WIRE_FRAME_MAX || (v.status != 0 && v.length != 0))
            return KVRT_ERR_PROTOCOL;
        break;
    case KVRT_XFER_WIRE_ACK:
        if (v.status > 0 || v.region != 0 || v.offset != 0 || v.length != 0)
            return KVRT_ERR_PROTOCOL;
        break;
    case KVRT_XFER_WIRE_MSG:
        if (v.status != 0 || v.offset != 0 || v.length > KVRT_XFER_WIRE_MSG_MAX)
            return KVRT_ERR_PROTOCOL;
        break;
    case KVRT_XFER_WIRE_MSG_REPLY:
        if (v.status > 0 || v.region != 0 || v.offset != 0 ||
            v.length > KVRT_XFER_WIRE_MSG_MAX)
            return KVRT_ERR_PROTOCOL;
        break;
    default:
        return KVRT_ERR_PROTOCOL;
    }
    *h = v;
    return KVRT_OK;
}

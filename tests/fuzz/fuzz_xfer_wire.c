/*
 * fuzz_xfer_wire.c - libFuzzer target for the transfer engine's frame
 * header parser, the first code every byte from a peer meets. Beyond "no
 * crash, no sanitizer report" it checks what the parser promises: a header
 * it accepts re-encodes to the same bytes, has a known type, lengths within
 * the per-type limits and an offset + length that does not wrap.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xfer/tcp/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvrt_xfer_wire_header_t h;
    if (kvrt_xfer_wire_parse(data, size, &h) != KVRT_OK)
        return 0;
    uint8_t again[KVRT_XFER_WIRE_HEADER_BYTES];
    kvrt_xfer_wire_encode(&h, again);
    if (memcmp(again, data, sizeof(again)) != 0)
        abort();
    if (h.type < KVRT_XFER_WIRE_WRITE || h.type > KVRT_XFER_WIRE_MSG_REPLY)
        abort();
    if (h.offset + h.length < h.offset)
        abort();
    uint64_t payload = kvrt_xfer_wire_payload(&h);
    uint64_t limit = h.type >= KVRT_XFER_WIRE_MSG ? KVRT_XFER_WIRE_MSG_MAX : KVRT_XFER_WIRE_FRAME_MAX;
    if (payload > limit)
        abort();
    if ((h.type == KVRT_XFER_WIRE_WRITE || h.type == KVRT_XFER_WIRE_READ_REQ) &&
        (h.length == 0 || h.status != 0))
        abort();
    return 0;
}

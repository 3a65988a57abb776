/*
 * endian.h - little-endian loads and stores of 16, 32 and 64-bit integers
 * at any alignment. Every byte kvrt puts on the wire, into a region
 * descriptor or into a hash input is little endian, whatever the host.
 * Internal: nothing here is ABI.
 *
 * memcpy makes the access alignment-safe and compiles to one load or store;
 * on a big-endian host a byte swap follows (one instruction). Include it as
 * "core/endian.h": runtime/core itself must never be an include directory,
 * or this file would shadow the C library's <endian.h>.
 */
#ifndef KVRT_CORE_ENDIAN_H
#define KVRT_CORE_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define KVRT_BIG_ENDIAN 1
#define KVRT_LE16(v) __builtin_bswap16(v)
#define KVRT_LE32(v) __builtin_bswap32(v)
#define KVRT_LE64(v) __builtin_bswap64(v)
#else
#define KVRT_BIG_ENDIAN 0
#define KVRT_LE16(v) (v)
#define KVRT_LE32(v) (v)
#define KVRT_LE64(v) (v)
#endif

static inline uint16_t kvrt_load_le16(const void *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return KVRT_LE16(v);
}

static inline uint32_t kvrt_load_le32(const void *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return KVRT_LE32(v);
}

static inline uint64_t kvrt_load_le64(const void *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return KVRT_LE64(v);
}

static inline void kvrt_store_le16(void *p, uint16_t v)
{
    v = KVRT_LE16(v);
    memcpy(p, &v, sizeof(v));
}

static inline void kvrt_store_le32(void *p, uint32_t v)
{
    v = KVRT_LE32(v);
    memcpy(p, &v, sizeof(v));
}

static inline void kvrt_store_le64(void *p, uint64_t v)
{
    v = KVRT_LE64(v);
    memcpy(p, &v, sizeof(v));
}

#endif /* KVRT_CORE_ENDIAN_H */

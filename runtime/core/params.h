/*
 * params.h - reading the optional fields of kvrt's params structs, whose
 * field_mask says which fields the caller set, and writing the output
 * structs a caller sized (docs/abi.md). One place for the rule "the
 * caller's value when its bit is set, else the default", for the defaults
 * of the layout, which four subsystems resolve (the pool, the block-hash
 * fingerprint, transfer descriptors, the kernels), and for the copy of a
 * sized output. Internal: nothing here is ABI.
 */
#ifndef KVRT_CORE_PARAMS_H
#define KVRT_CORE_PARAMS_H

#include <stddef.h>
#include <string.h>

#include "kvrt/layout.h"

/* params->field when `bit` is set in params->field_mask, else fallback. */
#define KVRT_PARAM_OR(params, bit, field, fallback)                              \
    (((params)->field_mask & (bit)) ? (params)->field : (fallback))

/* The layout's optional fields and their defaults (kvrt/layout.h). */
#define KVRT_LAYOUT_OPTIONAL_FIELDS                                              \
    (KVRT_LAYOUT_FIELD_DTYPE | KVRT_LAYOUT_FIELD_FORMAT | KVRT_LAYOUT_FIELD_ORDER)
#define KVRT_LAYOUT_DEFAULT_DTYPE KVRT_DTYPE_FP16
#define KVRT_LAYOUT_DEFAULT_FORMAT KVRT_KV_SEPARATE
#define KVRT_LAYOUT_DEFAULT_ORDER KVRT_ORDER_LAYER_MAJOR

/*
 * The layout with every optional field resolved to the caller's value or
 * its default and every optional bit set, so that a zeroed mask and the
 * explicit defaults describe one layout. Bits outside the known ones are
 * kept: validation still sees them.
 */
static inline kvrt_kv_layout_t kvrt_layout_resolved(const kvrt_kv_layout_t *layout)
{
    kvrt_kv_layout_t r = *layout;
    r.dtype = KVRT_PARAM_OR(layout, KVRT_LAYOUT_FIELD_DTYPE, dtype, KVRT_LAYOUT_DEFAULT_DTYPE);
    r.format = KVRT_PARAM_OR(layout, KVRT_LAYOUT_FIELD_FORMAT, format,
                             KVRT_LAYOUT_DEFAULT_FORMAT);
    r.order = KVRT_PARAM_OR(layout, KVRT_LAYOUT_FIELD_ORDER, order, KVRT_LAYOUT_DEFAULT_ORDER);
    r.field_mask |= KVRT_LAYOUT_OPTIONAL_FIELDS;
    return r;
}

/* Size of an output struct in release 1.0: the end of its last 1.0 field
 * (fields added later come after it). Callers passing less are refused. */
#define KVRT_OUTPUT_SIZE_1_0(type, last_field)                                   \
    (offsetof(type, last_field) + sizeof(((type *)0)->last_field))

/* Writes an output struct of the caller's size: the first out_size bytes of
 * value, and zeroes where the caller's struct is longer than the library's
 * (a binding newer than the library). */
static inline void kvrt_output_copy(void *out, size_t out_size, const void *value,
                                    size_t value_size)
{
    memcpy(out, value, out_size < value_size ? out_size : value_size);
    if (out_size > value_size)
        memset((char *)out + value_size, 0, out_size - value_size);
}

#endif /* KVRT_CORE_PARAMS_H */

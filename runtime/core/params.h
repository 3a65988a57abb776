/*
 * params.h - reading the optional fields of kvrt's params structs, whose
 * field_mask says which fields the caller set (docs/abi.md). One place for
 * the rule "the caller's value when its bit is set, else the default", and
 * for the defaults of the layout, which four subsystems resolve (the pool,
 * the block-hash fingerprint, transfer descriptors, the kernels).
 * Internal: nothing here is ABI.
 */
#ifndef KVRT_CORE_PARAMS_H
#define KVRT_CORE_PARAMS_H

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

#endif /* KVRT_CORE_PARAMS_H */

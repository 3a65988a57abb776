/*
 * ctl.c - kvrt_ctl(): one size-checked entry point over a dotted namespace,
 * after jemalloc's mallctl. Subsystems register tables of leaf nodes under a
 * prefix; lookups are a linear scan, which is fine for an introspection path
 * that is never on the engine's step.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "ctl_registry.h"

kvrt_status_t kvrt_ctl_register(kvrt_ctx_t *ctx, const char *prefix,
                                const kvrt_ctl_node_t *nodes, size_t count, void *obj)
{
    kvrt_ctl_registry_t *reg = kvrt_ctx_ctl_registry(ctx);
    if (reg->count == reg->capacity) {
        size_t capacity = reg->capacity ? reg->capacity * 2 : 16;
        kvrt_ctl_entry_t *grown = realloc(reg->entries, capacity * sizeof(*grown));
        if (!grown)
            return KVRT_ERR_NO_MEMORY;
        reg->entries = grown;
        reg->capacity = capacity;
    }
    kvrt_ctl_entry_t *e = &reg->entries[reg->count++];
    snprintf(e->prefix, sizeof(e->prefix), "%s", prefix);
    e->nodes = nodes;
    e->count = count;
    e->obj = obj;
    return KVRT_OK;
}

void kvrt_ctl_unregister(kvrt_ctx_t *ctx, void *obj)
{
    kvrt_ctl_registry_t *reg = kvrt_ctx_ctl_registry(ctx);
    size_t kept = 0;
    for (size_t i = 0; i < reg->count; i++)
        if (reg->entries[i].obj != obj)
            reg->entries[kept++] = reg->entries[i];
    reg->count = kept;
}

void kvrt_ctl_registry_free(kvrt_ctl_registry_t *reg)
{
    free(reg->entries);
    free(reg->names);
    *reg = (kvrt_ctl_registry_t){0};
}

static size_t type_size(kvrt_ctl_type_t type)
{
    switch (type) {
    case KVRT_CTL_U64:
        return sizeof(uint64_t);
    case KVRT_CTL_DOUBLE:
        return sizeof(double);
    case KVRT_CTL_STRING:
        return sizeof(const char *);
    }
    return 0;
}

static const kvrt_ctl_node_t *find_node(kvrt_ctl_registry_t *reg, const char *name,
                                        void **obj_out)
{
    for (size_t i = 0; i < reg->count; i++) {
        const kvrt_ctl_entry_t *e = &reg->entries[i];
        size_t plen = strlen(e->prefix);
        if (strncmp(name, e->prefix, plen) != 0 || name[plen] != '.')
            continue;
        const char *leaf = name + plen + 1;
        for (size_t j = 0; j < e->count; j++) {
            if (strcmp(leaf, e->nodes[j].name) == 0) {
                *obj_out = e->obj;
                return &e->nodes[j];
            }
        }
    }
    return NULL;
}

/* Rebuilds the "ctl.names" text: every node, one per line, with its type. */
static kvrt_status_t build_names(kvrt_ctl_registry_t *reg)
{
    static const char *const type_names[] = {"u64", "double", "string"};
    size_t bytes = 64;
    for (size_t i = 0; i < reg->count; i++)
        for (size_t j = 0; j < reg->entries[i].count; j++)
            bytes += strlen(reg->entries[i].prefix) + strlen(reg->entries[i].nodes[j].name) + 16;
    char *text = malloc(bytes);
    if (!text)
        return KVRT_ERR_NO_MEMORY;
    size_t n = (size_t)snprintf(text, bytes, "ctl.names string ro\n");
    for (size_t i = 0; i < reg->count; i++) {
        const kvrt_ctl_entry_t *e = &reg->entries[i];
        for (size_t j = 0; j < e->count; j++)
            n += (size_t)snprintf(text + n, bytes - n, "%s.%s %s %s\n", e->prefix,
                                  e->nodes[j].name, type_names[e->nodes[j].type],
                                  e->nodes[j].set ? "rw" : "ro");
    }
    free(reg->names);
    reg->names = text;
    return KVRT_OK;
}

KVRT_EXPORT kvrt_status_t kvrt_ctl(kvrt_ctx_t *ctx, const char *name, void *old_value,
                                   size_t *old_len, const void *new_value, size_t new_len)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if (!name)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "name is NULL");
    if (old_value && !old_len)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "%s: old_value without old_len", name);
    kvrt_ctl_registry_t *reg = kvrt_ctx_ctl_registry(ctx);
    if (strcmp(name, "ctl.names") == 0) {
        if (new_value)
            return kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED, "ctl.names is read-only");
        if (!old_value)
            return KVRT_OK;
        if (*old_len != sizeof(const char *)) {
            *old_len = sizeof(const char *);
            return kvrt_fail(ctx, KVRT_ERR_BUFFER_TOO_SMALL,
                             "ctl.names is a const char *; pass its size");
        }
        kvrt_status_t status = build_names(reg);
        if (status != KVRT_OK)
            return kvrt_fail(ctx, status, "ctl.names: out of memory");
        memcpy(old_value, &reg->names, sizeof(const char *));
        return KVRT_OK;
    }
    void *obj = NULL;
    const kvrt_ctl_node_t *node = find_node(reg, name, &obj);
    if (!node)
        return kvrt_fail(ctx, KVRT_ERR_NOT_FOUND, "no ctl node named \"%s\"", name);
    size_t size = type_size(node->type);
    if (old_value && *old_len != size) {
        *old_len = size;
        return kvrt_fail(ctx, KVRT_ERR_BUFFER_TOO_SMALL, "%s is %zu bytes", name, size);
    }
    if (new_value) {
        if (!node->set)
            return kvrt_fail(ctx, KVRT_ERR_UNSUPPORTED, "%s is read-only", name);
        if (new_len != size)
            return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "%s takes %zu bytes, not %zu", name,
                             size, new_len);
    }
    /* Read first, write second, copy out last: a refused write leaves the
     * caller's old_value untouched too. */
    kvrt_ctl_value_t old = {0};
    if (old_value)
        node->get(obj, &old);
    if (new_value) {
        kvrt_ctl_value_t value = {0};
        memcpy(&value, new_value, size);
        kvrt_status_t status = node->set(obj, &value);
        if (status != KVRT_OK)
            return status;
    }
    if (old_value)
        memcpy(old_value, &old, size);
    return KVRT_OK;
}

static kvrt_status_t get_typed(kvrt_ctx_t *ctx, const char *name, void *out, size_t size,
                               kvrt_ctl_type_t type)
{
    if (!ctx || !out)
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG, "NULL argument");
    void *obj = NULL;
    const kvrt_ctl_node_t *node = name ? find_node(kvrt_ctx_ctl_registry(ctx), name, &obj)
                                       : NULL;
    if (node && node->type != type)
        return kvrt_fail(ctx, KVRT_ERR_BUFFER_TOO_SMALL, "%s is not of the requested type",
                         name);
    size_t len = size;
    return kvrt_ctl(ctx, name, out, &len, NULL, 0);
}

KVRT_EXPORT kvrt_status_t kvrt_ctl_get_u64(kvrt_ctx_t *ctx, const char *name,
                                           uint64_t *value_out)
{
    return get_typed(ctx, name, value_out, sizeof(*value_out), KVRT_CTL_U64);
}

KVRT_EXPORT kvrt_status_t kvrt_ctl_get_double(kvrt_ctx_t *ctx, const char *name,
                                              double *value_out)
{
    return get_typed(ctx, name, value_out, sizeof(*value_out), KVRT_CTL_DOUBLE);
}

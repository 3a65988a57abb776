/*
 * ctl_registry.h - storage behind kvrt_ctl(): registered node tables keyed by
 * prefix. Internal to runtime/core.
 */
#ifndef KVRT_CTL_REGISTRY_H
#define KVRT_CTL_REGISTRY_H

#include "core.h"

typedef struct kvrt_ctl_entry {
    char prefix[48];
    const kvrt_ctl_node_t *nodes;
    size_t count;
    void *obj;
} kvrt_ctl_entry_t;

typedef struct kvrt_ctl_registry {
    kvrt_ctl_entry_t *entries;
    size_t count;
    size_t capacity;
    char *names;        /* "ctl.names" text, rebuilt on each read */
} kvrt_ctl_registry_t;

kvrt_ctl_registry_t *kvrt_ctx_ctl_registry(kvrt_ctx_t *ctx);
kvrt_status_t kvrt_ctx_register_core_ctl(kvrt_ctx_t *ctx);
void kvrt_ctl_registry_free(kvrt_ctl_registry_t *registry);

#endif /* KVRT_CTL_REGISTRY_H */

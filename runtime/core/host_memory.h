/*
 * host_memory.h - the context's host arena: kvrt's own 2 MiB-aligned regions (host_regions.c).
 * Internal to runtime/core; other subsystems use kvrt_host_alloc() from
 * core.h.
 */
#ifndef KVRT_HOST_MEMORY_H
#define KVRT_HOST_MEMORY_H

#include <stdint.h>

#include "core.h"

typedef struct kvrt_host_arena kvrt_host_arena_t;

kvrt_status_t kvrt_host_arena_create(kvrt_ctx_t *ctx, uint64_t region_bytes,
                                     kvrt_hugepage_mode_t mode,
                                     kvrt_host_arena_t **arena_out);
void kvrt_host_arena_destroy(kvrt_host_arena_t *arena);

void *kvrt_host_arena_alloc(kvrt_host_arena_t *arena, size_t bytes);
void kvrt_host_arena_free(kvrt_host_arena_t *arena, void *ptr);
bool kvrt_host_arena_region_of(const kvrt_host_arena_t *arena, const void *ptr,
                               size_t bytes, kvrt_host_region_t *region_out);
void kvrt_host_arena_usage(const kvrt_host_arena_t *arena, uint32_t *regions_out,
                           uint64_t *bytes_out);

#endif /* KVRT_HOST_MEMORY_H */

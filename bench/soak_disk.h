/*
 * soak_disk.h - each kvrt-soak node's SSD-tier directory: as root a small
 * tmpfs of its own (so "disk full" is a real ENOSPC on that node only),
 * else a plain directory under /tmp.
 */
#ifndef KVRT_BENCH_SOAK_DISK_H
#define KVRT_BENCH_SOAK_DISK_H

#include <stdint.h>

#include "soak_proto.h"

typedef struct soak_disk {
    char base[64];
    char dir[SOAK_MAX_NODES][96];
    uint32_t nodes;
    int mounted;             /* tmpfs per node: diskfull is available */
} soak_disk_t;

/* Makes the directories (and mounts, when mount_tmpfs). NULL or why not. */
const char *soak_disk_up(soak_disk_t *d, uint32_t nodes, int mount_tmpfs, uint32_t mib);

/* Fills node's file system to the last byte (returns 0), or frees it. */
int soak_disk_fill(const soak_disk_t *d, uint32_t node);
int soak_disk_free(const soak_disk_t *d, uint32_t node);

/* Unmounts and removes everything soak_disk_up made. Idempotent. */
void soak_disk_down(soak_disk_t *d);

#endif /* KVRT_BENCH_SOAK_DISK_H */

/*
 * soak_disk.c - the nodes' SSD-tier directories (soak_disk.h).
 */
#include "soak_disk.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "soak_netns.h"

const char *soak_disk_up(soak_disk_t *d, uint32_t nodes, int mount_tmpfs, uint32_t mib)
{
    *d = (soak_disk_t){.nodes = 0};
    snprintf(d->base, sizeof(d->base), "/tmp/kvrt-soak-%d", (int)getpid());
    if (mkdir(d->base, 0700) != 0)
        return "cannot make the SSD directories";
    for (uint32_t i = 0; i < nodes; i++) {
        snprintf(d->dir[i], sizeof(d->dir[i]), "%s/n%u", d->base, i);
        if (mkdir(d->dir[i], 0700) != 0) {
            soak_disk_down(d);
            return "cannot make the SSD directories";
        }
        d->nodes = i + 1;
    }
    if (mount_tmpfs) {
        d->mounted = 1;
        for (uint32_t i = 0; i < nodes; i++)
            if (soak_sh("mount -t tmpfs -o size=%um,mode=0700 kvrt-soak %s", mib, d->dir[i]) !=
                0) {
                for (uint32_t k = 0; k < i; k++)
                    soak_sh("umount %s", d->dir[k]);
                d->mounted = 0;
                break;
            }
    }
    return NULL;
}

int soak_disk_fill(const soak_disk_t *d, uint32_t node)
{
    if (!d->mounted || node >= d->nodes)
        return -1;
    /* dd stops at ENOSPC (status 1): the file system is then full. */
    soak_sh("dd if=/dev/zero of=%s/filler bs=64k", d->dir[node]);
    struct stat st;
    char path[128];
    snprintf(path, sizeof(path), "%s/filler", d->dir[node]);
    return stat(path, &st) == 0 ? 0 : -1;
}

int soak_disk_free(const soak_disk_t *d, uint32_t node)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/filler", d->dir[node]);
    return unlink(path);
}

void soak_disk_down(soak_disk_t *d)
{
    if (!d->base[0])
        return;
    for (uint32_t i = 0; i < d->nodes; i++)
        if (d->mounted)
            soak_sh("umount %s", d->dir[i]);
    soak_sh("rm -rf %s", d->base);
    d->base[0] = '\0';
    d->nodes = 0;
}

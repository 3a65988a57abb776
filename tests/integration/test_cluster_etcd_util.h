/*
 * test_cluster_etcd_util.h - a real etcd for tests: started on 127.0.0.1
 * with free ports and a temporary data directory, killed and restarted by
 * pid, and removed at the end. Fork child nodes before the test starts
 * threads.
 */
#ifndef KVRT_TEST_CLUSTER_ETCD_UTIL_H
#define KVRT_TEST_CLUSTER_ETCD_UTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#include "test_helpers.h"

typedef struct test_etcd {
    pid_t pid;
    int client_port, peer_port;
    char dir[64];
    char endpoint[64];
} test_etcd_t;

static inline int test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
              getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

static inline double test_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static inline int test_etcd_available(void) { return access("/usr/bin/etcd", X_OK) == 0; }

/* Starts (or restarts, same ports and data) etcd. */
static inline void test_etcd_start(test_etcd_t *e)
{
    if (e->dir[0] == '\0') {
        snprintf(e->dir, sizeof(e->dir), "/tmp/kvrt-etcd-XXXXXX");
        cr_assert_not_null(mkdtemp(e->dir));
        e->client_port = test_free_port();
        e->peer_port = test_free_port();
        snprintf(e->endpoint, sizeof(e->endpoint), "http://127.0.0.1:%d", e->client_port);
    }
    char data[96], client[64], peer[64], cluster[96], log[96];
    snprintf(data, sizeof(data), "%s/data", e->dir);
    snprintf(log, sizeof(log), "%s/log", e->dir);
    snprintf(client, sizeof(client), "http://127.0.0.1:%d", e->client_port);
    snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", e->peer_port);
    snprintf(cluster, sizeof(cluster), "default=%s", peer);
    /* posix_spawn, not fork: the restart happens while the test has
     * threads, and a forked child of a threaded process may only exec
     * anyway (posix_spawn runs no atfork handlers). */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    char *const argv[] = {"etcd", "--name", "default", "--data-dir", data,
                          "--listen-client-urls", client, "--advertise-client-urls", client,
                          "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                          "--initial-cluster", cluster, NULL};
    pid_t pid = 0;
    int rc = posix_spawn(&pid, "/usr/bin/etcd", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "posix_spawn etcd: %d", rc);
    e->pid = pid;
}

static inline void test_etcd_kill(test_etcd_t *e)
{
    if (e->pid > 0) {
        kill(e->pid, SIGKILL);
        waitpid(e->pid, NULL, 0);
    }
    e->pid = 0;
}

static inline void test_etcd_remove(test_etcd_t *e)
{
    test_etcd_kill(e);
    if (e->dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
        cr_assert_eq(system(cmd), 0);
    }
}

#endif /* KVRT_TEST_CLUSTER_ETCD_UTIL_H */

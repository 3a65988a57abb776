/*
 * metrics_http.c - GET /metrics on 127.0.0.1, one connection at a time.
 */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_MAX_BYTES 8192
#define REQUEST_TIMEOUT_MS 2000

struct metrics_http {
    int listen_fd;
    int stop_pipe[2]; /* written once by metrics_http_stop() */
    uint16_t port;
    pthread_t thread;
    pthread_mutex_t lock; /* guards text and length */
    char *text;
    size_t length;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void send_all(int fd, const char *data, size_t length)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the scraper went away; nothing to do */
        data += n;
        length -= (size_t)n;
    }
}

/* Reads until the end of the request head, the size bound or the deadline;
 * returns the bytes read, -1 on failure. */
static ssize_t read_head(int fd, char *buf, size_t size)
{
    size_t have = 0;
    int64_t deadline = now_ms() + REQUEST_TIMEOUT_MS;
    while (have + 1 < size) {
        int64_t left = deadline - now_ms();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            return -1;
        ssize_t n = recv(fd, buf + have, size - 1 - have, 0);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        buf[have] = '\0';
        if (strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
            return (ssize_t)have;
    }
    return -1;
}

static void serve_one(metrics_http_t *s, int fd)
{
    char head[REQUEST_MAX_BYTES];
    if (read_head(fd, head, sizeof(head)) < 0)
        return;
    bool metrics = strncmp(head, "GET /metrics ", 13) == 0 ||
                   strncmp(head, "GET /metrics?", 13) == 0;
    if (!metrics) {
        static const char not_found[] = "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n"
                                        "Content-Length: 10\r\nConnection: close\r\n\r\n"
                                        "not found\n";
        send_all(fd, not_found, sizeof(not_found) - 1);
        return;
    }
    pthread_mutex_lock(&s->lock);
    char header[256];
    int n = snprintf(header, sizeof(header),
                     "HTTP/1.0 200 OK\r\n"
                     "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     s->length);
    send_all(fd, header, (size_t)n);
    send_all(fd, s->text ? s->text : "", s->length);
    pthread_mutex_unlock(&s->lock);
}

static void *serve(void *arg)
{
    metrics_http_t *s = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = s->listen_fd, .events = POLLIN},
                              {.fd = s->stop_pipe[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (p[1].revents)
            return NULL;
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        serve_one(s, fd);
        close(fd);
    }
}

int metrics_http_start(uint16_t port, metrics_http_t **server_out, char *error,
                       size_t error_size)
{
    metrics_http_t *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(error, error_size, "out of memory");
        return -1;
    }
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->stop_pipe[0] = s->stop_pipe[1] = -1;
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    if (s->listen_fd < 0 ||
        setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(s->listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(s->listen_fd, 16) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&addr, &len) != 0 ||
        pipe(s->stop_pipe) != 0) {
        snprintf(error, error_size, "cannot listen on 127.0.0.1:%u: %s", port,
                 strerror(errno));
        goto fail;
    }
    s->port = ntohs(addr.sin_port);
    pthread_mutex_init(&s->lock, NULL);
    if (pthread_create(&s->thread, NULL, serve, s) != 0) {
        snprintf(error, error_size, "cannot start the metrics thread");
        pthread_mutex_destroy(&s->lock);
        goto fail;
    }
    *server_out = s;
    return 0;
fail:
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->stop_pipe[0] >= 0) {
        close(s->stop_pipe[0]);
        close(s->stop_pipe[1]);
    }
    free(s);
    return -1;
}

uint16_t metrics_http_port(const metrics_http_t *server) { return server->port; }

int metrics_http_publish(metrics_http_t *s, const char *text, size_t length)
{
    char *copy = malloc(length + 1);
    if (!copy)
        return -1;
    memcpy(copy, text, length);
    copy[length] = '\0';
    pthread_mutex_lock(&s->lock);
    char *old = s->text;
    s->text = copy;
    s->length = length;
    pthread_mutex_unlock(&s->lock);
    free(old);
    return 0;
}

void metrics_http_stop(metrics_http_t *s)
{
    if (!s)
        return;
    char byte = 1;
    while (write(s->stop_pipe[1], &byte, 1) < 0 && errno == EINTR) {
    }
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    pthread_mutex_destroy(&s->lock);
    free(s->text);
    free(s);
}

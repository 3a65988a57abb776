/*
 * metrics.c - kvrt_metrics_render(): the kvrt_ctl namespace in the
 * Prometheus text exposition format.
 *
 * Driven by the ctl registry, so every node a subsystem registers (with its
 * help text and counter/gauge kind from its node table) appears without a
 * second list to keep in step. Samples are collected first and then written
 * grouped by family, because the format requires one family's samples to be
 * contiguous and several objects (pool.0, pool.1) share a family.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "ctl_registry.h"
#include "kvrt/metrics.h"

#define KVRT_METRIC_NAME_BYTES 160

/* A growable text buffer; `failed` latches an allocation failure. */
typedef struct text {
    char *data;
    size_t length;
    size_t capacity;
    bool failed;
} text_t;

static void text_reserve(text_t *t, size_t more)
{
    if (t->failed || t->length + more + 1 <= t->capacity)
        return;
    size_t capacity = t->capacity ? t->capacity : 4096;
    while (capacity < t->length + more + 1)
        capacity *= 2;
    char *grown = realloc(t->data, capacity);
    if (!grown) {
        t->failed = true;
        return;
    }
    t->data = grown;
    t->capacity = capacity;
}

static void text_add(text_t *t, const char *s, size_t n)
{
    text_reserve(t, n);
    if (t->failed)
        return;
    memcpy(t->data + t->length, s, n);
    t->length += n;
    t->data[t->length] = '\0';
}

static void text_puts(text_t *t, const char *s) { text_add(t, s, strlen(s)); }

/* Label values escape backslash, quote and newline; HELP text backslash and
 * newline (the format's two escaping rules). */
static void text_escaped(text_t *t, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            text_puts(t, "\\\\");
        else if (*s == '\n')
            text_puts(t, "\\n");
        else if (*s == '"' && quote)
            text_puts(t, "\\\"");
        else
            text_add(t, s, 1);
    }
}

typedef struct sample {
    char name[KVRT_METRIC_NAME_BYTES];
    char labels[KVRT_METRIC_NAME_BYTES]; /* key="value",... from the prefix */
    const kvrt_ctl_node_t *node;
    const char *family; /* the prefix's family, for generic help text */
    void *obj;
    bool nanoseconds;   /* a "_ns" node, exported in seconds */
    bool written;
} sample_t;

/* Appends the metric-name form of s: [a-zA-Z0-9_] kept, anything else '_'. */
static size_t put_name(char *out, size_t at, size_t cap, const char *s, size_t n)
{
    for (size_t i = 0; i < n && at + 1 < cap; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  (c >= '0' && c <= '9') || c == '_';
        out[at++] = ok ? c : '_';
    }
    out[at < cap ? at : cap - 1] = '\0';
    return at;
}

static bool all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/*
 * Splits a registry prefix into a family and labels: numeric components
 * become labels keyed by the component before them ("pool.0" -> family
 * "pool", labels pool="0"; "ctx" -> family "ctx", no labels).
 */
static void split_prefix(const char *prefix, char *family, char *labels)
{
    size_t f = 0, l = 0;
    const char *previous = "index";
    size_t previous_len = 5;
    family[0] = labels[0] = '\0';
    for (const char *p = prefix; *p;) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (all_digits(p, n)) {
            if (l)
                l = put_name(labels, l, KVRT_METRIC_NAME_BYTES, ",", 1);
            l = put_name(labels, l, KVRT_METRIC_NAME_BYTES, previous, previous_len);
            l += (size_t)snprintf(labels + l, KVRT_METRIC_NAME_BYTES - l, "=\"%.*s\"",
                                  (int)n, p);
            if (l >= KVRT_METRIC_NAME_BYTES)
                l = KVRT_METRIC_NAME_BYTES - 1;
        } else {
            if (f)
                f = put_name(family, f, KVRT_METRIC_NAME_BYTES, "_", 1);
            f = put_name(family, f, KVRT_METRIC_NAME_BYTES, p, n);
            previous = p;
            previous_len = n;
        }
        p += n + (dot ? 1 : 0);
    }
}

static const char *type_word(const kvrt_ctl_node_t *node)
{
    if (node->type == KVRT_CTL_STRING)
        return "gauge";
    switch (node->metric) {
    case KVRT_CTL_METRIC_COUNTER:
        return "counter";
    case KVRT_CTL_METRIC_GAUGE:
        return "gauge";
    default:
        return "untyped";
    }
}

static size_t collect(kvrt_ctl_registry_t *reg, sample_t *samples, char (*families)[48])
{
    size_t n = 0;
    for (size_t i = 0; i < reg->count; i++) {
        const kvrt_ctl_entry_t *e = &reg->entries[i];
        char family[KVRT_METRIC_NAME_BYTES], labels[KVRT_METRIC_NAME_BYTES];
        split_prefix(e->prefix, family, labels);
        snprintf(families[i], sizeof(families[i]), "%s", family);
        for (size_t j = 0; j < e->count; j++) {
            const kvrt_ctl_node_t *node = &e->nodes[j];
            if (node->metric == KVRT_CTL_METRIC_NONE)
                continue;
            sample_t *s = &samples[n++];
            *s = (sample_t){.node = node, .obj = e->obj, .family = families[i]};
            size_t at = put_name(s->name, 0, sizeof(s->name), "kvrt_", 5);
            at = put_name(s->name, at, sizeof(s->name), family, strlen(family));
            at = put_name(s->name, at, sizeof(s->name), "_", 1);
            size_t leaf = strlen(node->name);
            s->nanoseconds = node->type == KVRT_CTL_U64 && leaf > 3 &&
                             strcmp(node->name + leaf - 3, "_ns") == 0;
            at = put_name(s->name, at, sizeof(s->name), node->name,
                          s->nanoseconds ? leaf - 3 : leaf);
            if (s->nanoseconds) /* Prometheus names carry base units */
                at = put_name(s->name, at, sizeof(s->name), "_seconds", 8);
            if (node->type == KVRT_CTL_STRING)
                put_name(s->name, at, sizeof(s->name), "_info", 5);
            else if (node->metric == KVRT_CTL_METRIC_COUNTER)
                put_name(s->name, at, sizeof(s->name), "_total", 6);
            memcpy(s->labels, labels, sizeof(labels));
        }
    }
    return n;
}

static void write_value(text_t *t, const sample_t *s)
{
    kvrt_ctl_value_t v = {0};
    s->node->get(s->obj, &v);
    char number[64];
    text_puts(t, s->name);
    if (s->node->type == KVRT_CTL_STRING) {
        text_puts(t, "{");
        if (s->labels[0]) {
            text_puts(t, s->labels);
            text_puts(t, ",");
        }
        text_puts(t, "value=\"");
        text_escaped(t, v.str ? v.str : "", true);
        text_puts(t, "\"} 1\n");
        return;
    }
    if (s->labels[0]) {
        text_puts(t, "{");
        text_puts(t, s->labels);
        text_puts(t, "}");
    }
    if (s->nanoseconds)
        snprintf(number, sizeof(number), " %.9f\n", (double)v.u64 / 1e9);
    else if (s->node->type == KVRT_CTL_U64)
        snprintf(number, sizeof(number), " %" PRIu64 "\n", v.u64);
    else if (isnan(v.f64))
        snprintf(number, sizeof(number), " NaN\n");
    else if (isinf(v.f64))
        snprintf(number, sizeof(number), " %sInf\n", v.f64 > 0 ? "+" : "-");
    else
        snprintf(number, sizeof(number), " %.17g\n", v.f64);
    text_puts(t, number);
}

static void write_family(text_t *t, sample_t *samples, size_t count, size_t first)
{
    const sample_t *head = &samples[first];
    text_puts(t, "# HELP ");
    text_puts(t, head->name);
    text_puts(t, " ");
    if (head->node->help) {
        text_escaped(t, head->node->help, false);
    } else {
        text_puts(t, "kvrt_ctl node ");
        text_puts(t, head->family);
        text_puts(t, head->labels[0] ? ".<n>." : ".");
        text_escaped(t, head->node->name, false);
        text_puts(t, " (no description registered).");
    }
    text_puts(t, "\n# TYPE ");
    text_puts(t, head->name);
    text_puts(t, " ");
    text_puts(t, type_word(head->node));
    text_puts(t, "\n");
    for (size_t i = first; i < count; i++) {
        if (!samples[i].written && strcmp(samples[i].name, head->name) == 0) {
            write_value(t, &samples[i]);
            samples[i].written = true;
        }
    }
}

KVRT_EXPORT kvrt_status_t kvrt_metrics_render(kvrt_ctx_t *ctx, char *text_out,
                                              size_t capacity, size_t *length_out)
{
    if (!ctx)
        return KVRT_ERR_INVALID_ARG;
    if (!length_out || (!text_out && capacity > 0))
        return kvrt_fail(ctx, KVRT_ERR_INVALID_ARG,
                         "length_out NULL, or text_out NULL with capacity %zu", capacity);
    kvrt_ctl_registry_t *reg = kvrt_ctx_ctl_registry(ctx);
    size_t nodes = 0;
    for (size_t i = 0; i < reg->count; i++)
        nodes += reg->entries[i].count;
    sample_t *samples = calloc(nodes ? nodes : 1, sizeof(*samples));
    char(*families)[48] = calloc(reg->count ? reg->count : 1, sizeof(*families));
    text_t t = {0};
    if (!samples || !families) {
        t.failed = true;
    } else {
        size_t count = collect(reg, samples, families);
        text_reserve(&t, 0);
        for (size_t i = 0; i < count; i++)
            if (!samples[i].written)
                write_family(&t, samples, count, i);
    }
    free(samples);
    free(families);
    if (t.failed) {
        free(t.data);
        return kvrt_fail(ctx, KVRT_ERR_NO_MEMORY, "out of memory rendering metrics");
    }
    kvrt_status_t status = KVRT_OK;
    if (capacity <= t.length)
        status = kvrt_fail(ctx, KVRT_ERR_BUFFER_TOO_SMALL,
                           "metrics text is %zu bytes plus the NUL; capacity %zu", t.length,
                           capacity);
    else
        memcpy(text_out, t.data, t.length + 1);
    *length_out = t.length;
    free(t.data);
    return status;
}

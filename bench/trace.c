/*
 * trace.c - loads Mooncake JSONL and Azure CSV request traces (trace.h).
 *
 * The file is read whole and split into lines; each line is checked
 * completely before it is added, and the first problem ends the load with
 * "<path>:<line>: <what>". A last line without a newline is accepted when
 * it parses (the Azure files end that way) and reported as truncated when
 * it does not.
 */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"

#define MAX_TRACE_BYTES (1ull << 32)
#define MAX_LENGTH 0xffffffffu

typedef struct loader {
    const char *path;
    size_t line;       /* 1-based number of the line being parsed */
    bool last_unterminated;
    char *error;
    size_t error_size;
    trace_t trace;
    size_t requests_capacity;
    size_t ids_capacity;
    int64_t next_unique_id; /* Azure: every block is an id of its own */
    double first_timestamp;
} loader_t;

static int fail(loader_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(loader_t *l, const char *fmt, ...)
{
    int n = l->line ? snprintf(l->error, l->error_size, "%s:%zu: ", l->path, l->line)
                    : snprintf(l->error, l->error_size, "%s: ", l->path);
    if (n >= 0 && (size_t)n < l->error_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->error + n, l->error_size - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return -1;
}

trace_format_t trace_format_from_name(const char *path)
{
    const char *dot = strrchr(path, '.');
    if (dot && (!strcmp(dot, ".jsonl") || !strcmp(dot, ".json")))
        return TRACE_FORMAT_MOONCAKE;
    if (dot && !strcmp(dot, ".csv"))
        return TRACE_FORMAT_AZURE;
    return TRACE_FORMAT_AUTO;
}

int trace_format_parse(const char *text, trace_format_t *format_out)
{
    static const struct { const char *name; trace_format_t format; } names[] = {
        {"auto", TRACE_FORMAT_AUTO}, {"mooncake", TRACE_FORMAT_MOONCAKE},
        {"azure", TRACE_FORMAT_AZURE}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(text, names[i].name)) {
            *format_out = names[i].format;
            return 0;
        }
    return -1;
}

void trace_free(trace_t *trace)
{
    free(trace->requests);
    free(trace->hash_ids);
    memset(trace, 0, sizeof(*trace));
}

/* ---- growing the arrays (load time only) -------------------------------- */

static int reserve(loader_t *l, size_t more_ids)
{
    trace_t *t = &l->trace;
    if (t->num_requests == l->requests_capacity) {
        size_t cap = l->requests_capacity ? 2 * l->requests_capacity : 1024;
        trace_request_t *r = realloc(t->requests, cap * sizeof(*r));
        if (!r)
            return fail(l, "out of memory for %zu requests", cap);
        t->requests = r;
        l->requests_capacity = cap;
    }
    if (t->num_hash_ids + more_ids > l->ids_capacity) {
        size_t cap = l->ids_capacity ? l->ids_capacity : 16384;
        while (cap < t->num_hash_ids + more_ids)
            cap *= 2;
        int64_t *ids = realloc(t->hash_ids, cap * sizeof(*ids));
        if (!ids)
            return fail(l, "out of memory for %zu hash ids", cap);
        t->hash_ids = ids;
        l->ids_capacity = cap;
    }
    return 0;
}

static uint32_t blocks_for(uint32_t input_length)
{
    return (uint32_t)(((uint64_t)input_length + TRACE_BLOCK_TOKENS - 1) / TRACE_BLOCK_TOKENS);
}

/* Appends a request; ids NULL means fresh unique ids (Azure). */
static int add_request(loader_t *l, double timestamp_ms, uint32_t input, uint32_t output,
                       const int64_t *ids, uint32_t num_ids)
{
    if (reserve(l, num_ids) != 0)
        return -1;
    trace_t *t = &l->trace;
    if (t->num_requests == 0)
        l->first_timestamp = timestamp_ms;
    t->requests[t->num_requests++] = (trace_request_t){
        .timestamp_ms = timestamp_ms - l->first_timestamp,
        .input_length = input,
        .output_length = output,
        .num_hash_ids = num_ids,
        .first_hash_id = t->num_hash_ids,
    };
    for (uint32_t i = 0; i < num_ids; i++)
        t->hash_ids[t->num_hash_ids++] = ids ? ids[i] : l->next_unique_id++;
    return 0;
}

/* ---- Mooncake JSONL -------------------------------------------------------- */

/* A non-negative integer field no larger than max. */
static int json_count(loader_t *l, const cJSON *obj, const char *name, double max,
                      double *value_out)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!item)
        return fail(l, "missing field \"%s\"", name);
    if (!cJSON_IsNumber(item))
        return fail(l, "field \"%s\" is not a number", name);
    double v = item->valuedouble;
    if (v < 0)
        return fail(l, "field \"%s\" is negative (%g)", name, v);
    if (v != floor(v) || v > max)
        return fail(l, "field \"%s\" is not an integer in 0..%.0f (%g)", name, max, v);
    *value_out = v;
    return 0;
}

static int mooncake_line(loader_t *l, const char *text, size_t len)
{
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!obj) {
        size_t column = end ? (size_t)(end - text) + 1 : 0;
        return l->last_unterminated
                   ? fail(l, "truncated line: the file ends inside a JSON object (column %zu)",
                          column)
                   : fail(l, "malformed JSON near column %zu", column);
    }
    int rc = -1;
    double ts, input, output;
    const cJSON *tsv = cJSON_GetObjectItemCaseSensitive(obj, "timestamp");
    if (!cJSON_IsObject(obj)) {
        fail(l, "a line must be a JSON object");
    } else if (!tsv) {
        fail(l, "missing field \"timestamp\"");
    } else if (!cJSON_IsNumber(tsv) || tsv->valuedouble < 0 || !isfinite(tsv->valuedouble)) {
        fail(l, "field \"timestamp\" must be a non-negative number of milliseconds");
    } else if (json_count(l, obj, "input_length", MAX_LENGTH, &input) == 0 &&
               json_count(l, obj, "output_length", MAX_LENGTH, &output) == 0) {
        ts = tsv->valuedouble;
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(obj, "hash_ids");
        uint32_t want = blocks_for((uint32_t)input);
        if (!ids) {
            fail(l, "missing field \"hash_ids\"");
        } else if (!cJSON_IsArray(ids)) {
            fail(l, "field \"hash_ids\" is not an array");
        } else if ((uint64_t)cJSON_GetArraySize(ids) != want) {
            fail(l, "%d hash_ids for input_length %.0f: expected ceil(%.0f / %u) = %u",
                 cJSON_GetArraySize(ids), input, input, TRACE_BLOCK_TOKENS, want);
        } else if (reserve(l, want) == 0) {
            int64_t *dst = l->trace.hash_ids + l->trace.num_hash_ids;
            uint32_t i = 0;
            const cJSON *id;
            cJSON_ArrayForEach(id, ids) {
                double v = cJSON_IsNumber(id) ? id->valuedouble : -1;
                if (v < 0 || v != floor(v) || v > 9007199254740992.0)
                    break;
                dst[i++] = (int64_t)v;
            }
            if (i != want)
                fail(l, "hash_ids[%u] is not a non-negative integer", i);
            else
                rc = add_request(l, ts, (uint32_t)input, (uint32_t)output, dst, want);
        }
    }
    cJSON_Delete(obj);
    return rc;
}

/* ---- Azure CSV ---------------------------------------------------------------- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil), so no time zone or libc state is involved. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int parse_wall_clock(const char *text, double *ms_out)
{
    int y, mo, d, h, mi, used = 0;
    double s;
    if (sscanf(text, "%4d-%2d-%2d %2d:%2d:%lf%n", &y, &mo, &d, &h, &mi, &s, &used) != 6 ||
        text[used] != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        s < 0 || s >= 61)
        return -1;
    double days = (double)days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms_out = ((days * 24 + h) * 60 + mi) * 60000.0 + s * 1000.0;
    return 0;
}

static int parse_count(const char *text, uint32_t *value_out)
{
    if (*text == '-')
        return -2;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (end == text || *end != '\0' || errno || v > MAX_LENGTH)
        return -1;
    *value_out = (uint32_t)v;
    return 0;
}

static int azure_line(loader_t *l, char *text, size_t len)
{
    if (len && text[len - 1] == '\r')
        text[--len] = '\0';
    char *fields[4];
    int n = 0;
    for (char *p = text; p && n < 4; n++) {
        fields[n] = p;
        char *comma = strchr(p, ',');
        if (comma)
            *comma = '\0';
        p = comma ? comma + 1 : NULL;
    }
    if (n != 3)
        return fail(l, "expected 3 comma-separated fields (TIMESTAMP,ContextTokens,"
                       "GeneratedTokens), found %d%s", n,
                    n < 3 && l->last_unterminated ? " (truncated line)" : "");
    double ts;
    uint32_t input, output;
    if (parse_wall_clock(fields[0], &ts) != 0)
        return fail(l, "TIMESTAMP \"%s\" is not YYYY-MM-DD HH:MM:SS[.fraction]", fields[0]);
    int rc = parse_count(fields[1], &input);
    if (rc != 0)
        return fail(l, "ContextTokens \"%s\" is %s", fields[1],
                    rc == -2 ? "negative" : "not an integer in 0..2^32-1");
    rc = parse_count(fields[2], &output);
    if (rc != 0)
        return fail(l, "GeneratedTokens \"%s\" is %s", fields[2],
                    rc == -2 ? "negative" : "not an integer in 0..2^32-1");
    return add_request(l, ts, input, output, NULL, blocks_for(input));
}

static int azure_header(loader_t *l, const char *text, size_t len)
{
    static const char expected[] = "TIMESTAMP,ContextTokens,GeneratedTokens";
    if (len && text[len - 1] == '\r')
        len--;
    if (len != sizeof(expected) - 1 || memcmp(text, expected, len) != 0)
        return fail(l, "expected the header \"%s\"", expected);
    return 0;
}

/* ---- the file ------------------------------------------------------------------- */

static int read_whole(loader_t *l, char **data_out, size_t *size_out)
{
    FILE *f = fopen(l->path, "rb");
    if (!f)
        return fail(l, "cannot open: %s", strerror(errno));
    size_t cap = 1 << 20, size = 0;
    char *data = malloc(cap + 1);
    while (data) {
        size_t got = fread(data + size, 1, cap - size, f);
        size += got;
        if (size < cap)
            break;
        if (cap >= MAX_TRACE_BYTES) {
            free(data);
            fclose(f);
            return fail(l, "larger than %llu bytes", (unsigned long long)MAX_TRACE_BYTES);
        }
        cap *= 2;
        char *bigger = realloc(data, cap + 1);
        if (!bigger)
            free(data);
        data = bigger;
    }
    int error = ferror(f);
    fclose(f);
    if (!data)
        return fail(l, "out of memory reading the file");
    if (error) {
        free(data);
        return fail(l, "read error");
    }
    data[size] = '\0';
    *data_out = data;
    *size_out = size;
    return 0;
}

int trace_load(const char *path, trace_format_t format, trace_t *trace_out, char *error,
               size_t error_size)
{
    loader_t l = {.path = path, .error = error, .error_size = error_size};
    if (error_size)
        error[0] = '\0';
    if (format == TRACE_FORMAT_AUTO)
        format = trace_format_from_name(path);
    if (format == TRACE_FORMAT_AUTO)
        return fail(&l, "unknown trace format: name it .jsonl (Mooncake) or .csv (Azure), "
                        "or give the format");
    char *data = NULL;
    size_t size = 0;
    if (read_whole(&l, &data, &size) != 0)
        return -1;
    int rc = 0;
    char *p = data, *end = data + size;
    for (l.line = 1; rc == 0 && p < end; l.line++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        l.last_unterminated = !nl;
        p[len] = '\0';
        bool blank = strspn(p, " \t\r") == len;
        if (memchr(p, '\0', len))
            rc = fail(&l, "NUL byte inside the line");
        else if (format == TRACE_FORMAT_AZURE && l.line == 1)
            rc = azure_header(&l, p, len);
        else if (!blank)
            rc = format == TRACE_FORMAT_MOONCAKE ? mooncake_line(&l, p, len)
                                                 : azure_line(&l, p, len);
        p += len + 1;
    }
    free(data);
    if (rc == 0 && l.trace.num_requests == 0) {
        l.line = 0;
        rc = fail(&l, "no requests in the trace");
    }
    if (rc != 0) {
        trace_free(&l.trace);
        memset(trace_out, 0, sizeof(*trace_out));
        return -1;
    }
    l.trace.format = format;
    l.trace.has_prefix_info = format == TRACE_FORMAT_MOONCAKE;
    *trace_out = l.trace;
    return 0;
}

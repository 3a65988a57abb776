/*
 * test_sim_docs.c - the kvrt-sim output shown in docs/simulator.md is what
 * kvrt-sim prints. Each sample there is a fenced block right after a line
 *
 *   <!-- sample: kvrt-sim ARGS -->
 *
 * and must equal the output of `kvrt-sim ARGS --no-progress`, except the
 * `simulator` line (wall-clock time, different on every run). Run with
 * KVRT_UPDATE_DOCS=1 to write the current output into the document
 * instead (then review the diff): the samples are generated, not typed.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support/tool_run.h"

#define DOC KVRT_SOURCE_DIR "/docs/simulator.md"
#define MARKER "<!-- sample: kvrt-sim"

/* Whether a[0..a_len) and b agree on every line but the wall-clock one. */
static bool same_but_wall_clock(const char *a, size_t a_len, const char *b)
{
    char *copy = strndup(a, a_len);
    cr_assert_not_null(copy);
    bool same = true;
    for (a = copy; same && (*a || *b);) {
        size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
        bool wall = !strncmp(a, "simulator ", 10) && !strncmp(b, "simulator ", 10);
        same = wall || (la == lb && memcmp(a, b, la) == 0);
        a += la + (a[la] == '\n');
        b += lb + (b[lb] == '\n');
    }
    free(copy);
    return same;
}

/* Runs the sample's command (the text after MARKER up to "-->"). */
static tool_output_t run_sample(const char *marker_args)
{
    char args_text[256];
    const char *end = strstr(marker_args, "-->");
    cr_assert_not_null(end);
    size_t len = (size_t)(end - marker_args);
    cr_assert_lt(len, sizeof(args_text));
    memcpy(args_text, marker_args, len);
    args_text[len] = '\0';
    const char *args[32];
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(args_text, " ", &save); tok && n < 30;
         tok = strtok_r(NULL, " ", &save))
        args[n++] = tok;
    args[n++] = "--no-progress";
    args[n] = NULL;
    return tool_run(KVRT_SIM_PATH, args);
}

Test(sim_docs, samples_in_simulator_md_are_what_kvrt_sim_prints, .timeout = 280)
{
    char *doc = tool_slurp(DOC);
    bool update = getenv("KVRT_UPDATE_DOCS") && !strcmp(getenv("KVRT_UPDATE_DOCS"), "1");
    size_t cap = strlen(doc) * 2 + (1 << 16), used = 0;
    char *rewritten = malloc(cap);
    cr_assert_not_null(rewritten);
    int samples = 0;
    const char *p = doc;
    for (const char *m; (m = strstr(p, MARKER)) != NULL; samples++) {
        const char *fence = strstr(m, "\n```\n");
        cr_assert_not_null(fence, "sample %d: no ``` block after its marker", samples + 1);
        const char *body = fence + 5;
        const char *close = strstr(body, "```\n");
        cr_assert_not_null(close, "sample %d: unterminated block", samples + 1);
        tool_output_t o = run_sample(m + strlen(MARKER));
        cr_assert_eq(o.status, 0, "sample %d: kvrt-sim failed: %s", samples + 1, o.err);
        if (!update)
            cr_assert(same_but_wall_clock(body, (size_t)(close - body), o.out),
                      "docs/simulator.md sample %d differs from kvrt-sim's output (regenerate "
                      "with KVRT_UPDATE_DOCS=1):\n--- docs\n%.*s--- kvrt-sim\n%s",
                      samples + 1, (int)(close - body), body, o.out);
        cr_assert_lt(used + (size_t)(body - p) + strlen(o.out), cap);
        memcpy(rewritten + used, p, (size_t)(body - p));
        used += (size_t)(body - p);
        memcpy(rewritten + used, o.out, strlen(o.out));
        used += strlen(o.out);
        tool_output_free(&o);
        p = close;
    }
    cr_assert_geq(samples, 1, "no '" MARKER " ... -->' sample in " DOC);
    if (update) {
        FILE *f = fopen(DOC, "w");
        cr_assert_not_null(f);
        fwrite(rewritten, 1, used, f);
        fputs(p, f);
        cr_assert_eq(fclose(f), 0);
    }
    free(rewritten);
    free(doc);
}

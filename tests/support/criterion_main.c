/*
 * criterion_main.c - the main of every Criterion test binary (linked in by
 * kvrt_add_test). It is Criterion's own main plus one rule: a binary in
 * which a test skipped (cr_skip_test) and none failed exits with
 * KVRT_TEST_SKIPPED, the SKIP_RETURN_CODE ctest is told about, so ctest
 * reports it as skipped rather than passed.
 *
 * Each skipped test is printed as "[SKIP] suite::name: reason", and when
 * the environment names a file in KVRT_TEST_SKIP_LOG a line
 * "suite::name<TAB>reason" is appended to it, so CI can hold every skip
 * against its list of skips allowed on its machine (scripts/check-skips).
 */
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <stdio.h>
#include <stdlib.h>

#include "support/test_skip.h"

static size_t skipped;

ReportHook(POST_ALL)(struct criterion_global_stats *stats)
{
    const char *log_path = getenv("KVRT_TEST_SKIP_LOG");
    FILE *log = log_path && *log_path ? fopen(log_path, "a") : NULL;
    for (struct criterion_suite_stats *s = stats->suites; s; s = s->next)
        for (struct criterion_test_stats *t = s->tests; t; t = t->next) {
            /* Tests left out by --filter are "skipped" too, but disabled. */
            if (t->test_status != CR_STATUS_SKIPPED || t->test->data->disabled)
                continue;
            skipped++;
            const char *why = t->message && *t->message ? t->message : "no reason given";
            printf("[SKIP] %s::%s: %s\n", t->test->category, t->test->name, why);
            if (log)
                fprintf(log, "%s::%s\t%s\n", t->test->category, t->test->name, why);
        }
    if (log)
        fclose(log);
}

/* Default visibility and exported (see kvrt_add_test): Criterion's workers
 * re-run this executable, and boxfort redirects its main to the test by
 * patching the main the dynamic linker resolves. */
__attribute__((visibility("default"))) int main(int argc, char *argv[])
{
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (criterion_handle_args(argc, argv, true))
        result = !criterion_run_all_tests(tests);
    criterion_finalize(tests);
    if (result == 0 && skipped > 0)
        return KVRT_TEST_SKIPPED;
    return result;
}

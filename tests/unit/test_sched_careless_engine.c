/*
 * test_sched_careless_engine.c - the scheduler API fuzzer's target
 * (tests/fuzz/fuzz_sched_api.c) run in every build, libFuzzer or not: its
 * seed corpus (tests/fuzz/corpus/sched_api, one input per way an engine
 * drives a scheduler) and inputs drawn from a fixed seed. Each input is a
 * whole session of calls, good and bad; the target aborts on any breach
 * (a refused call that changed a count or said nothing, a plan whose slots
 * disagree with its rows, a pool or cache that fails to verify, anything
 * left held at the end), which fails the test.
 */
#include <dirent.h>
#include <stdio.h>

#include "../fuzz/fuzz_sched_api.c"
#include "test_helpers.h"

Test(sched_careless_engine, every_seed_session_keeps_every_invariant)
{
    DIR *dir = opendir(KVRT_SCHED_CORPUS);
    cr_assert_not_null(dir, "no corpus at %s", KVRT_SCHED_CORPUS);
    static uint8_t data[1u << 16];
    uint32_t sessions = 0;
    struct dirent *e;
    while ((e = readdir(dir))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", KVRT_SCHED_CORPUS, e->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f, "%s", path);
        size_t n = fread(data, 1, sizeof(data), f);
        fclose(f);
        LLVMFuzzerTestOneInput(data, n);
        sessions++;
    }
    closedir(dir);
    cr_assert_geq(sessions, 10, "the corpus holds %u sessions", sessions);
}

Test(sched_careless_engine, random_sessions_keep_every_invariant, .timeout = 240)
{
    /* Random bytes are valid input (every configuration byte maps into
     * range); biased toward the operations that move state. */
    static uint8_t data[1200];
    uint64_t x = 0x5eedf00dull;
    for (uint32_t session = 0; session < 4000; session++) {
        size_t n = 64 + session % 1100;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data[i] = (uint8_t)(x >> 24);
        }
        LLVMFuzzerTestOneInput(data, n);
    }
}

/*
 * test_kernels_gpu_check.c - scripts/gpu-check's verdict, from the files a
 * GPU run leaves: a failed test or a sanitizer error fails the run, skips
 * are reported as skips (never as passes), a GPU run whose kernels bench
 * has no CUDA figures fails, and the attention figures come out beside
 * PyTorch SDPA's with both targets checked. The GPU run itself needs a GPU;
 * what it leaves is written here by hand, in the formats Criterion,
 * compute-sanitizer, kvrt-bench --json and bench/sdpa_baseline.py print.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "support/tool_run.h"

#define GPU_CHECK KVRT_SOURCE_DIR "/scripts/gpu-check"

static void put(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    fclose(f);
}

/* A fresh folder holding what every run leaves: the step list and env. */
static char *run_folder(const char *steps)
{
    char *dir = strdup("/tmp/kvrt-gpu-check-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    put(dir, "steps.txt", steps);
    put(dir, "env.txt", "gpu: NVIDIA H200, 580.159.04, 143771 MiB\n");
    return dir;
}

static void remove_folder(char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
    free(dir);
}

static tool_output_t report(const char *dir, bool gpu)
{
    const char *args[] = {"report", "--out", dir, gpu ? "--gpu" : NULL, NULL};
    return tool_run(GPU_CHECK, args);
}

/* Runs report on dir; it must exit with `status` and print `text`. */
static void expect_report(const char *dir, bool gpu, int status, const char *text)
{
    tool_output_t o = report(dir, gpu);
    cr_assert_eq(o.status, status, "%s%s", o.out, o.err);
    cr_assert_not_null(strstr(o.out, text), "%s", o.out);
    tool_output_free(&o);
}

static const char bench_figures[] =
    "[\n"
    "  {\"name\": \"kernels.cpu.gather_blocks\", \"unit\": \"GB/s\", \"value\": 9.1, "
    "\"baseline\": \"memcpy\", \"baseline_value\": 9.3, \"ratio\": 0.978},\n"
    "  {\"name\": \"kernels.cuda.gather_blocks\", \"unit\": \"GB/s\", \"value\": 1800, "
    "\"baseline\": \"cudaMemcpy.d2d\", \"baseline_value\": 1900, \"ratio\": 0.947},\n"
    "  {\"name\": \"kernels.cuda.decode_attention.s64.len1024\", \"unit\": \"GB/s\", "
    "\"value\": 2600, \"baseline\": \"copy_bandwidth.d2d\", \"baseline_value\": 4200},\n"
    "  {\"name\": \"kernels.cuda.decode_attention.s256.len4096\", \"unit\": \"GB/s\", "
    "\"value\": 2000, \"baseline\": \"copy_bandwidth.d2d\", \"baseline_value\": 4200}\n"
    "]\n";

static const char sdpa_lines[] =
    "{\"device\": \"NVIDIA H200\", \"torch\": \"2.11.0\"}\n"
    "{\"name\": \"torch.copy_bandwidth.d2d\", \"unit\": \"GB/s\", \"value\": 4200}\n"
    "{\"name\": \"torch.sdpa.s64.len1024\", \"unit\": \"GB/s\", \"value\": 3900}\n"
    "{\"name\": \"torch.sdpa.s256.len4096\", \"unit\": \"GB/s\", \"value\": 4400}\n";

Test(kernels_gpu_check, a_clean_gpu_run_puts_attention_beside_sdpa_and_checks_both_targets)
{
    char *dir = run_folder("test:test_kernels_cuda 77 12\nbench 0 40\nsdpa 0 20\n"
                           "memcheck:test_kernels_cuda 77 90\n");
    put(dir, "test-test_kernels_cuda.txt.err",
        "[RUN ] kernels_cuda::movement\n[PASS] kernels_cuda::movement: (0.20s)\n"
        "[SKIP] kernels_cuda::without_a_gpu_every_call_says_no_gpu: a GPU is present\n"
        "[====] Synthesis: Tested: 1 | Passing: 1 | Failing: 0 | Crashing: 0\n");
    put(dir, "memcheck-test_kernels_cuda.txt",
        "========= ERROR SUMMARY: 0 errors\n========= ERROR SUMMARY: 0 errors\n");
    put(dir, "kernels-bench.json", bench_figures);
    put(dir, "sdpa.jsonl", sdpa_lines);
    tool_output_t o = report(dir, true);
    cr_assert_eq(o.status, 0, "%s%s", o.out, o.err);
    cr_assert_not_null(strstr(o.out, "1 passed, 0 failed, 1 skipped"), "%s", o.out);
    cr_assert_not_null(strstr(o.out, "SKIP kernels_cuda::without_a_gpu_every_call_says_no_gpu"));
    cr_assert_not_null(strstr(o.out, "1 tests skipped (not verified)"), "%s", o.out);
    char path[512];
    snprintf(path, sizeof path, "%s/gpu-check.json", dir);
    char *json = tool_slurp(path);
    /* 2600 of 4200 copy and of 3900 SDPA: both targets met; 2000 of 4200
     * and 4400: neither. */
    cr_assert_not_null(strstr(json, "\"vs_sdpa\": 0.667"), "%s", json);
    cr_assert_not_null(strstr(json, "\"meets_targets\": true"), "%s", json);
    cr_assert_not_null(strstr(json, "\"vs_sdpa\": 0.455"), "%s", json);
    cr_assert_not_null(strstr(json, "\"meets_targets\": false"), "%s", json);
    free(json);
    tool_output_free(&o);
    remove_folder(dir);
}

Test(kernels_gpu_check, a_failed_test_or_a_sanitizer_error_fails_the_run)
{
    char *dir = run_folder("test:test_kernels_cuda_edges 1 30\n"
                           "memcheck:test_kernels_cuda_edges 0 120\n"
                           "racecheck:attention -1 0 the time budget is spent\n");
    put(dir, "test-test_kernels_cuda_edges.txt.err",
        "[FAIL] kernels_cuda_edges::an_empty_batch_is_a_no_op: CRASH!\n"
        "[====] Synthesis: Tested: 1 | Passing: 0 | Failing: 1 | Crashing: 1\n");
    put(dir, "memcheck-test_kernels_cuda_edges.txt", "========= ERROR SUMMARY: 3 errors\n");
    tool_output_t o = report(dir, true);
    cr_assert_eq(o.status, 1, "%s%s", o.out, o.err);
    cr_assert_not_null(strstr(o.out, "FAIL kernels_cuda_edges::an_empty_batch_is_a_no_op"));
    cr_assert_not_null(strstr(o.out, "memcheck:test_kernels_cuda_edges: 3 errors"), "%s", o.out);
    cr_assert_not_null(strstr(o.out, "racecheck:attention: not run: the time budget is spent"),
                       "%s", o.out);
    cr_assert_null(strstr(o.out, "racecheck:attention: exit"), "a step not run is no failure");
    tool_output_free(&o);
    remove_folder(dir);
}

Test(kernels_gpu_check, a_gpu_run_whose_bench_has_no_cuda_figures_fails)
{
    char *dir = run_folder("bench 0 10\n");
    put(dir, "kernels-bench.json", "[\n  {\"name\": \"kernels.cpu.gather_blocks\", "
                                   "\"unit\": \"GB/s\", \"value\": 9.1}\n]\n");
    put(dir, "kernels-bench.json.err", "kernels: CUDA figures skipped: kvrt built without CUDA\n");
    expect_report(dir, true, 1, "no CUDA figures");
    /* Without a GPU the same run is fine: the figures could not exist. */
    expect_report(dir, false, 0, "CUDA figures skipped");
    remove_folder(dir);
}

Test(kernels_gpu_check, a_gpu_run_whose_cuda_tests_find_no_device_fails)
{
    /* nvidia-smi sees a GPU, the tests do not (a CUDA runtime the driver
     * is too old for, say): nothing was verified, so the run fails. */
    char *dir = run_folder("test:test_kernels_cuda_edges 0 5\n");
    put(dir, "test-test_kernels_cuda_edges.txt.err",
        "[SKIP] kernels_cuda_edges::an_empty_batch_is_a_no_op: no CUDA device (or kvrt built "
        "without CUDA)\n"
        "[PASS] kernels_cuda_edges::misaligned_pointers_are_refused_before_any_work: (0.00s)\n"
        "[====] Synthesis: Tested: 1 | Passing: 1 | Failing: 0 | Crashing: 0\n");
    expect_report(dir, true, 1, "a GPU is present but 1 tests found no CUDA device");
    /* Still reported as a skip, with its reason. */
    expect_report(dir, true, 1, "SKIP kernels_cuda_edges::an_empty_batch_is_a_no_op: no CUDA");
    /* Without a GPU the same skips are the expected answer. */
    expect_report(dir, false, 0, "1 tests skipped (not verified)");
    remove_folder(dir);
}

/* A stand-in for a bundled program: like one linked against the bundle's
 * libraries, it loads only when LD_LIBRARY_PATH names the bundle's lib/
 * (where lib/libkvrt.so is), else fails as the loader does (127). */
static const char fake_program[] =
    "#!/bin/sh\n"
    "for d in $(echo \"$LD_LIBRARY_PATH\" | tr : ' '); do\n"
    "  [ -f \"$d/libkvrt.so\" ] && exec echo \"$FAKE_OUTPUT\"\n"
    "done\n"
    "echo 'error while loading shared libraries: libkvrt.so: cannot open shared object' >&2\n"
    "exit 127\n";

static void put_program(const char *dir, const char *name, const char *text)
{
    put(dir, name, text);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cr_assert_eq(chmod(path, 0755), 0, "%s", path);
}

/* A bundle at an absolute path (bin/: the two test programs and
 * kvrt-bench; lib/; BUILD_INFO), and a bin folder put first on PATH whose
 * nvidia-smi is `nvidia_smi`. */
static char *fake_machine(const char *nvidia_smi)
{
    char *dir = run_folder("");
    char sub[512];
    snprintf(sub, sizeof sub, "%s/bundle", dir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    snprintf(sub, sizeof sub, "%s/bundle/bin", dir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    put_program(sub, "test_kernels_cuda", fake_program);
    put_program(sub, "test_kernels_cuda_edges", fake_program);
    put_program(sub, "kvrt-bench", "#!/bin/sh\necho '[]'\n");
    snprintf(sub, sizeof sub, "%s/bundle/lib", dir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    put(sub, "libkvrt.so", "");
    snprintf(sub, sizeof sub, "%s/bundle", dir);
    put(sub, "BUILD_INFO", "commit test\n");
    snprintf(sub, sizeof sub, "%s/path", dir);
    cr_assert_eq(mkdir(sub, 0755), 0);
    put_program(sub, "nvidia-smi", nvidia_smi);
    char path[4096];
    snprintf(path, sizeof path, "%s:%s", sub, getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
    cr_assert_eq(setenv("PATH", path, 1), 0);
    cr_assert_eq(setenv("FAKE_OUTPUT", "[PASS] fake::ran: (0.00s)", 1), 0);
    return dir;
}

static tool_output_t run_on(const char *dir, const char *budget)
{
    char bundle[512], out[512];
    snprintf(bundle, sizeof bundle, "%s/bundle", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    const char *args[] = {"run", "--bundle", bundle, "--out", out, "--budget", budget, NULL};
    return tool_run(GPU_CHECK, args);
}

Test(kernels_gpu_check, a_bundle_at_an_absolute_path_runs_with_its_libraries, .timeout = 120)
{
    char *dir = fake_machine("#!/bin/sh\necho 'No devices were found'\nexit 6\n");
    tool_output_t o = run_on(dir, "200");
    cr_assert_eq(o.status, 0, "%s%s", o.out, o.err);
    cr_assert_not_null(strstr(o.out, "test_kernels_cuda: 1 passed, 0 failed, 0 skipped (exit 0)"),
                       "%s", o.out);
    cr_assert_not_null(
        strstr(o.out, "test_kernels_cuda_edges: 1 passed, 0 failed, 0 skipped (exit 0)"), "%s",
        o.out);
    tool_output_free(&o);
    remove_folder(dir);
}

Test(kernels_gpu_check, a_hung_nvidia_smi_costs_the_budget_not_the_run, .timeout = 60)
{
    /* A wedged driver: nvidia-smi does not answer (here: for 40 s a call,
     * which the run makes twice). The run still ends within its budget and
     * says what it could not do. */
    char *dir = fake_machine("#!/bin/sh\nexec sleep 40\n");
    tool_output_t o = run_on(dir, "15");
    cr_assert_eq(o.status, 1, "steps the budget left out fail the run: %s%s", o.out, o.err);
    cr_assert_not_null(strstr(o.out, "not run: the time budget is spent"), "%s", o.out);
    tool_output_free(&o);
    remove_folder(dir);
}

Test(kernels_gpu_check, bad_usage_exits_2)
{
    const char *none[] = {NULL}, *unknown[] = {"run", "--budget", "soon", NULL};
    tool_output_t o = tool_run(GPU_CHECK, none);
    cr_assert_eq(o.status, 2);
    tool_output_free(&o);
    o = tool_run(GPU_CHECK, unknown);
    cr_assert_eq(o.status, 2);
    cr_assert_not_null(strstr(o.err, "gpu-check"), "usage on stderr: %s", o.err);
    tool_output_free(&o);
}

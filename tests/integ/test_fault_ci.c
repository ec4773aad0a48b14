/* The CI-sized fault matrix of issue 6 as Check tests: one test per
 * scenario of tests/fault (gateway, orchestrator and worker SIGKILL, a
 * nats-server restart, a cluster node loss, a client that stops reading, a
 * reconnect storm), each asserting 0 lost, 0 duplicated and 0 unended (and
 * the rest of fx_result_ok: no leak across tenants, every reply's text
 * right, the fault took effect, every process alive and clean) and printing
 * its counts. The table of all of them is printed at the end.
 *
 * Each scenario starts its own stack; the Check fork mode runs each in its
 * own process, which appends its table row to a temporary file that the
 * parent prints after the run. Set FX_SAVE_DIR to keep the logs of a
 * failed scenario. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "hx.h"

static char rows_path[64];

/* Appends the row of r to the rows file (O_APPEND: one write per row). */
static void record_row(const fx_result *r)
{
    char *row = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&row, &len);
    int fd;

    if (mem == NULL)
        return;
    fx_print_row(mem, r);
    fclose(mem);
    fd = open(rows_path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd >= 0) {
        if (write(fd, row, len) != (ssize_t)len)
            fprintf(stderr, "test_fault_ci: short write to %s\n", rows_path);
        close(fd);
    }
    free(row);
}

START_TEST(test_scenario)
{
    fx_result *r = calloc(1, sizeof *r);
    sl_status st;

    ck_assert_ptr_nonnull(r);
    st = fx_run(_i, FX_CI, r);
    fx_print_notes(stdout, r);
    fflush(stdout);
    record_row(r);
    ck_assert_msg(st == SL_OK, "%s: %s (%s)", fx_scenario_name(_i), r->why, sl_status_str(st));
    ck_assert_msg(r->lost == 0 && r->duplicated == 0 && r->unended == 0,
                  "%s: %lu lost, %lu duplicated, %lu unended", r->scenario, r->lost, r->duplicated,
                  r->unended);
    free(r);
}
END_TEST

static void print_table(void)
{
    FILE *f = fopen(rows_path, "r");
    char line[512];

    printf("\nfault scenarios (CI size):\n");
    fx_print_head(stdout);
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        fputs(line, stdout);
    if (f != NULL)
        fclose(f);
    fflush(stdout);
}

int main(void)
{
    Suite *su = suite_create("fault");
    TCase *tc = tcase_create("ci matrix");
    SRunner *sr;
    int failed, fd;

    snprintf(rows_path, sizeof rows_path, "/tmp/sluice-fault-rows-XXXXXX");
    fd = mkstemp(rows_path);
    if (fd < 0) {
        perror("mkstemp");
        return 1;
    }
    close(fd);
    /* A scenario is bounded well under a minute; the sanitizer build and a
     * busy machine get the rest. */
    tcase_set_timeout(tc, 240);
    tcase_add_loop_test(tc, test_scenario, 0, fx_scenario_count());
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    print_table();
    unlink(rows_path);
    return failed == 0 ? 0 : 1;
}

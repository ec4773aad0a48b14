/* fault_runner: runs Sluice's fault scenarios and prints the table of
 * counts. Only argument handling is here; the scenarios live in
 * fault_scen.c and the client load in fault_load.c.
 *
 *   fault_runner [--ci | --soak] [--out FILE] [--list] [SCENARIO ...]
 *
 * SCENARIO is a name or a 1-based number; none means all. --out also
 * writes the table and the notes (markdown) to FILE. Exits 0 when every
 * scenario passed (0 lost, 0 duplicated, 0 unended, ...), 1 otherwise, 2 on
 * bad usage. Run from the repository root; the binaries come from
 * $SLUICE_BIN_DIR (else bin, or build/san/bin in a SANITIZE=1 build). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fault.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: fault_runner [--ci | --soak] [--out FILE] [--list] [SCENARIO ...]\n"
               "scenarios:");
    for (int i = 0; i < fx_scenario_count(); i++)
        fprintf(f, " %d:%s", i + 1, fx_scenario_name(i));
    fprintf(f, "\n");
}

static void write_report(FILE *f, fx_size size, const fx_result *res, int n)
{
    char ts[64];
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "# Sluice fault scenarios (%s run, %s)\n\n", size == FX_SOAK ? "soak" : "CI", ts);
    fx_print_head(f);
    for (int i = 0; i < n; i++)
        fx_print_row(f, &res[i]);
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        fprintf(f, "- ");
        fx_print_notes(f, &res[i]);
    }
}

int main(int argc, char **argv)
{
    fx_size size = FX_CI;
    const char *out_path = NULL;
    int pick[32], npick = 0, failed = 0;
    fx_result *res = NULL;

    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--ci") == 0) {
            size = FX_CI;
        } else if (strcmp(argv[a], "--soak") == 0) {
            size = FX_SOAK;
        } else if (strcmp(argv[a], "--out") == 0 && a + 1 < argc) {
            out_path = argv[++a];
        } else if (strcmp(argv[a], "--list") == 0) {
            for (int i = 0; i < fx_scenario_count(); i++)
                printf("%d %s\n", i + 1, fx_scenario_name(i));
            return 0;
        } else if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            int i = fx_scenario_find(argv[a]);
            if (i < 0 || npick >= (int)(sizeof pick / sizeof pick[0])) {
                fprintf(stderr, "fault_runner: unknown argument %s\n", argv[a]);
                usage(stderr);
                return 2;
            }
            pick[npick++] = i;
        }
    }
    if (npick == 0) {
        for (int i = 0; i < fx_scenario_count(); i++)
            pick[npick++] = i;
    }
    res = calloc((size_t)npick, sizeof *res);
    if (res == NULL)
        return 1;
    for (int k = 0; k < npick; k++) {
        fprintf(stderr, "fault_runner: %s (%s) ...\n", fx_scenario_name(pick[k]),
                size == FX_SOAK ? "soak" : "ci");
        if (fx_run(pick[k], size, &res[k]) != SL_OK)
            failed++;
        fx_print_notes(stdout, &res[k]);
        fflush(stdout);
    }
    printf("\n");
    fx_print_head(stdout);
    for (int k = 0; k < npick; k++)
        fx_print_row(stdout, &res[k]);
    printf("\n%d of %d scenarios passed\n", npick - failed, npick);
    if (out_path != NULL) {
        FILE *f = fopen(out_path, "w");
        if (f == NULL) {
            perror(out_path);
            failed++;
        } else {
            write_report(f, size, res, npick);
            fclose(f);
            printf("table written to %s\n", out_path);
        }
    }
    free(res);
    return failed == 0 ? 0 : 1;
}

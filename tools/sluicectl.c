/* sluicectl: operator and developer commands.
 *   token --tenant T --sub U [--ttl S] [--room R ...]   mint a development JWT
 *   status                                              streams, consumers, queue depths
 * Configuration comes from the same SLUICE_* variables as the services. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_auth.h"
#include "sl_bus.h"
#include "sl_config.h"
#include "sl_log.h"
#include "sl_streams.h"
#include "sl_subject.h"

static int usage(FILE *f)
{
    fprintf(f, "Usage: sluicectl COMMAND [options]\n\n"
               "Commands:\n"
               "  token --tenant T --sub U [--ttl SECONDS] [--room R ...]\n"
               "        print a HS256 JWT signed with SLUICE_JWT_SECRET (default ttl 3600)\n"
               "  status\n"
               "        streams, consumers and per-subject queue depths (SLUICE_NATS_URL)\n\n"
               "Environment: SLUICE_JWT_SECRET, SLUICE_NATS_URL, SLUICE_NATS_USER, "
               "SLUICE_NATS_PASSWORD\n");
    return f == stdout ? 0 : 2;
}

static int cmd_token(int argc, char **argv)
{
    const char *tenant = NULL, *sub = NULL, *secret = getenv("SLUICE_JWT_SECRET");
    const char *rooms[SL_ROOMS_MAX];
    int nrooms = -1;
    int64_t ttl = 3600;
    char *tok = NULL;

    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "sluicectl token: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--tenant") == 0) {
            tenant = v;
        } else if (strcmp(a, "--sub") == 0) {
            sub = v;
        } else if (strcmp(a, "--ttl") == 0) {
            if (sl_parse_int(v, &ttl) != SL_OK || ttl < 1 || ttl > 365LL * 86400) {
                fprintf(stderr, "sluicectl token: --ttl must be 1..31536000 seconds\n");
                return 2;
            }
        } else if (strcmp(a, "--room") == 0) {
            if (nrooms < 0)
                nrooms = 0;
            if (nrooms >= SL_ROOMS_MAX || !sl_room_pattern_valid(v)) {
                fprintf(stderr, "sluicectl token: bad or too many --room values\n");
                return 2;
            }
            rooms[nrooms++] = v;
        } else {
            fprintf(stderr, "sluicectl token: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (secret == NULL || secret[0] == '\0') {
        fprintf(stderr, "sluicectl token: SLUICE_JWT_SECRET is not set\n");
        return 2;
    }
    if (!sl_id_valid(tenant) || sub == NULL || sub[0] == '\0') {
        fprintf(stderr, "sluicectl token: --tenant ([A-Za-z0-9_-]{1,64}) and --sub are required\n");
        return 2;
    }
    if (sl_jwt_mint_hs256(secret, tenant, sub, (int64_t)time(NULL) + ttl,
                          nrooms >= 0 ? rooms : NULL, nrooms, &tok) != SL_OK) {
        fprintf(stderr, "sluicectl token: cannot mint a token with these claims\n");
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

static void print_stream(jsCtx *js, const char *name)
{
    jsStreamInfo *si = NULL;
    jsOptions o;
    jsErrCode jerr = 0;

    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = ">";
    if (js_GetStreamInfo(&si, js, name, &o, &jerr) != NATS_OK) {
        printf("%-12s missing\n", name);
        return;
    }
    printf("%-12s msgs=%llu bytes=%llu first=%llu last=%llu consumers=%lld\n", name,
           (unsigned long long)si->State.Msgs, (unsigned long long)si->State.Bytes,
           (unsigned long long)si->State.FirstSeq, (unsigned long long)si->State.LastSeq,
           (long long)si->State.Consumers);
    if (strcmp(name, SL_STREAM_WORK) == 0 && si->State.Subjects != NULL) {
        for (int i = 0; i < si->State.Subjects->Count; i++)
            printf("  queue %-40s depth=%llu\n", si->State.Subjects->List[i].Subject,
                   (unsigned long long)si->State.Subjects->List[i].Msgs);
    }
    jsStreamInfo_Destroy(si);
}

static int cmd_status(void)
{
    sl_common_cfg cc;
    sl_cfg_opt opts[SL_COMMON_OPTS_N];
    sl_bus *bus = NULL;
    bool help;
    char err[256];
    int rv = 1;

    memset(&cc, 0, sizeof(cc));
    sl_common_opts(opts, &cc, "127.0.0.1:9099");
    if (sl_config_load(opts, SL_COMMON_OPTS_N, 0, NULL, &help, err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "sluicectl: %s\n", err);
        goto cleanup;
    }
    sl_log_init("sluicectl", SL_LOG_ERROR);
    if (sl_bus_create(&bus, &cc, "sluicectl", err, sizeof(err)) != SL_OK ||
        !sl_bus_connected(bus)) {
        fprintf(stderr, "sluicectl: cannot reach NATS at %s\n", cc.nats_url);
        goto cleanup;
    }
    print_stream(sl_bus_js(bus), SL_STREAM_IN);
    print_stream(sl_bus_js(bus), SL_STREAM_WORK);
    print_stream(sl_bus_js(bus), SL_STREAM_OUT);
    rv = 0;
cleanup:
    sl_bus_destroy(bus, 0);
    sl_config_free(opts, SL_COMMON_OPTS_N);
    return rv;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (strcmp(argv[1], "token") == 0)
        return cmd_token(argc, argv);
    if (strcmp(argv[1], "status") == 0)
        return cmd_status();
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0)
        return usage(stdout);
    fprintf(stderr, "sluicectl: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}

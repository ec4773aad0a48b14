/* sluice-bench: a WebSocket load client for Sluice and its peers.
 *
 * Only main lives here: it parses options, installs signal handlers, runs
 * one scenario and prints its JSON.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "sb_scen.h"
#include "sb_selftest.h"
#include "sb_util.h"

static void on_signal(int sig)
{
    (void)sig;
    sb_stop = 1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: sluice-bench --scenario idle|fanout|pipeline|noisy|storm [options]\n"
            "       sluice-bench --selftest | --free-port | --mint\n"
            "\n"
            "  --proto P           sluice (default), nats, nchan, socketio\n"
            "  --url URL           ws://127.x.x.x:PORT/PATH, repeatable (connections round-robin)\n"
            "  --pub-url URL       where publishers connect (nchan), repeatable\n"
            "  --conns N           members / sessions (tenant B for noisy)   [100]\n"
            "  --pubs N            publishers (fanout, storm)                [1]\n"
            "  --conns-a N         noisy tenant A sessions                   [0]\n"
            "  --rate R            publishes/s or messages/s                 [10]\n"
            "  --rate-a R          noisy tenant A messages/s                 [0]\n"
            "  --rates R1,R2,...   pipeline ramp (stops at the first unsustainable step)\n"
            "  --size B            message text bytes                        [200]\n"
            "  --duration S        measured seconds (idle: hold time)        [5]\n"
            "  --warmup S          unmeasured seconds first                  [1]\n"
            "  --drain S           max wait for in-flight work after          [3]\n"
            "  --connect-timeout S max seconds for the connect phase         [60]\n"
            "  --connect-rate R    new connections/s (0 = no pacing)         [0]\n"
            "  --max-pending N     handshakes in flight                      [256]\n"
            "  --heartbeat S       application heartbeat period per conn    [0 = none]\n"
            "  --storm-timeout S   max seconds for every member to resume    [60]\n"
            "  --pid PID           server process to sample (RSS, CPU), repeatable\n"
            "  --aux-pid PID       helper process (broker, orchestrator, worker): CPU, repeatable\n"
            "  --no-join           sluice: sessions do not join the room (idle)\n"
            "  --room NAME         room / channel / subject                  [bench]\n"
            "  --rooms N           sluice: spread members over rooms NAME-0..NAME-(N-1) [1]\n"
            "  --secret S          JWT HS256 secret [$SLUICE_JWT_SECRET]\n"
            "  --tenant T          tenant (noisy: quiet tenant B)            [bench]\n"
            "  --tenant-a T        noisy tenant A                            [noisy]\n"
            "  --token-ttl S       JWT lifetime                              [3600]\n"
            "  --tokens-file F     JWTs one a line instead of minting\n"
            "  --src-octet N       source addresses 127.N.x.y (one N per client process) [10]\n"
            "  --slo-ms MS         pipeline: p99 reply bound of a sustainable step [100]\n"
            "  --model-ms MS       pipeline: the model's own time, subtracted for overhead [0]\n"
            "  --text-prefix P     pipeline / noisy: messages start with P (agent match rule)\n"
            "  --label L           label copied into the JSON\n"
            "  --out FILE          write the JSON there instead of stdout\n"
            "  --ready-file F      write the ready count there after connecting\n");
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    double v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char *end = NULL;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < (long long)lo || v > (long long)hi)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_rates(const char *s, sb_opts *o)
{
    char buf[512];
    char *save = NULL;
    char *tok;

    if (strlen(s) >= sizeof(buf))
        return -1;
    strcpy(buf, s);
    o->nrates = 0;
    for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->nrates >= SB_MAX_RATES || parse_double(tok, 0.1, 1e6, &o->rates[o->nrates]) != 0)
            return -1;
        o->nrates++;
    }
    return o->nrates > 0 ? 0 : -1;
}

static int parse_proto(const char *s, sb_proto_kind *p)
{
    if (strcmp(s, "sluice") == 0)
        *p = SB_P_SLUICE;
    else if (strcmp(s, "nats") == 0)
        *p = SB_P_NATS;
    else if (strcmp(s, "nchan") == 0)
        *p = SB_P_NCHAN;
    else if (strcmp(s, "socketio") == 0)
        *p = SB_P_SOCKETIO;
    else
        return -1;
    return 0;
}

enum {
    O_PROTO = 256,
    O_URL,
    O_PUB_URL,
    O_CONNS,
    O_PUBS,
    O_CONNS_A,
    O_RATE,
    O_RATE_A,
    O_RATES,
    O_SIZE,
    O_DURATION,
    O_WARMUP,
    O_DRAIN,
    O_CTIMEOUT,
    O_CRATE,
    O_MAXPEND,
    O_HEARTBEAT,
    O_STORM_TIMEOUT,
    O_PID,
    O_AUX_PID,
    O_ROOM,
    O_ROOMS,
    O_NOJOIN,
    O_SECRET,
    O_TENANT,
    O_TENANT_A,
    O_TTL,
    O_TOKENS,
    O_SRC,
    O_SLO,
    O_MODEL,
    O_LABEL,
    O_PREFIX,
    O_OUT,
    O_READY,
    O_SELFTEST,
    O_FREEPORT,
    O_MINT,
    O_SCEN,
    O_HELP,
};

static const struct option LONGOPTS[] = {
    {"scenario", required_argument, NULL, O_SCEN},
    {"proto", required_argument, NULL, O_PROTO},
    {"url", required_argument, NULL, O_URL},
    {"pub-url", required_argument, NULL, O_PUB_URL},
    {"conns", required_argument, NULL, O_CONNS},
    {"pubs", required_argument, NULL, O_PUBS},
    {"conns-a", required_argument, NULL, O_CONNS_A},
    {"rate", required_argument, NULL, O_RATE},
    {"rate-a", required_argument, NULL, O_RATE_A},
    {"rates", required_argument, NULL, O_RATES},
    {"size", required_argument, NULL, O_SIZE},
    {"duration", required_argument, NULL, O_DURATION},
    {"warmup", required_argument, NULL, O_WARMUP},
    {"drain", required_argument, NULL, O_DRAIN},
    {"connect-timeout", required_argument, NULL, O_CTIMEOUT},
    {"connect-rate", required_argument, NULL, O_CRATE},
    {"max-pending", required_argument, NULL, O_MAXPEND},
    {"heartbeat", required_argument, NULL, O_HEARTBEAT},
    {"storm-timeout", required_argument, NULL, O_STORM_TIMEOUT},
    {"pid", required_argument, NULL, O_PID},
    {"aux-pid", required_argument, NULL, O_AUX_PID},
    {"room", required_argument, NULL, O_ROOM},
    {"rooms", required_argument, NULL, O_ROOMS},
    {"no-join", no_argument, NULL, O_NOJOIN},
    {"secret", required_argument, NULL, O_SECRET},
    {"tenant", required_argument, NULL, O_TENANT},
    {"tenant-a", required_argument, NULL, O_TENANT_A},
    {"token-ttl", required_argument, NULL, O_TTL},
    {"tokens-file", required_argument, NULL, O_TOKENS},
    {"src-octet", required_argument, NULL, O_SRC},
    {"slo-ms", required_argument, NULL, O_SLO},
    {"model-ms", required_argument, NULL, O_MODEL},
    {"label", required_argument, NULL, O_LABEL},
    {"text-prefix", required_argument, NULL, O_PREFIX},
    {"out", required_argument, NULL, O_OUT},
    {"ready-file", required_argument, NULL, O_READY},
    {"selftest", no_argument, NULL, O_SELFTEST},
    {"free-port", no_argument, NULL, O_FREEPORT},
    {"mint", no_argument, NULL, O_MINT},
    {"help", no_argument, NULL, O_HELP},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int val)
{
    const struct option *p;

    for (p = LONGOPTS; p->name; p++) {
        if (p->val == val)
            return p->name;
    }
    return "?";
}

int main(int argc, char **argv)
{
    sb_opts o;
    const char *out_path = NULL;
    cJSON *res = NULL;
    char *text = NULL;
    struct sigaction sa;
    struct rlimit rl;
    uint32_t u = 0;
    double d = 0;
    int mode = 0; /* 0 run, 1 selftest, 2 free port, 3 mint */
    int no_join = 0;
    int opt;
    int ret = 1;
    sl_status rc;

    memset(&o, 0, sizeof(o));
    o.cfg.proto = SB_P_SLUICE;
    o.cfg.room = "bench";
    o.cfg.secret = getenv("SLUICE_JWT_SECRET");
    o.cfg.tenant[0] = "bench";
    o.cfg.tenant[1] = "noisy";
    o.cfg.token_ttl_s = 3600;
    o.cfg.src_octet = 10;
    o.conns = 100;
    o.pubs = 1;
    o.rate = 10;
    o.size = 200;
    o.duration_s = 5;
    o.warmup_s = 1;
    o.drain_s = 3;
    o.connect_timeout_s = 60;
    o.max_pending = 256;
    o.storm_timeout_s = 60;
    o.slo_ms = 100;

    while ((opt = getopt_long(argc, argv, "h", LONGOPTS, NULL)) != -1) {
        int bad = 0;
        switch (opt) {
        case O_SCEN:
            o.scenario = optarg;
            break;
        case O_PROTO:
            bad = parse_proto(optarg, &o.cfg.proto);
            break;
        case O_URL:
            bad = o.cfg.ntargets >= SB_MAX_TARGETS ||
                  sb_parse_url(optarg, &o.cfg.targets[o.cfg.ntargets++]) != SL_OK;
            break;
        case O_PUB_URL:
            bad = o.cfg.npub_targets >= SB_MAX_TARGETS ||
                  sb_parse_url(optarg, &o.cfg.pub_targets[o.cfg.npub_targets++]) != SL_OK;
            break;
        case O_CONNS:
            bad = parse_u32(optarg, 1, SB_MAX_CONNS, &o.conns);
            break;
        case O_PUBS:
            bad = parse_u32(optarg, 0, 1000, &o.pubs);
            break;
        case O_CONNS_A:
            bad = parse_u32(optarg, 0, SB_MAX_CONNS, &o.conns_a);
            break;
        case O_RATE:
            bad = parse_double(optarg, 0, 1e6, &o.rate);
            break;
        case O_RATE_A:
            bad = parse_double(optarg, 0, 1e6, &o.rate_a);
            break;
        case O_RATES:
            bad = parse_rates(optarg, &o);
            break;
        case O_SIZE:
            bad = parse_u32(optarg, 48, 16384, &u);
            o.size = u;
            break;
        case O_DURATION:
            bad = parse_double(optarg, 0.1, 600, &o.duration_s);
            break;
        case O_WARMUP:
            bad = parse_double(optarg, 0, 120, &o.warmup_s);
            break;
        case O_DRAIN:
            bad = parse_double(optarg, 0, 120, &o.drain_s);
            break;
        case O_CTIMEOUT:
            bad = parse_double(optarg, 1, 600, &o.connect_timeout_s);
            break;
        case O_CRATE:
            bad = parse_double(optarg, 0, 1e6, &o.connect_rate);
            break;
        case O_MAXPEND:
            bad = parse_u32(optarg, 1, SB_MAX_CONNS, &o.max_pending);
            break;
        case O_HEARTBEAT:
            bad = parse_double(optarg, 0, 600, &o.heartbeat_s);
            break;
        case O_STORM_TIMEOUT:
            bad = parse_double(optarg, 1, 600, &o.storm_timeout_s);
            break;
        case O_PID:
            bad = o.npids >= SB_MAX_PIDS || parse_u32(optarg, 1, 1u << 30, &u) != 0;
            if (!bad)
                o.pids[o.npids++] = (pid_t)u;
            break;
        case O_AUX_PID:
            bad = o.naux >= SB_MAX_PIDS || parse_u32(optarg, 1, 1u << 30, &u) != 0;
            if (!bad)
                o.aux_pids[o.naux++] = (pid_t)u;
            break;
        case O_ROOMS:
            bad = parse_u32(optarg, 1, 10000, &u) != 0;
            if (!bad)
                o.cfg.rooms = u;
            break;
        case O_ROOM:
            o.cfg.room = optarg;
            bad = strlen(optarg) == 0 || strlen(optarg) > 64 ||
                  strspn(optarg,
                         "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") !=
                      strlen(optarg);
            break;
        case O_NOJOIN:
            no_join = 1;
            break;
        case O_SECRET:
            o.cfg.secret = optarg;
            break;
        case O_TENANT:
            o.cfg.tenant[0] = optarg;
            break;
        case O_TENANT_A:
            o.cfg.tenant[1] = optarg;
            break;
        case O_TTL:
            bad = parse_double(optarg, 1, 86400 * 30, &d);
            o.cfg.token_ttl_s = (long)d;
            break;
        case O_TOKENS:
            o.cfg.tokens_file = optarg;
            break;
        case O_SRC:
            bad = parse_u32(optarg, 0, 255, &u);
            o.cfg.src_octet = (int)u;
            break;
        case O_SLO:
            bad = parse_double(optarg, 0.001, 600000, &o.slo_ms);
            break;
        case O_MODEL:
            bad = parse_double(optarg, 0, 600000, &o.model_ms);
            break;
        case O_PREFIX:
            o.text_prefix = optarg;
            bad = strlen(optarg) > 32 || strpbrk(optarg, "\"\\") != NULL;
            break;
        case O_LABEL:
            o.label = optarg;
            break;
        case O_OUT:
            out_path = optarg;
            break;
        case O_READY:
            o.ready_file = optarg;
            break;
        case O_SELFTEST:
            mode = 1;
            break;
        case O_FREEPORT:
            mode = 2;
            break;
        case O_MINT:
            mode = 3;
            break;
        case O_HELP:
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "sluice-bench: bad value for --%s: %s\n", opt_name(opt), optarg);
            return 2;
        }
    }
    if (mode == 1)
        return sb_selftest() == 0 ? 0 : 1;
    if (mode == 2) {
        int port = sb_free_port();
        if (port < 0)
            return 1;
        printf("%d\n", port);
        return 0;
    }
    if (mode == 3) {
        char tok[1024];
        if (o.cfg.secret == NULL || sb_jwt_mint(tok, sizeof(tok), o.cfg.secret, o.cfg.tenant[0],
                                                "bench", o.cfg.token_ttl_s) != SL_OK) {
            fprintf(stderr, "sluice-bench: --mint needs --secret or SLUICE_JWT_SECRET\n");
            return 2;
        }
        printf("%s\n", tok);
        return 0;
    }
    if (o.scenario == NULL || o.cfg.ntargets == 0) {
        fprintf(stderr, "sluice-bench: --scenario and --url are required\n");
        usage(stderr);
        return 2;
    }
    if (o.cfg.rooms > 1 && strlen(o.cfg.room) > 58) {
        fprintf(stderr, "sluice-bench: --room must be at most 58 characters with --rooms\n");
        return 2;
    }
    if (no_join && o.cfg.proto == SB_P_SLUICE)
        o.cfg.room = "";
    if (o.cfg.proto == SB_P_SLUICE && o.cfg.secret == NULL && o.cfg.tokens_file == NULL) {
        fprintf(stderr,
                "sluice-bench: sluice needs --secret, SLUICE_JWT_SECRET or --tokens-file\n");
        return 2;
    }
    if ((strcmp(o.scenario, "fanout") == 0 || strcmp(o.scenario, "storm") == 0) && o.pubs == 0) {
        fprintf(stderr, "sluice-bench: %s needs --pubs >= 1\n", o.scenario);
        return 2;
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        (rlim_t)(o.conns + o.pubs + o.conns_a) + 64 > rl.rlim_cur) {
        fprintf(stderr,
                "sluice-bench: %u connections exceed the open-files limit %llu (minus 64)\n",
                o.conns + o.pubs + o.conns_a, (unsigned long long)rl.rlim_cur);
        return 2;
    }
    if (o.conns + o.pubs + o.conns_a > SB_MAX_CONNS) {
        fprintf(stderr, "sluice-bench: at most %d connections per process\n", SB_MAX_CONNS);
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = sb_scen_run(&o, &res);
    if (rc != SL_OK) {
        fprintf(stderr, "sluice-bench: %s failed: %s\n", o.scenario, sl_status_str(rc));
        goto cleanup;
    }
    text = cJSON_Print(res);
    if (text == NULL)
        goto cleanup;
    if (out_path) {
        FILE *f = fopen(out_path, "w");
        if (f == NULL) {
            fprintf(stderr, "sluice-bench: cannot write %s: %s\n", out_path, strerror(errno));
            goto cleanup;
        }
        fprintf(f, "%s\n", text);
        if (fclose(f) != 0)
            goto cleanup;
    } else {
        printf("%s\n", text);
    }
    ret = 0;
cleanup:
    free(text);
    cJSON_Delete(res);
    return ret;
}

/* sluicectl: operator and developer commands.
 *   token --tenant T --sub U [--ttl S] [--room R ...]   mint a development JWT
 *   status                                              streams, consumers, queue depths
 *   tail --tenant T [--count N] [--seconds S]           follow a tenant's events
 *   drain-check                                         is anything still in flight?
 *   usage --tenant T                                    tokens of the last 24 h, per agent
 *   publish, disconnect, presence, history              the server API (ctl_api.c)
 * Configuration comes from the same SLUICE_* variables as the services. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ctl_api.h"
#include "sl_auth.h"
#include "sl_bus.h"
#include "sl_codec.h"
#include "sl_config.h"
#include <cJSON.h>

#include "sl_json.h"
#include "sl_log.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

static int usage(FILE *f)
{
    fprintf(f, "Usage: sluicectl COMMAND [options]\n\n"
               "Commands:\n"
               "  token --tenant T --sub U [--ttl SECONDS] [--room R ...] [--role server]\n"
               "        print a HS256 JWT signed with SLUICE_JWT_SECRET (default ttl 3600);\n"
               "        --role server makes a token for the server API\n"
               "  status\n"
               "        streams, consumers and per-subject queue depths (SLUICE_NATS_URL)\n"
               "  tail --tenant T [--count N] [--seconds S]\n"
               "        print the tenant's events as they happen, one JSON object per line\n"
               "  drain-check\n"
               "        exit 0 when no work is in flight (no unacknowledged or queued\n"
               "        messages on any consumer), 1 otherwise: run before stopping the\n"
               "        last orchestrator or worker of an upgrade\n"
               "  usage --tenant T\n"
               "        the tenant's model tokens (input, output) and replies over the last\n"
               "        24 hours, in total and per agent (from the sluice_usage bucket)\n");
    ctl_api_usage(f);
    fprintf(f, "\nEnvironment: SLUICE_JWT_SECRET, SLUICE_NATS_URL, SLUICE_NATS_USER, "
               "SLUICE_NATS_PASSWORD, SLUICE_API_URL, SLUICE_API_TOKEN\n");
    return f == stdout ? 0 : 2;
}

static int cmd_token(int argc, char **argv)
{
    const char *tenant = NULL, *sub = NULL, *role = NULL, *secret = getenv("SLUICE_JWT_SECRET");
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
        } else if (strcmp(a, "--role") == 0) {
            if (!sl_id_valid(v)) {
                fprintf(stderr, "sluicectl token: --role must be [A-Za-z0-9_-]{1,64}\n");
                return 2;
            }
            role = v;
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
    if (sl_jwt_mint_hs256_role(secret, tenant, sub, (int64_t)time(NULL) + ttl,
                               nrooms >= 0 ? rooms : NULL, nrooms, role, &tok) != SL_OK) {
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
    printf("%-12s msgs=%llu bytes=%llu max_bytes=%lld first=%llu last=%llu consumers=%lld\n", name,
           (unsigned long long)si->State.Msgs, (unsigned long long)si->State.Bytes,
           (long long)si->Config->MaxBytes, (unsigned long long)si->State.FirstSeq,
           (unsigned long long)si->State.LastSeq, (long long)si->State.Consumers);
    if (strcmp(name, SL_STREAM_WORK) == 0 && si->State.Subjects != NULL) {
        for (int i = 0; i < si->State.Subjects->Count; i++)
            printf("  queue %-40s depth=%llu\n", si->State.Subjects->List[i].Subject,
                   (unsigned long long)si->State.Subjects->List[i].Msgs);
    }
    jsStreamInfo_Destroy(si);
}

/* Connects with the SLUICE_NATS_* variables. On success the caller
 * destroys *bus and frees opts with sl_config_free. */
static int open_bus(sl_common_cfg *cc, sl_cfg_opt *opts, sl_bus **bus)
{
    bool help;
    char err[256];

    memset(cc, 0, sizeof(*cc));
    sl_common_opts(opts, cc, "127.0.0.1:9099");
    if (sl_config_load(opts, SL_COMMON_OPTS_N, 0, NULL, &help, err, sizeof(err)) != SL_OK) {
        fprintf(stderr, "sluicectl: %s\n", err);
        return 2;
    }
    sl_log_init("sluicectl", SL_LOG_ERROR);
    if (sl_bus_create(bus, cc, "sluicectl", err, sizeof(err)) != SL_OK || !sl_bus_connected(*bus)) {
        fprintf(stderr, "sluicectl: cannot reach NATS at %s\n", cc->nats_url);
        return 1;
    }
    return 0;
}

static int cmd_status(void)
{
    sl_common_cfg cc;
    sl_cfg_opt opts[SL_COMMON_OPTS_N];
    sl_bus *bus = NULL;
    int rv = open_bus(&cc, opts, &bus);

    if (rv == 0) {
        print_stream(sl_bus_js(bus), SL_STREAM_IN);
        print_stream(sl_bus_js(bus), SL_STREAM_WORK);
        print_stream(sl_bus_js(bus), SL_STREAM_OUT);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_SESSIONS);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_INFLIGHT);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_PRESENCE);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_CANCEL);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_QUOTA);
        print_stream(sl_bus_js(bus), "KV_" SL_KV_USAGE);
    }
    sl_bus_destroy(bus, 0);
    sl_config_free(opts, SL_COMMON_OPTS_N);
    return rv;
}

static volatile sig_atomic_t tail_stop;

static void on_tail_signal(int sig)
{
    (void)sig;
    tail_stop = 1;
}

/* One event as a JSON line: the subject, stream sequence and decoded body. */
static void print_event(natsMsg *m)
{
    Sluice__Envelope *e = NULL;
    const char *seq = NULL;
    uint64_t seqno = 0;
    cJSON *o;
    char *line;

    if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) != SL_OK)
        return;
    natsMsgHeader_Get(m, "Nats-Sequence", &seq);
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "subject", natsMsg_GetSubject(m));
    if (seq == NULL || sl_parse_u64(seq, &seqno) != SL_OK)
        seqno = 0;
    cJSON_AddNumberToObject(o, "seq", (double)seqno);
    cJSON_AddStringToObject(o, "event", e->event_id);
    cJSON_AddStringToObject(o, "session", e->session);
    cJSON_AddStringToObject(o, "message", e->message_id);
    switch (e->body_case) {
    case SLUICE__ENVELOPE__BODY_MESSAGE:
        cJSON_AddStringToObject(o, "kind", "message");
        cJSON_AddStringToObject(o, "from",
                                e->message->agent[0] ? e->message->agent : e->message->user);
        cJSON_AddStringToObject(o, "text", e->message->text);
        break;
    case SLUICE__ENVELOPE__BODY_TOKEN:
        cJSON_AddStringToObject(o, "kind", "token");
        cJSON_AddStringToObject(o, "agent", e->token->agent);
        cJSON_AddStringToObject(o, "text", e->token->text);
        break;
    case SLUICE__ENVELOPE__BODY_REPLY:
        cJSON_AddStringToObject(o, "kind", "reply");
        cJSON_AddStringToObject(o, "agent", e->reply->agent);
        cJSON_AddStringToObject(o, "text", e->reply->text);
        cJSON_AddBoolToObject(o, "degraded", e->reply->degraded);
        cJSON_AddBoolToObject(o, "partial", e->reply->partial);
        cJSON_AddBoolToObject(o, "cancelled", e->reply->cancelled);
        break;
    case SLUICE__ENVELOPE__BODY_PRESENCE:
        cJSON_AddStringToObject(o, "kind", "presence");
        if (e->presence->n_changes == 0) {
            cJSON_AddStringToObject(o, "action", e->presence->action);
            cJSON_AddStringToObject(o, "user", e->presence->user);
        } else {
            cJSON *arr = cJSON_AddArrayToObject(o, "changes");
            for (size_t i = 0; arr != NULL && i < e->presence->n_changes; i++) {
                cJSON *it = cJSON_CreateObject();
                if (it == NULL || !cJSON_AddItemToArray(arr, it)) {
                    cJSON_Delete(it);
                    break;
                }
                cJSON_AddStringToObject(it, "action", e->presence->changes[i]->action);
                cJSON_AddStringToObject(it, "user", e->presence->changes[i]->user);
            }
        }
        break;
    case SLUICE__ENVELOPE__BODY_RECEIPT:
        cJSON_AddStringToObject(o, "kind", "receipt");
        cJSON_AddStringToObject(o, "user", e->receipt->user);
        break;
    case SLUICE__ENVELOPE__BODY_BUSY:
        cJSON_AddStringToObject(o, "kind", "busy");
        cJSON_AddStringToObject(o, "reason", e->busy->reason);
        break;
    default:
        cJSON_AddStringToObject(o, "kind", "other");
        break;
    }
    line = cJSON_PrintUnformatted(o);
    if (line != NULL)
        printf("%s\n", line);
    fflush(stdout);
    free(line);
    cJSON_Delete(o);
    sl_envelope_free(e);
}

static int cmd_tail(int argc, char **argv)
{
    const char *tenant = NULL;
    int64_t count = 0, seconds = 0, seen = 0;
    sl_common_cfg cc;
    sl_cfg_opt opts[SL_COMMON_OPTS_N];
    sl_bus *bus = NULL;
    natsSubscription *sub = NULL;
    char subj[SL_SUBJECT_MAX];
    struct sigaction sa;
    int64_t end;
    int rv;

    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--tenant") == 0)
            tenant = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0 && sl_parse_int(argv[i + 1], &count) == SL_OK)
            continue;
        else if (strcmp(argv[i], "--seconds") == 0 && sl_parse_int(argv[i + 1], &seconds) == SL_OK)
            continue;
        else {
            fprintf(stderr, "sluicectl tail: bad option %s\n", argv[i]);
            return 2;
        }
    }
    /* A valid tenant keeps any wildcard or separator out of the subject. */
    if (sl_subject_live_tenant(subj, sizeof(subj), tenant) != SL_OK) {
        fprintf(stderr, "sluicectl tail: --tenant ([A-Za-z0-9_-]{1,64}) is required\n");
        return 2;
    }
    if ((rv = open_bus(&cc, opts, &bus)) != 0)
        goto cleanup;
    if (natsConnection_SubscribeSync(&sub, sl_bus_nc(bus), subj) != NATS_OK) {
        fprintf(stderr, "sluicectl tail: cannot subscribe to %s\n", subj);
        rv = 1;
        goto cleanup;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_tail_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    end = seconds > 0 ? sl_mono_ms() + seconds * 1000 : INT64_MAX;
    while (!tail_stop && sl_mono_ms() < end && (count <= 0 || seen < count)) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 200) == NATS_OK) {
            print_event(m);
            seen++;
        }
        natsMsg_Destroy(m);
    }
cleanup:
    natsSubscription_Destroy(sub);
    sl_bus_destroy(bus, 0);
    sl_config_free(opts, SL_COMMON_OPTS_N);
    return rv;
}

static int cmd_drain_check(void)
{
    static const char *const streams[] = {SL_STREAM_IN, SL_STREAM_WORK};
    sl_common_cfg cc;
    sl_cfg_opt opts[SL_COMMON_OPTS_N];
    sl_bus *bus = NULL;
    int64_t busy = 0;
    int rv = open_bus(&cc, opts, &bus);

    for (size_t i = 0; rv == 0 && i < 2; i++) {
        jsConsumerInfoList *list = NULL;
        jsErrCode jerr = 0;
        if (js_Consumers(&list, sl_bus_js(bus), streams[i], NULL, &jerr) != NATS_OK) {
            fprintf(stderr, "sluicectl drain-check: cannot list consumers of %s\n", streams[i]);
            rv = 1;
            break;
        }
        for (int k = 0; k < list->Count; k++) {
            jsConsumerInfo *ci = list->List[k];
            printf("%-12s %-20s pending=%llu ack_pending=%lld redelivered=%lld\n", streams[i],
                   ci->Name, (unsigned long long)ci->NumPending, (long long)ci->NumAckPending,
                   (long long)ci->NumRedelivered);
            busy += (int64_t)ci->NumPending + ci->NumAckPending;
        }
        jsConsumerInfoList_Destroy(list);
    }
    if (rv == 0) {
        printf("%s\n", busy == 0 ? "drained: nothing in flight" : "not drained: work in flight");
        rv = busy == 0 ? 0 : 1;
    }
    sl_bus_destroy(bus, 0);
    sl_config_free(opts, SL_COMMON_OPTS_N);
    return rv;
}

/* One agent's sums for `usage`. */
typedef struct usage_row {
    char agent[SL_ID_MAX + 1];
    uint64_t in, out, replies;
} usage_row;

#define USAGE_AGENTS_MAX 1024
#define USAGE_SLOTS      (86400 / SL_USAGE_SLOT_S) /* 24 h of slots, the current one included */

static uint64_t json_u64(const cJSON *o, const char *name)
{
    int64_t v = 0;
    (void)sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, name), 0, SL_JSON_INT_MAX, &v);
    return (uint64_t)v;
}

/* Reads the tenant's keys "<t>.<slot>.<agent>" of sluice_usage with a
 * watch (its initial values, then the end marker) and sums the last 24 h. */
static int cmd_usage(int argc, char **argv)
{
    const char *tenant = NULL;
    sl_common_cfg cc;
    sl_cfg_opt opts[SL_COMMON_OPTS_N];
    sl_bus *bus = NULL;
    kvStore *kv = NULL;
    kvWatcher *w = NULL;
    kvWatchOptions wo;
    usage_row *rows = NULL, total = {.agent = "total"};
    size_t nrows = 0;
    char filter[SL_ID_MAX + 8];
    int rv;

    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc) {
            tenant = argv[++i];
        } else {
            fprintf(stderr, "sluicectl usage: bad option %s\n", argv[i]);
            return 2;
        }
    }
    if (!sl_id_valid(tenant)) {
        fprintf(stderr, "sluicectl usage: --tenant ([A-Za-z0-9_-]{1,64}) is required\n");
        return 2;
    }
    rv = open_bus(&cc, opts, &bus);
    if (rv != 0)
        goto cleanup;
    rows = calloc(USAGE_AGENTS_MAX, sizeof(*rows));
    if (rows == NULL || sl_bus_kv(bus, SL_KV_USAGE, &kv) != SL_OK) {
        fprintf(stderr, "sluicectl usage: cannot open the bucket %s\n", SL_KV_USAGE);
        rv = 1;
        goto cleanup;
    }
    (void)sl_kv_key_tenant_filter(filter, sizeof(filter), tenant); /* a valid id: fits */
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    if (kvStore_Watch(&w, kv, filter, &wo) != NATS_OK) {
        fprintf(stderr, "sluicectl usage: cannot read the bucket %s\n", SL_KV_USAGE);
        rv = 1;
        goto cleanup;
    }
    int64_t now_slot = (int64_t)time(NULL) / SL_USAGE_SLOT_S;
    for (;;) {
        kvEntry *e = NULL;
        natsStatus s = kvWatcher_Next(&e, w, 5000);
        if (s != NATS_OK) {
            fprintf(stderr, "sluicectl usage: reading %s: %s\n", SL_KV_USAGE,
                    natsStatus_GetText(s));
            rv = 1;
            goto cleanup;
        }
        if (e == NULL)
            break; /* every current value was delivered */
        char ktenant[SL_ID_MAX + 1], agent[SL_ID_MAX + 1];
        int64_t slot = 0;
        if (sl_kv_key_usage_parse(kvEntry_Key(e), ktenant, &slot, agent) == SL_OK &&
            strcmp(ktenant, tenant) == 0 && slot > now_slot - USAGE_SLOTS && slot <= now_slot + 1) {
            cJSON *o = cJSON_ParseWithLength(kvEntry_ValueString(e), (size_t)kvEntry_ValueLen(e));
            size_t i = 0;
            while (i < nrows && strcmp(rows[i].agent, agent) != 0)
                i++;
            if (i == nrows && nrows < USAGE_AGENTS_MAX)
                snprintf(rows[nrows++].agent, sizeof(rows[0].agent), "%s", agent);
            if (i < nrows) {
                rows[i].in += json_u64(o, "in");
                rows[i].out += json_u64(o, "out");
                rows[i].replies += json_u64(o, "replies");
            }
            total.in += json_u64(o, "in");
            total.out += json_u64(o, "out");
            total.replies += json_u64(o, "replies");
            cJSON_Delete(o);
        }
        kvEntry_Destroy(e);
    }
    printf("tenant %s, last 24 h (%d slots of %d s):\n", tenant, USAGE_SLOTS, SL_USAGE_SLOT_S);
    printf("%-24s input_tokens=%llu output_tokens=%llu replies=%llu\n", "total",
           (unsigned long long)total.in, (unsigned long long)total.out,
           (unsigned long long)total.replies);
    for (size_t i = 0; i < nrows; i++)
        printf("agent %-18s input_tokens=%llu output_tokens=%llu replies=%llu\n", rows[i].agent,
               (unsigned long long)rows[i].in, (unsigned long long)rows[i].out,
               (unsigned long long)rows[i].replies);
cleanup:
    kvWatcher_Destroy(w);
    kvStore_Destroy(kv);
    free(rows);
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
    if (strcmp(argv[1], "tail") == 0)
        return cmd_tail(argc, argv);
    if (strcmp(argv[1], "drain-check") == 0)
        return cmd_drain_check();
    if (strcmp(argv[1], "usage") == 0)
        return cmd_usage(argc, argv);
    if (ctl_api_is_command(argv[1]))
        return ctl_api_main(argc, argv);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0)
        return usage(stdout);
    fprintf(stderr, "sluicectl: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}

#include "ctl_api.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_auth.h"
#include "sl_codec.h"
#include "sl_config.h"
#include "sl_subject.h"

#define TOKEN_TTL_S 300 /* a minted server token lives this long */
#define TIMEOUT_S   30
#define ANSWER_MAX  (64 * 1024 * 1024)

typedef struct opts {
    const char *url, *token, *tenant, *sub;
    const char *room, *from, *id, *text, *user, *ch, *limit, *before;
    bool no_agents;
} opts;

typedef struct buf {
    char *p;
    size_t n;
    bool over;
} buf;

bool ctl_api_is_command(const char *cmd)
{
    return cmd != NULL && (strcmp(cmd, "publish") == 0 || strcmp(cmd, "disconnect") == 0 ||
                           strcmp(cmd, "presence") == 0 || strcmp(cmd, "history") == 0);
}

void ctl_api_usage(FILE *f)
{
    fprintf(f, "  publish --room R --from USER [--id ID] [--no-agents] TEXT\n"
               "        post TEXT to room R as USER, marked as the server's (server API)\n"
               "  disconnect --user USER\n"
               "        close every connection of USER with 4403 on every gateway\n"
               "  presence --room R\n"
               "        the room's members (user, session)\n"
               "  history --ch r:R [--limit N] [--before SEQ]\n"
               "        the room's events, as a client's history answer\n"
               "        API commands take --url (default $SLUICE_API_URL, else\n"
               "        http://127.0.0.1:8080) and --token T (default $SLUICE_API_TOKEN), or\n"
               "        --tenant T to mint a server token from SLUICE_JWT_SECRET\n");
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *ud)
{
    buf *b = ud;
    size_t len = size * nmemb;
    char *np;

    if (b->over || b->n + len > ANSWER_MAX) {
        b->over = true;
        return 0;
    }
    np = realloc(b->p, b->n + len + 1);
    if (np == NULL)
        return 0;
    memcpy(np + b->n, data, len);
    b->n += len;
    np[b->n] = '\0';
    b->p = np;
    return len;
}

/* Sends the request; prints the body. body NULL: a GET. */
static int request(const char *cmd, const opts *o, const char *path, const char *body)
{
    CURL *c = NULL;
    struct curl_slist *h = NULL;
    char *auth = NULL, *url = NULL, *minted = NULL;
    const char *token = o->token;
    buf b = {NULL, 0, false};
    long status = 0;
    int rv = 1;
    CURLcode cc;

    if (token == NULL) {
        const char *secret = getenv("SLUICE_JWT_SECRET");
        if (secret == NULL || secret[0] == '\0' || !sl_id_valid(o->tenant)) {
            fprintf(stderr,
                    "sluicectl %s: give --token (or SLUICE_API_TOKEN), or --tenant with "
                    "SLUICE_JWT_SECRET set\n",
                    cmd);
            return 2;
        }
        if (sl_jwt_mint_hs256_role(secret, o->tenant, o->sub, (int64_t)time(NULL) + TOKEN_TTL_S,
                                   NULL, 0, "server", &minted) != SL_OK) {
            fprintf(stderr, "sluicectl %s: cannot mint a server token\n", cmd);
            return 2;
        }
        token = minted;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (c = curl_easy_init()) == NULL) {
        fprintf(stderr, "sluicectl %s: cannot start libcurl\n", cmd);
        goto cleanup;
    }
    if (asprintf(&auth, "Authorization: Bearer %s", token) < 0 ||
        asprintf(&url, "%s%s", o->url, path) < 0) {
        auth = url = NULL;
        goto cleanup;
    }
    h = curl_slist_append(h, auth);
    if (body != NULL)
        h = curl_slist_append(h, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        fprintf(stderr, "sluicectl %s: %s: %s\n", cmd, url, curl_easy_strerror(cc));
        goto cleanup;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) {
        printf("%s\n", b.p != NULL ? b.p : "");
        rv = 0;
    } else {
        fprintf(stderr, "sluicectl %s: HTTP %ld: %s\n", cmd, status, b.p != NULL ? b.p : "");
    }
cleanup:
    curl_slist_free_all(h);
    if (c != NULL)
        curl_easy_cleanup(c);
    free(b.p);
    free(auth);
    free(url);
    free(minted);
    return rv;
}

static int bad_opts(const char *cmd, const char *why)
{
    fprintf(stderr, "sluicectl %s: %s\n", cmd, why);
    return 2;
}

int ctl_api_main(int argc, char **argv)
{
    const char *cmd = argv[1];
    opts o;
    char *body = NULL, *path = NULL;
    int rv;

    memset(&o, 0, sizeof(o));
    o.url = getenv("SLUICE_API_URL") ? getenv("SLUICE_API_URL") : "http://127.0.0.1:8080";
    o.token = getenv("SLUICE_API_TOKEN") && getenv("SLUICE_API_TOKEN")[0]
                  ? getenv("SLUICE_API_TOKEN")
                  : NULL;
    o.sub = "sluicectl";
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **slot = NULL;
        if (strcmp(a, "--no-agents") == 0) {
            o.no_agents = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) {
            if (strcmp(cmd, "publish") != 0 || o.text != NULL)
                return bad_opts(cmd, "unexpected argument (quote the text)");
            o.text = a;
            continue;
        }
        if (strcmp(a, "--url") == 0)
            slot = &o.url;
        else if (strcmp(a, "--token") == 0)
            slot = &o.token;
        else if (strcmp(a, "--tenant") == 0)
            slot = &o.tenant;
        else if (strcmp(a, "--room") == 0)
            slot = &o.room;
        else if (strcmp(a, "--from") == 0)
            slot = &o.from;
        else if (strcmp(a, "--id") == 0)
            slot = &o.id;
        else if (strcmp(a, "--text") == 0)
            slot = &o.text;
        else if (strcmp(a, "--user") == 0)
            slot = &o.user;
        else if (strcmp(a, "--ch") == 0)
            slot = &o.ch;
        else if (strcmp(a, "--limit") == 0)
            slot = &o.limit;
        else if (strcmp(a, "--before") == 0)
            slot = &o.before;
        if (slot == NULL) {
            fprintf(stderr, "sluicectl %s: unknown option %s\n", cmd, a);
            return 2;
        }
        if (v == NULL) {
            fprintf(stderr, "sluicectl %s: %s needs a value\n", cmd, a);
            return 2;
        }
        *slot = v;
        i++;
    }
    if (strcmp(cmd, "publish") == 0) {
        cJSON *j = cJSON_CreateObject();
        char gen[SL_EVENT_ID_LEN + 8];
        if (o.room == NULL || o.from == NULL || o.text == NULL) {
            cJSON_Delete(j);
            return bad_opts(cmd, "--room, --from and the text are required");
        }
        if (o.id == NULL) {
            char ev[SL_EVENT_ID_LEN + 1];
            sl_event_id_new(ev);
            snprintf(gen, sizeof(gen), "ctl-%s", ev);
            o.id = gen;
        }
        cJSON_AddStringToObject(j, "room", o.room);
        cJSON_AddStringToObject(j, "text", o.text);
        cJSON_AddStringToObject(j, "from", o.from);
        cJSON_AddStringToObject(j, "id", o.id);
        cJSON_AddBoolToObject(j, "agents", !o.no_agents);
        body = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        rv = body != NULL ? request(cmd, &o, "/v1/api/publish", body) : 1;
    } else if (strcmp(cmd, "disconnect") == 0) {
        cJSON *j = cJSON_CreateObject();
        if (o.user == NULL) {
            cJSON_Delete(j);
            return bad_opts(cmd, "--user is required");
        }
        cJSON_AddStringToObject(j, "user", o.user);
        body = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        rv = body != NULL ? request(cmd, &o, "/v1/api/disconnect", body) : 1;
    } else if (strcmp(cmd, "presence") == 0) {
        if (o.room == NULL)
            return bad_opts(cmd, "--room is required");
        /* Ids need no escaping; anything else is the gateway's to refuse. */
        if (asprintf(&path, "/v1/api/presence?room=%s", o.room) < 0)
            return 1;
        rv = request(cmd, &o, path, NULL);
    } else {
        if (o.ch == NULL)
            return bad_opts(cmd, "--ch is required");
        if (asprintf(&path, "/v1/api/history?ch=%s%s%s%s%s", o.ch, o.limit ? "&limit=" : "",
                     o.limit ? o.limit : "", o.before ? "&before=" : "",
                     o.before ? o.before : "") < 0)
            return 1;
        rv = request(cmd, &o, path, NULL);
    }
    free(body);
    free(path);
    return rv;
}

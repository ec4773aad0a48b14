/* The openai backend: one streamed POST to an OpenAI-compatible
 * /v1/chat/completions endpoint per call, over libcurl.
 *
 * Each call drives its own transfer with a multi handle on the calling
 * thread, polling at most OA_POLL_MS at a time, so cancel and the deadline
 * are noticed within that long whether or not bytes are flowing (the easy
 * interface would only look every second while a server is silent). The
 * multi handles, which hold the connection cache, go back to a small pool
 * after each call so that later calls reuse warm keep-alive connections. */
#include "wrk_backend.h"
#include "wrk_sse.h"

#include "sl_json.h"

#include <cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define OA_POLL_MS            25   /* longest wait before looking at cancel and the deadline */
#define OA_DONE_GRACE_MS      200  /* after [DONE], how long the body's end may take */
#define OA_BACKSTOP_MS        50   /* CURLOPT_TIMEOUT_MS beyond the deadline */
#define OA_CONNECT_DEFAULT_MS 3000 /* CURLOPT_CONNECTTIMEOUT_MS when the config says 0 */
#define OA_ERR_BODY_MAX       4096 /* bytes of a non-2xx body kept for the error */
#define OA_JSON_BODY_MAX      (1024 * 1024) /* a non-streamed JSON answer */
#define OA_POOL_MAX           32            /* idle multi handles kept */
#define OA_RETRY_AFTER_MAX_MS (3600LL * 1000)
#define OA_USAGE_MAX          INT64_C(1000000000000) /* larger token counts are not believed */

static atomic_int g_curl_init;

struct wrk__openai {
    char *endpoint; /* full URL of chat/completions */
    char *auth;     /* "Authorization: Bearer ..." or NULL */
    long connect_timeout_ms;
    /* Set once the server refused "stream_options" (an older server): the
     * requests after that do not send it, and usage is estimated. */
    atomic_int no_stream_options;
    pthread_mutex_t lock; /* guards pool and npool */
    CURLM *pool[OA_POOL_MAX];
    size_t npool;
};

typedef enum body_kind {
    BODY_UNKNOWN, /* no body byte seen yet */
    BODY_SSE,     /* 2xx, the stream */
    BODY_JSON,    /* 2xx application/json: a server that ignored stream:true */
    BODY_ERROR,   /* non-2xx: kept for the error message */
} body_kind;

/* The state of one call; lives on the calling thread's stack. */
typedef struct oa_call {
    wrk__openai *o;
    const wrk_call *call;
    wrk_token_fn fn;
    void *ud;
    wrk_result *res;
    CURL *e;
    wrk_sse *sse;
    body_kind kind;
    long status;
    char *body;
    size_t body_len, body_cap, body_max;
    size_t nevents;
    int done; /* [DONE] seen: the answer is complete */
    int64_t done_at;
    int finish_seen; /* a choice carried a finish_reason */
    int stopped;     /* a callback settled the outcome in res */
} oa_call;

sl_status wrk_backend_global_init(void)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return SL_ERR_INTERNAL;
    atomic_fetch_add(&g_curl_init, 1);
    return SL_OK;
}

void wrk_backend_global_cleanup(void)
{
    if (atomic_load(&g_curl_init) <= 0)
        return;
    atomic_fetch_sub(&g_curl_init, 1);
    curl_global_cleanup();
}

/* Copies at most len bytes of s into dst (size n) as one printable line:
 * control bytes become spaces and a cut never splits a UTF-8 sequence. */
static void clip(char *dst, size_t n, const char *s, size_t len)
{
    if (n == 0)
        return;
    size_t j = 0;
    for (size_t i = 0; i < len && j + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        dst[j++] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
    }
    if (j + 1 >= n && j < len) {
        /* Truncated: drop a trailing partial UTF-8 sequence. */
        size_t k = j;
        while (k > 0 && ((unsigned char)dst[k - 1] & 0xC0) == 0x80)
            k--;
        if (k > 0 && ((unsigned char)dst[k - 1] & 0xC0) == 0xC0)
            j = k - 1;
    }
    dst[j] = '\0';
}

static int starts_with_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && memcmp(s + len - n, suffix, n) == 0;
}

sl_status wrk__openai_create(wrk__openai **out, const wrk_backend_cfg *cfg, char *err,
                             size_t errlen)
{
    sl_status st = SL_OK;
    wrk__openai *o = NULL;
    const char *url = cfg->url;

    if (atomic_load(&g_curl_init) <= 0) {
        sl_errf(err, errlen, "openai backend: wrk_backend_global_init() was not called");
        return SL_ERR_INVAL;
    }
    if (!url || !*url) {
        sl_errf(err, errlen, "openai backend: a model URL is required");
        return SL_ERR_INVAL;
    }
    if (!starts_with_ci(url, "http://") && !starts_with_ci(url, "https://")) {
        sl_errf(err, errlen, "openai backend: the model URL must start with http:// or https://");
        return SL_ERR_INVAL;
    }
    for (const char *p = url; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            sl_errf(err, errlen, "openai backend: the model URL contains a space or control byte");
            return SL_ERR_INVAL;
        }
    }
    if (cfg->connect_timeout_ms < 0) {
        sl_errf(err, errlen, "openai backend: connect timeout must be >= 0 ms");
        return SL_ERR_INVAL;
    }

    o = calloc(1, sizeof(*o));
    if (!o)
        goto nomem;
    if (pthread_mutex_init(&o->lock, NULL) != 0) {
        free(o);
        sl_errf(err, errlen, "openai backend: pthread_mutex_init failed");
        return SL_ERR_INTERNAL;
    }
    o->connect_timeout_ms =
        cfg->connect_timeout_ms ? (long)cfg->connect_timeout_ms : OA_CONNECT_DEFAULT_MS;

    size_t len = strlen(url);
    while (len > 0 && url[len - 1] == '/')
        len--;
    const char *suffix = "/v1/chat/completions";
    if (ends_with(url, len, "/v1/chat/completions"))
        suffix = "";
    else if (ends_with(url, len, "/v1"))
        suffix = "/chat/completions";
    size_t n = len + strlen(suffix) + 1;
    o->endpoint = malloc(n);
    if (!o->endpoint)
        goto nomem;
    snprintf(o->endpoint, n, "%.*s%s", (int)len, url, suffix);

    if (cfg->api_key && *cfg->api_key) {
        for (const char *p = cfg->api_key; *p; p++) {
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                sl_errf(err, errlen, "openai backend: the API key contains a control byte");
                st = SL_ERR_INVAL;
                goto cleanup;
            }
        }
        n = strlen("Authorization: Bearer ") + strlen(cfg->api_key) + 1;
        o->auth = malloc(n);
        if (!o->auth)
            goto nomem;
        snprintf(o->auth, n, "Authorization: Bearer %s", cfg->api_key);
    }
    *out = o;
    o = NULL;
    goto cleanup;
nomem:
    sl_errf(err, errlen, "out of memory");
    st = SL_ERR_NOMEM;
cleanup:
    wrk__openai_destroy(o);
    return st;
}

void wrk__openai_destroy(wrk__openai *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->npool; i++)
        curl_multi_cleanup(o->pool[i]);
    pthread_mutex_destroy(&o->lock);
    free(o->endpoint);
    free(o->auth);
    free(o);
}

static CURLM *pool_get(wrk__openai *o)
{
    CURLM *m = NULL;
    pthread_mutex_lock(&o->lock);
    if (o->npool > 0)
        m = o->pool[--o->npool];
    pthread_mutex_unlock(&o->lock);
    return m ? m : curl_multi_init();
}

static void pool_put(wrk__openai *o, CURLM *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&o->lock);
    if (o->npool < OA_POOL_MAX) {
        o->pool[o->npool++] = m;
        m = NULL;
    }
    pthread_mutex_unlock(&o->lock);
    if (m)
        curl_multi_cleanup(m);
}

static int is_cancelled(const wrk_call *call)
{
    return call->cancel && *call->cancel;
}

/* Settles the outcome from inside a callback; the transfer is then aborted. */
static void stop(oa_call *c, wrk_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void stop(oa_call *c, wrk_outcome o, const char *fmt, ...)
{
    va_list ap;
    c->stopped = 1;
    c->res->outcome = o;
    va_start(ap, fmt);
    vsnprintf(c->res->error, sizeof(c->res->error), fmt, ap);
    va_end(ap);
}

static int emit(oa_call *c, const char *text, size_t len)
{
    if (len == 0)
        return 0;
    c->res->ntokens++;
    if (c->fn && c->fn(c->ud, text, len) != 0) {
        stop(c, WRK_CANCELLED, "%s", "aborted by the token callback");
        return 1;
    }
    return 0;
}

/* Reports an OpenAI-style error object ({"message","type","code"} or a
 * plain string). Overload and rate limits are transient, the rest fatal. */
static void report_error_object(oa_call *c, const cJSON *err, const char *where)
{
    const cJSON *msg = cJSON_IsString(err) ? err : cJSON_GetObjectItemCaseSensitive(err, "message");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(err, "type");
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(err, "code");
    const char *kinds[] = {"server_error", "rate_limit_exceeded", "overloaded_error",
                           "service_unavailable"};
    int transient = 0;
    if (cJSON_IsNumber(code) && (code->valueint == 429 || code->valueint >= 500))
        transient = 1;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if ((cJSON_IsString(type) && strcmp(type->valuestring, kinds[i]) == 0) ||
            (cJSON_IsString(code) && strcmp(code->valuestring, kinds[i]) == 0))
            transient = 1;
    }
    char text[200];
    if (cJSON_IsString(msg))
        clip(text, sizeof(text), msg->valuestring, strlen(msg->valuestring));
    else
        snprintf(text, sizeof(text), "(no message)");
    c->stopped = 1;
    wrk__result_set(c->res, transient ? WRK_TRANSIENT : WRK_FATAL, "%s: %s%s%s%s", where, text,
                    cJSON_IsString(type) ? " (" : "", cJSON_IsString(type) ? type->valuestring : "",
                    cJSON_IsString(type) ? ")" : "");
}

/* Keeps the model's own count of tokens, {"usage":{"prompt_tokens":N,
 * "completion_tokens":M}}, when an object carries one with both numbers. */
static void read_usage(oa_call *c, const cJSON *j)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    int64_t in = 0, out = 0;

    if (!sl_json_get_int(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens"), 0, OA_USAGE_MAX,
                         &in) ||
        !sl_json_get_int(cJSON_GetObjectItemCaseSensitive(u, "completion_tokens"), 0, OA_USAGE_MAX,
                         &out))
        return;
    c->res->input_tokens = in;
    c->res->output_tokens = out;
}

static int on_event(void *ud, const char *event, const char *data, size_t len)
{
    oa_call *c = ud;
    char excerpt[96];
    int rc = 0;

    c->nevents++;
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->done = 1;
        c->done_at = sl_mono_ms();
        return 0;
    }
    cJSON *j = cJSON_ParseWithLength(data, len);
    if (!j || !cJSON_IsObject(j)) {
        clip(excerpt, sizeof(excerpt), data, len);
        stop(c, WRK_FATAL, "malformed SSE data from the model server (not a JSON object): %s",
             excerpt);
        rc = 1;
        goto cleanup;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if ((err && !cJSON_IsNull(err)) || strcmp(event, "error") == 0) {
        report_error_object(c, err && !cJSON_IsNull(err) ? err : j, "model server stream error");
        rc = 1;
        goto cleanup;
    }
    read_usage(c, j);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *ch0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!ch0)
        goto cleanup; /* e.g. a usage-only chunk */
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(ch0, "delta");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(delta, "content");
    if (cJSON_IsString(content) && emit(c, content->valuestring, strlen(content->valuestring))) {
        rc = 1;
        goto cleanup;
    }
    if (cJSON_IsString(cJSON_GetObjectItemCaseSensitive(ch0, "finish_reason")))
        c->finish_seen = 1;
cleanup:
    cJSON_Delete(j);
    return rc;
}

static void classify_body(oa_call *c)
{
    const char *ctype = NULL;
    curl_easy_getinfo(c->e, CURLINFO_RESPONSE_CODE, &c->status);
    curl_easy_getinfo(c->e, CURLINFO_CONTENT_TYPE, &ctype);
    if (c->status < 200 || c->status > 299) {
        c->kind = BODY_ERROR;
        c->body_max = OA_ERR_BODY_MAX;
    } else if (ctype && starts_with_ci(ctype, "application/json")) {
        c->kind = BODY_JSON;
        c->body_max = OA_JSON_BODY_MAX;
    } else {
        c->kind = BODY_SSE;
    }
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    oa_call *c = ud;
    size_t n = size * nmemb;

    if (c->stopped)
        return 0;
    if (c->kind == BODY_UNKNOWN)
        classify_body(c);
    if (c->kind == BODY_SSE) {
        if (c->done)
            return n; /* whatever follows [DONE] does not matter */
        sl_status st = wrk_sse_feed(c->sse, ptr, n);
        if (st == SL_OK)
            return n;
        if (st == SL_ERR_FULL)
            stop(c, WRK_FATAL, "%s", "a server-sent event from the model server exceeds 1 MiB");
        else if (st != SL_ERR_CLOSED || !c->stopped)
            stop(c, WRK_TRANSIENT, "SSE parser: %s", sl_status_str(st));
        return 0;
    }
    /* BODY_JSON and BODY_ERROR keep the first body_max bytes. */
    if (c->kind == BODY_JSON && c->body_len + n > c->body_max) {
        stop(c, WRK_FATAL, "%s", "the model server's JSON answer exceeds 1 MiB");
        return 0;
    }
    size_t take = c->body_max - c->body_len < n ? c->body_max - c->body_len : n;
    if (take > 0) {
        if (c->body_len + take + 1 > c->body_cap) {
            size_t cap = c->body_cap ? c->body_cap : 1024;
            while (cap < c->body_len + take + 1)
                cap *= 2;
            char *nb = realloc(c->body, cap);
            if (!nb) {
                stop(c, WRK_TRANSIENT, "%s", "out of memory reading the response");
                return 0;
            }
            c->body = nb;
            c->body_cap = cap;
        }
        memcpy(c->body + c->body_len, ptr, take);
        c->body_len += take;
        c->body[c->body_len] = '\0';
    }
    return n;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    oa_call *c = ud;
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return is_cancelled(c->call) || sl_mono_ms() >= c->call->deadline_ms;
}

/* Builds {"model":..., "messages":[...], "stream":true} and, when
 * stream_options, "stream_options":{"include_usage":true} (asks the server
 * for a last chunk with the call's usage); NULL when out of memory. The
 * caller frees the result with cJSON_free(). */
static char *build_request(const wrk_call *call, bool stream_options)
{
    char *out = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NULL;
    if (call->model && *call->model && !cJSON_AddStringToObject(root, "model", call->model))
        goto cleanup;
    cJSON *msgs = cJSON_AddArrayToObject(root, "messages");
    if (!msgs)
        goto cleanup;
    for (size_t i = 0; i < call->nmsgs; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m)
            goto cleanup;
        if (!cJSON_AddItemToArray(msgs, m)) {
            cJSON_Delete(m);
            goto cleanup;
        }
        const wrk_msg *w = &call->msgs[i];
        if (!cJSON_AddStringToObject(m, "role", w->role ? w->role : "user") ||
            !cJSON_AddStringToObject(m, "content", w->content ? w->content : ""))
            goto cleanup;
    }
    if (!cJSON_AddTrueToObject(root, "stream"))
        goto cleanup;
    if (stream_options) {
        cJSON *so = cJSON_AddObjectToObject(root, "stream_options");
        if (!so || !cJSON_AddTrueToObject(so, "include_usage"))
            goto cleanup;
    }
    out = cJSON_PrintUnformatted(root);
cleanup:
    cJSON_Delete(root);
    return out;
}

/* Reads a header of the last response as a non-negative integer; -1 when
 * absent or not a plain number (an HTTP date, say). */
static int64_t header_int(CURL *e, const char *name)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(e, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h || !h->value)
        return -1;
    const char *p = h->value;
    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    int64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > OA_RETRY_AFTER_MAX_MS)
            return OA_RETRY_AFTER_MAX_MS;
        v = v * 10 + (*p - '0');
    }
    while (*p == ' ' || *p == '\t')
        p++;
    return *p ? -1 : v;
}

static void read_retry_after(oa_call *c)
{
    int64_t ms = header_int(c->e, "retry-after-ms");
    if (ms < 0) {
        int64_t s = header_int(c->e, "retry-after");
        if (s >= 0)
            ms = s > OA_RETRY_AFTER_MAX_MS / 1000 ? OA_RETRY_AFTER_MAX_MS : s * 1000;
    }
    if (ms > OA_RETRY_AFTER_MAX_MS)
        ms = OA_RETRY_AFTER_MAX_MS;
    c->res->retry_after_ms = ms;
}

/* Settles the outcome of a non-2xx response from its status and body. */
static void finish_http_error(oa_call *c)
{
    char text[200] = "";
    long s = c->status;
    cJSON *j = c->body_len ? cJSON_ParseWithLength(c->body, c->body_len) : NULL;
    const cJSON *msg = NULL;
    if (cJSON_IsObject(j)) {
        const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
        if (cJSON_IsString(err))
            msg = err;
        else if (cJSON_IsObject(err))
            msg = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (!cJSON_IsString(msg))
            msg = cJSON_GetObjectItemCaseSensitive(j, "message");
        if (!cJSON_IsString(msg))
            msg = cJSON_GetObjectItemCaseSensitive(j, "detail");
    }
    if (cJSON_IsString(msg))
        clip(text, sizeof(text), msg->valuestring, strlen(msg->valuestring));
    else if (c->body_len)
        clip(text, sizeof(text), c->body, c->body_len);
    cJSON_Delete(j);
    wrk_outcome o = (s == 408 || s == 429 || s >= 500) ? WRK_TRANSIENT : WRK_FATAL;
    if (s == 400 && c->body_len > 0 && !atomic_load(&c->o->no_stream_options) &&
        memmem(c->body, c->body_len, "stream_options", 14) != NULL) {
        /* A server that does not know stream_options: never send it
         * again, and let the job's next attempt go without it. */
        atomic_store(&c->o->no_stream_options, 1);
        o = WRK_TRANSIENT;
    }
    wrk__result_set(c->res, o, "model server answered HTTP %ld%s%s", s, text[0] ? ": " : "", text);
}

/* Settles the outcome of a 2xx application/json answer (no streaming). */
static void finish_json(oa_call *c)
{
    cJSON *j = cJSON_ParseWithLength(c->body ? c->body : "", c->body_len);
    if (!cJSON_IsObject(j)) {
        wrk__result_set(c->res, WRK_FATAL, "the model server's JSON answer does not parse");
        goto cleanup;
    }
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (err && !cJSON_IsNull(err)) {
        report_error_object(c, err, "model server error");
        goto cleanup;
    }
    read_usage(c, j);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *ch0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch0, "message");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsString(content)) {
        wrk__result_set(c->res, WRK_FATAL,
                        "the model server's JSON answer has no "
                        "choices[0].message.content");
        goto cleanup;
    }
    if (emit(c, content->valuestring, strlen(content->valuestring)) == 0)
        wrk__result_set(c->res, WRK_DONE, NULL);
cleanup:
    cJSON_Delete(j);
}

static int curl_error_is_fatal(CURLcode rc)
{
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_BAD_FUNCTION_ARGUMENT:
    case CURLE_TOO_MANY_REDIRECTS:
        return 1;
    default:
        return 0;
    }
}

/* Settles the outcome once the transfer finished with rc. */
static void finish_transfer(oa_call *c, CURLcode rc, const char *errbuf)
{
    const wrk_call *call = c->call;
    if (rc == CURLE_ABORTED_BY_CALLBACK) {
        if (is_cancelled(call))
            wrk__result_set(c->res, WRK_CANCELLED, "cancelled");
        else
            wrk__result_set(c->res, WRK_DEADLINE, "deadline reached (%zu tokens streamed)",
                            c->res->ntokens);
        return;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT && sl_mono_ms() >= call->deadline_ms) {
        wrk__result_set(c->res, WRK_DEADLINE, "deadline reached (%zu tokens streamed)",
                        c->res->ntokens);
        return;
    }
    if (c->status != 0 && (c->status < 200 || c->status > 299)) {
        finish_http_error(c);
        return;
    }
    if (rc != CURLE_OK) {
        wrk__result_set(c->res, curl_error_is_fatal(rc) ? WRK_FATAL : WRK_TRANSIENT,
                        "model server %s: %s",
                        c->kind == BODY_UNKNOWN ? "request failed" : "stream broke",
                        errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return;
    }
    if (c->kind == BODY_JSON) {
        finish_json(c);
        return;
    }
    if (c->kind == BODY_UNKNOWN) {
        wrk__result_set(c->res, WRK_FATAL, "the model server sent an empty response (HTTP %ld)",
                        c->status);
        return;
    }
    sl_status st = wrk_sse_finish(c->sse);
    if (c->done) {
        wrk__result_set(c->res, WRK_DONE, NULL);
    } else if (c->stopped) {
        /* the last event settled it */
    } else if (st == SL_ERR_FULL) {
        wrk__result_set(c->res, WRK_FATAL,
                        "a server-sent event from the model server "
                        "exceeds 1 MiB");
    } else if (c->finish_seen) {
        wrk__result_set(c->res, WRK_DONE, NULL);
    } else if (c->nevents == 0) {
        const char *ctype = NULL;
        curl_easy_getinfo(c->e, CURLINFO_CONTENT_TYPE, &ctype);
        wrk__result_set(c->res, WRK_FATAL,
                        "the model server's answer holds no server-sent events "
                        "(Content-Type: %.64s)",
                        ctype ? ctype : "none");
    } else {
        wrk__result_set(c->res, WRK_TRANSIENT, "the model server's stream ended before [DONE]");
    }
}

#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        if (crc == CURLE_OK)                                                                       \
            crc = curl_easy_setopt(c.e, opt, val);                                                 \
    } while (0)

void wrk__openai_call(wrk__openai *o, const wrk_call *call, wrk_token_fn fn, void *ud,
                      wrk_result *res)
{
    oa_call c = {.o = o, .call = call, .fn = fn, .ud = ud, .res = res};
    char *req = NULL;
    struct curl_slist *hdrs = NULL;
    CURLM *m = NULL;
    int added = 0;
    char errbuf[CURL_ERROR_SIZE] = "";
    CURLcode crc = CURLE_OK;

    req = build_request(call, !atomic_load(&o->no_stream_options));
    m = pool_get(o);
    c.e = curl_easy_init();
    if (!req || !m || !c.e || wrk_sse_create(&c.sse, 0, on_event, &c) != SL_OK) {
        wrk__result_set(res, WRK_TRANSIENT, "cannot set up the request: out of memory");
        goto cleanup;
    }
    const char *fixed[] = {"Content-Type: application/json", "Accept: text/event-stream",
                           "Expect:", o->auth};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (!fixed[i])
            continue;
        struct curl_slist *nh = curl_slist_append(hdrs, fixed[i]);
        if (!nh) {
            wrk__result_set(res, WRK_TRANSIENT, "cannot set up the request: out of memory");
            goto cleanup;
        }
        hdrs = nh;
    }

    int64_t remaining = call->deadline_ms - sl_mono_ms();
    if (remaining <= 0) {
        wrk__result_set(res, WRK_DEADLINE, "deadline passed before the call started");
        goto cleanup;
    }
    SETOPT(CURLOPT_URL, o->endpoint);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_POST, 1L);
    SETOPT(CURLOPT_POSTFIELDS, req);
    SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(req));
    SETOPT(CURLOPT_HTTPHEADER, hdrs);
    SETOPT(CURLOPT_USERAGENT, "sluice-worker");
    SETOPT(CURLOPT_WRITEFUNCTION, on_write);
    SETOPT(CURLOPT_WRITEDATA, &c);
    SETOPT(CURLOPT_NOPROGRESS, 0L);
    SETOPT(CURLOPT_XFERINFOFUNCTION, on_progress);
    SETOPT(CURLOPT_XFERINFODATA, &c);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)(remaining + OA_BACKSTOP_MS));
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    SETOPT(CURLOPT_ERRORBUFFER, errbuf);
#if LIBCURL_VERSION_NUM >= 0x075700
    /* Do not wait for a stuck DNS resolver thread when the deadline cuts a call. */
    SETOPT(CURLOPT_QUICK_EXIT, 1L);
#endif
    if (crc != CURLE_OK) {
        wrk__result_set(res, WRK_FATAL, "curl_easy_setopt: %s", curl_easy_strerror(crc));
        goto cleanup;
    }
    if (curl_multi_add_handle(m, c.e) != CURLM_OK) {
        wrk__result_set(res, WRK_TRANSIENT, "curl_multi_add_handle failed");
        goto cleanup;
    }
    added = 1;

    /* Bounded by the deadline: every pass waits at most OA_POLL_MS and the
     * loop ends once the deadline is reached. */
    CURLcode rc = CURLE_OK;
    int finished = 0;
    wrk_outcome cut = WRK_DONE; /* WRK_DONE: not cut short */
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(m, &running);
        if (mc != CURLM_OK) {
            stop(&c, WRK_TRANSIENT, "curl_multi_perform: %s", curl_multi_strerror(mc));
            break;
        }
        CURLMsg *msg;
        int queued;
        while ((msg = curl_multi_info_read(m, &queued)) != NULL) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == c.e) {
                rc = msg->data.result;
                finished = 1;
            }
        }
        if (finished || c.stopped)
            break;
        if (is_cancelled(call)) {
            cut = WRK_CANCELLED;
            break;
        }
        int64_t now = sl_mono_ms();
        if (now >= call->deadline_ms) {
            cut = WRK_DEADLINE;
            break;
        }
        if (c.done && now - c.done_at >= OA_DONE_GRACE_MS)
            break;
        int64_t wait = call->deadline_ms - now;
        if (wait > OA_POLL_MS)
            wait = OA_POLL_MS;
        mc = curl_multi_poll(m, NULL, 0, (int)wait, NULL);
        if (mc != CURLM_OK) {
            stop(&c, WRK_TRANSIENT, "curl_multi_poll: %s", curl_multi_strerror(mc));
            break;
        }
    }

    if (c.status == 0)
        curl_easy_getinfo(c.e, CURLINFO_RESPONSE_CODE, &c.status);
    res->http_status = (int)c.status;
    read_retry_after(&c);
    if (c.done)
        wrk__result_set(res, WRK_DONE, NULL);
    else if (c.stopped)
        ; /* a callback settled it */
    else if (cut == WRK_CANCELLED)
        wrk__result_set(res, WRK_CANCELLED, "cancelled");
    else if (cut == WRK_DEADLINE)
        wrk__result_set(res, WRK_DEADLINE, "deadline reached (%zu tokens streamed)", res->ntokens);
    else
        finish_transfer(&c, rc, errbuf);

cleanup:
    if (added)
        curl_multi_remove_handle(m, c.e);
    curl_easy_cleanup(c.e);
    pool_put(o, m);
    curl_slist_free_all(hdrs);
    wrk_sse_destroy(c.sse);
    free(c.body);
    cJSON_free(req);
}

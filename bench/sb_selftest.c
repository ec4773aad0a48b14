/* Self-test of the bench's pure parts: see sb_selftest.h. */
#include "sb_selftest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_engine.h"
#include "sb_hist.h"
#include "sb_util.h"
#include "sb_ws.h"

static int passed;
static int failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                 \
        }                                                                                          \
    } while (0)

static int within(uint64_t got, uint64_t want, double rel)
{
    double d = (double)got - (double)want;

    if (d < 0)
        d = -d;
    return d <= rel * (double)want + 1.0;
}

static void test_hist(void)
{
    sb_hist *h = NULL;
    uint64_t v;
    size_t i;

    CHECK(sb_hist_create(&h) == SL_OK);
    if (h == NULL)
        return;
    CHECK(sb_hist_percentile(h, 50) == 0);
    /* 1..100000 us in ns, uniform: percentiles are known exactly. */
    for (v = 1; v <= 100000; v++)
        sb_hist_record(h, v * 1000);
    CHECK(sb_hist_count(h) == 100000);
    CHECK(sb_hist_min(h) == 1000);
    CHECK(sb_hist_max(h) == 100000000);
    CHECK(within(sb_hist_percentile(h, 50), 50000000, 0.002));
    CHECK(within(sb_hist_percentile(h, 90), 90000000, 0.002));
    CHECK(within(sb_hist_percentile(h, 99), 99000000, 0.002));
    CHECK(within(sb_hist_percentile(h, 99.9), 99900000, 0.002));
    CHECK(sb_hist_percentile(h, 100) == 100000000);
    CHECK(within((uint64_t)sb_hist_mean(h), 50000500, 0.0001));
    /* Every bucket's high value maps back to that bucket, and the next value
     * to the next one. */
    {
        size_t last = sb_hist_index(SB_HIST_MAX);
        size_t bad = 0;
        for (i = 0; i < last; i++) {
            uint64_t hi = sb_hist_bucket_high(i);
            if (sb_hist_index(hi) != i || sb_hist_index(hi + 1) != i + 1)
                bad++;
        }
        CHECK(bad == 0);
        CHECK(sb_hist_bucket_high(last) == SB_HIST_MAX);
    }
    /* Clamping. */
    sb_hist_reset(h);
    sb_hist_record(h, UINT64_MAX);
    CHECK(sb_hist_max(h) == SB_HIST_MAX);
    sb_hist_destroy(h);
}

static void test_ws(void)
{
    char acc[32];
    char req[512];
    char key[28];
    uint8_t frame[300];
    static uint8_t big[70000];
    static uint8_t bigsrc[66000];
    uint8_t payload[200];
    sb_ws_frame f;
    uint64_t seed = 42;
    size_t n;
    size_t used = 0;
    int status = 0;
    long r;
    const char *resp;

    /* RFC 6455 section 1.3 example. */
    sb_ws_accept_for("dGhlIHNhbXBsZSBub25jZQ==", acc);
    CHECK(strcmp(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    sb_ws_make_key(key, &seed);
    CHECK(strlen(key) == 24);
    n = sb_ws_request(req, sizeof(req), "127.0.0.1", 8080, "/v1/ws", key, "sluice.v1");
    CHECK(n > 0 && strstr(req, "GET /v1/ws HTTP/1.1\r\n") == req);
    CHECK(strstr(req, "Sec-WebSocket-Protocol: sluice.v1\r\n") != NULL);
    CHECK(memcmp(req + n - 4, "\r\n\r\n", 4) == 0);

    resp = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
    CHECK(sb_ws_parse_response(resp, strlen(resp), "dGhlIHNhbXBsZSBub25jZQ==", &used, &status) ==
          SL_OK);
    CHECK(status == 101 && used == strlen(resp) - 4);
    CHECK(sb_ws_parse_response(resp, 30, "dGhlIHNhbXBsZSBub25jZQ==", &used, &status) ==
          SL_ERR_TIMEOUT);
    CHECK(sb_ws_parse_response(resp, strlen(resp), "AAAAAAAAAAAAAAAAAAAAAA==", &used, &status) ==
          SL_ERR_PROTO);
    resp = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n";
    CHECK(sb_ws_parse_response(resp, strlen(resp), "x", &used, &status) == SL_ERR_FULL);

    /* Masked client frame: the mask bit is set and unmasking restores it. */
    memset(payload, 'a', sizeof(payload));
    n = sb_ws_encode(frame, SB_WS_TEXT, payload, sizeof(payload), &seed);
    CHECK(n == sizeof(payload) + 8);
    CHECK(frame[0] == 0x81 && frame[1] == (0x80 | 126));
    CHECK(frame[2] == 0 && frame[3] == 200);
    r = sb_ws_parse_frame(frame, n, 1 << 20, &f);
    CHECK(r == (long)n && f.len == 200 && f.opcode == SB_WS_TEXT && f.fin);
    CHECK(f.len == 200 && memcmp(f.payload, payload, 200) == 0);
    /* Incomplete frames ask for more. */
    n = sb_ws_encode(frame, SB_WS_TEXT, payload, 10, &seed);
    CHECK(sb_ws_parse_frame(frame, n - 1, 1 << 20, &f) == 0);
    CHECK(sb_ws_parse_frame(frame, 1, 1 << 20, &f) == 0);
    /* 64-bit length. */
    memset(bigsrc, 'b', sizeof(bigsrc));
    n = sb_ws_encode(big, SB_WS_BINARY, bigsrc, 65600, &seed);
    CHECK(n == 65600 + 14 && big[1] == (0x80 | 127));
    r = sb_ws_parse_frame(big, n, 1 << 20, &f);
    CHECK(r == (long)n && f.len == 65600 && f.payload[65599] == 'b');
    CHECK(sb_ws_parse_frame(big, n, 1000, &f) == -1);
    /* Unmasked server frames; reserved bits and long control frames fail. */
    frame[0] = 0x89;
    frame[1] = 0x01;
    frame[2] = 'p';
    r = sb_ws_parse_frame(frame, 3, 100, &f);
    CHECK(r == 3 && f.opcode == SB_WS_PING && f.len == 1 && f.payload[0] == 'p');
    frame[0] = 0xC1;
    CHECK(sb_ws_parse_frame(frame, 3, 100, &f) == -1);
    frame[0] = 0x88;
    frame[1] = 126;
    CHECK(sb_ws_parse_frame(frame, 4, 1000, &f) == -1);
    frame[0] = 0x08; /* fragmented close */
    frame[1] = 0;
    CHECK(sb_ws_parse_frame(frame, 2, 1000, &f) == -1);
}

static void test_jwt(void)
{
    char tok[1024];
    char b[16];

    CHECK(sb_jwt_mint_at(tok, sizeof(tok), "secret", "t1", "u1", 1700000000LL) == SL_OK);
    CHECK(strcmp(tok, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                      "eyJzdWIiOiJ1MSIsInRlbmFudCI6InQxIiwiZXhwIjoxNzAwMDAwMDAwfQ."
                      "j18SUsdXE9gS-dk769AL2vY_ptEfcP5pz6ulMgKezWg") == 0);
    CHECK(sb_jwt_mint_at(tok, 20, "secret", "t1", "u1", 1) == SL_ERR_INVAL);
    CHECK(sb_b64url(b, sizeof(b), (const uint8_t *)"\xfb\xff", 2) == 3 && strcmp(b, "-_8") == 0);
}

static void test_parse(void)
{
    sb_target t;
    const char *txt = "{\"text\":\"sbt=123456789 c=1 n=2 abc\"}";

    CHECK(sb_parse_stamp((const uint8_t *)txt, strlen(txt)) == 123456789ull);
    CHECK(sb_parse_stamp((const uint8_t *)"nothing", 7) == 0);
    CHECK(sb_parse_url("ws://127.0.0.1:8080/v1/ws", &t) == SL_OK);
    CHECK(t.port == 8080 && strcmp(t.path, "/v1/ws") == 0);
    CHECK(sb_parse_url("ws://localhost:81", &t) == SL_OK && strcmp(t.path, "/") == 0);
    CHECK(sb_parse_url("ws://10.0.0.1:8080/", &t) == SL_ERR_INVAL);
    CHECK(sb_parse_url("ws://example.com:80/", &t) == SL_ERR_INVAL);
    CHECK(sb_parse_url("http://127.0.0.1:80/", &t) == SL_ERR_INVAL);
    CHECK(sb_parse_url("ws://127.0.0.1:99999/", &t) == SL_ERR_INVAL);
}

int sb_selftest(void)
{
    test_hist();
    test_ws();
    test_jwt();
    test_parse();
    printf("sluice-bench selftest: %d passed, %d failed\n", passed, failed);
    return failed;
}

/* Unit tests for wrk_sse, the incremental server-sent-events parser. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wrk_sse.h"

/* Records events as "<type>|<data>" separated by '#'. */
typedef struct sink {
    char out[4096];
    size_t len;
    int count;
    int stop_at; /* stop the parser at this event number (1-based); 0 = never */
} sink;

static int on_event(void *ud, const char *event, const char *data, size_t len)
{
    sink *s = ud;
    ck_assert_uint_eq(data[len], '\0');
    size_t el = strlen(event);
    ck_assert_uint_lt(s->len + el + len + 3, sizeof(s->out));
    memcpy(s->out + s->len, event, el);
    s->len += el;
    s->out[s->len++] = '|';
    memcpy(s->out + s->len, data, len);
    s->len += len;
    s->out[s->len++] = '#';
    s->out[s->len] = '\0';
    s->count++;
    return s->stop_at && s->count >= s->stop_at;
}

/* Parses input fed in one piece and returns the record (static buffer). */
static const char *parse_whole(const char *in, size_t n, int finish)
{
    static sink s;
    memset(&s, 0, sizeof(s));
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, in, n), SL_OK);
    if (finish)
        ck_assert_int_eq(wrk_sse_finish(p), SL_OK);
    wrk_sse_destroy(p);
    return s.out;
}

#define PARSE(lit) parse_whole(lit, sizeof(lit) - 1, 0)

START_TEST(test_basic_event)
{
    ck_assert_str_eq(PARSE("data: hello\n\n"), "message|hello#");
    ck_assert_str_eq(PARSE("data: a\n\ndata: b\n\n"), "message|a#message|b#");
}
END_TEST

START_TEST(test_multiline_data)
{
    ck_assert_str_eq(PARSE("data: a\ndata: b\ndata:\ndata: c\n\n"), "message|a\nb\n\nc#");
}
END_TEST

START_TEST(test_field_value_spaces)
{
    ck_assert_str_eq(PARSE("data:x\n\n"), "message|x#");
    ck_assert_str_eq(PARSE("data:  x \n\n"), "message| x #");
    ck_assert_str_eq(PARSE("data: a:b: c\n\n"), "message|a:b: c#");
    /* A field with no colon has an empty value: one empty data line. */
    ck_assert_str_eq(PARSE("data\n\n"), "message|#");
}
END_TEST

START_TEST(test_comments_and_ignored_fields)
{
    ck_assert_str_eq(PARSE(": keep-alive\n\n:\ndata: y\n: mid-event comment\n\n"), "message|y#");
    ck_assert_str_eq(PARSE("id: 7\nretry: 100\nfoo: bar\ndata: z\n\n"), "message|z#");
    /* Events without data are not dispatched. */
    ck_assert_str_eq(PARSE("event: ping\n\nid: 1\n\n\n\n"), "");
}
END_TEST

START_TEST(test_event_type)
{
    ck_assert_str_eq(PARSE("event: error\ndata: {}\n\ndata: next\n\n"), "error|{}#message|next#");
    /* An event type without data does not leak into the next event. */
    ck_assert_str_eq(PARSE("event: x\n\ndata: d\n\n"), "message|d#");
    ck_assert_str_eq(PARSE("event:\ndata: d\n\n"), "message|d#");
}
END_TEST

START_TEST(test_line_endings)
{
    ck_assert_str_eq(PARSE("data: a\r\n\r\ndata: b\r\rdata: c\n\ndata: d\r\n\n"),
                     "message|a#message|b#message|c#message|d#");
    /* "\r\r\n" is a line end then a blank line. */
    ck_assert_str_eq(PARSE("data: e\r\r\n"), "message|e#");
}
END_TEST

START_TEST(test_bom_and_nul)
{
    ck_assert_str_eq(PARSE("\xEF\xBB\xBF"
                           "data: x\n\n"),
                     "message|x#");
    /* Only at the start of the stream. */
    ck_assert_str_eq(PARSE("data: x\n\n\xEF\xBB\xBF"
                           "data: y\n\n"),
                     "message|x#");

    sink s = {0};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, "data: a\0b\n\n", 11), SL_OK);
    ck_assert_int_eq(s.count, 1);
    ck_assert_uint_eq(s.len, strlen("message|") + 3 + 1);
    ck_assert_int_eq(memcmp(s.out + 8, "a\0b", 3), 0);
    wrk_sse_destroy(p);
}
END_TEST

START_TEST(test_unterminated_and_finish)
{
    sink s = {0};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    ck_assert_int_eq(wrk_sse_pending(p), 0);
    ck_assert_int_eq(wrk_sse_feed(p, "data: a\n", 8), SL_OK);
    ck_assert_int_eq(s.count, 0);
    ck_assert_int_ne(wrk_sse_pending(p), 0);
    ck_assert_int_eq(wrk_sse_finish(p), SL_OK);
    ck_assert_str_eq(s.out, "message|a#");
    ck_assert_int_eq(wrk_sse_pending(p), 0);

    /* A last line without any line ending. */
    wrk_sse_reset(p);
    memset(&s, 0, sizeof(s));
    ck_assert_int_eq(wrk_sse_feed(p, "data: [DO", 9), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, "NE]", 3), SL_OK);
    ck_assert_int_eq(s.count, 0);
    ck_assert_int_eq(wrk_sse_finish(p), SL_OK);
    ck_assert_str_eq(s.out, "message|[DONE]#");
    wrk_sse_destroy(p);
}
END_TEST

START_TEST(test_overflow)
{
    sink s = {0};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 64, on_event, &s), SL_OK);
    char line[41];
    memset(line, 'x', 40);
    line[40] = '\n';
    /* "data: " + 34 x: 34 bytes of data each; two lines exceed 64. */
    memcpy(line, "data: ", 6);
    ck_assert_int_eq(wrk_sse_feed(p, line, 41), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, line, 41), SL_ERR_FULL);
    /* Sticky: nothing more is parsed. */
    ck_assert_int_eq(wrk_sse_feed(p, "\n\ndata: a\n\n", 11), SL_ERR_FULL);
    ck_assert_int_eq(wrk_sse_finish(p), SL_ERR_FULL);
    ck_assert_int_eq(s.count, 0);

    /* A long line without any line end, fed in pieces. */
    wrk_sse_reset(p);
    ck_assert_int_eq(wrk_sse_feed(p, "data: 0123456789012345678901234567890123456789", 46), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, "0123456789012345678901234567890123456789", 40), SL_ERR_FULL);

    /* After a reset the parser works again, up to the bound. */
    wrk_sse_reset(p);
    ck_assert_int_eq(wrk_sse_feed(p, line, 41), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, "\n", 1), SL_OK);
    ck_assert_int_eq(s.count, 1);
    wrk_sse_destroy(p);
}
END_TEST

START_TEST(test_default_bound_is_one_mib)
{
    size_t n = 1024 * 1024 + 64;
    char *buf = malloc(n);
    ck_assert_ptr_nonnull(buf);
    sink s = {0};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    /* Just under 1 MiB of data goes through (the sink only sees the count). */
    memcpy(buf, "data: ", 6);
    memset(buf + 6, 'y', 1000000);
    ck_assert_int_eq(wrk_sse_feed(p, buf, 1000006), SL_OK);
    wrk_sse_reset(p);
    memset(buf + 6, 'y', n - 6);
    ck_assert_int_eq(wrk_sse_feed(p, buf, n), SL_ERR_FULL);
    wrk_sse_destroy(p);
    free(buf);
}
END_TEST

static int count_only(void *ud, const char *event, const char *data, size_t len)
{
    (void)event;
    (void)data;
    (void)len;
    (*(int *)ud)++;
    return 0;
}

START_TEST(test_big_event_dispatch)
{
    size_t n = 900000;
    char *buf = malloc(n + 8);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, "data: ", 6);
    memset(buf + 6, 'z', n);
    memcpy(buf + 6 + n, "\n\n", 2);
    int count = 0;
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, count_only, &count), SL_OK);
    /* Fed in 1000-byte slices, so the line is assembled across feeds. */
    for (size_t off = 0; off < n + 8; off += 1000) {
        size_t k = n + 8 - off < 1000 ? n + 8 - off : 1000;
        ck_assert_int_eq(wrk_sse_feed(p, buf + off, k), SL_OK);
    }
    ck_assert_int_eq(count, 1);
    wrk_sse_destroy(p);
    free(buf);
}
END_TEST

START_TEST(test_callback_stops)
{
    sink s = {.stop_at = 1};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, "data: 1\n\ndata: 2\n\n", 18), SL_ERR_CLOSED);
    ck_assert_int_eq(wrk_sse_feed(p, "data: 3\n\n", 9), SL_ERR_CLOSED);
    ck_assert_str_eq(s.out, "message|1#");
    wrk_sse_destroy(p);
}
END_TEST

START_TEST(test_bad_args)
{
    wrk_sse *p = NULL;
    sink s = {0};
    ck_assert_int_eq(wrk_sse_create(NULL, 0, on_event, &s), SL_ERR_INVAL);
    ck_assert_int_eq(wrk_sse_create(&p, 0, NULL, &s), SL_ERR_INVAL);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(wrk_sse_feed(NULL, "x", 1), SL_ERR_INVAL);
    wrk_sse_destroy(NULL);
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    ck_assert_int_eq(wrk_sse_feed(p, NULL, 0), SL_OK);
    wrk_sse_destroy(p);
}
END_TEST

/* A stream with every feature; split anywhere, it must parse the same. */
static const char corpus[] = "\xEF\xBB\xBF: comment\r\n"
                             "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n"
                             "event: custom\r\ndata: line one\r\ndata: line two\r\n\r\n"
                             "data:no-space\r\rdata: cr only\r\r"
                             "id: 5\nretry: 10\n\n"
                             "data: caf\xC3\xA9 \xF0\x9F\x9A\x80\n: between\ndata: more\n\n"
                             "data\n\n"
                             "event: x\n\n"
                             "data: [DONE]\n\n";

static const char *corpus_expected(void)
{
    return "message|{\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}#"
           "custom|line one\nline two#"
           "message|no-space#message|cr only#"
           "message|caf\xC3\xA9 \xF0\x9F\x9A\x80\nmore#"
           "message|#"
           "message|[DONE]#";
}

START_TEST(test_byte_by_byte)
{
    ck_assert_str_eq(parse_whole(corpus, sizeof(corpus) - 1, 1), corpus_expected());
    sink s = {0};
    wrk_sse *p = NULL;
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    for (size_t i = 0; i < sizeof(corpus) - 1; i++)
        ck_assert_int_eq(wrk_sse_feed(p, corpus + i, 1), SL_OK);
    ck_assert_int_eq(wrk_sse_finish(p), SL_OK);
    ck_assert_str_eq(s.out, corpus_expected());
    wrk_sse_destroy(p);
}
END_TEST

START_TEST(test_random_splits)
{
    unsigned seed = 12345;
    size_t n = sizeof(corpus) - 1;
    wrk_sse *p = NULL;
    sink s = {0};
    ck_assert_int_eq(wrk_sse_create(&p, 0, on_event, &s), SL_OK);
    for (int iter = 0; iter < 500; iter++) {
        memset(&s, 0, sizeof(s));
        wrk_sse_reset(p);
        size_t off = 0;
        while (off < n) {
            size_t k = 1 + (size_t)rand_r(&seed) % (iter % 2 ? 8 : 64);
            if (k > n - off)
                k = n - off;
            ck_assert_int_eq(wrk_sse_feed(p, corpus + off, k), SL_OK);
            off += k;
        }
        ck_assert_int_eq(wrk_sse_finish(p), SL_OK);
        ck_assert_msg(strcmp(s.out, corpus_expected()) == 0, "iteration %d (seed state %u)", iter,
                      seed);
    }
    wrk_sse_destroy(p);
}
END_TEST

static Suite *sse_suite(void)
{
    Suite *s = suite_create("wrk_sse");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_basic_event);
    tcase_add_test(tc, test_multiline_data);
    tcase_add_test(tc, test_field_value_spaces);
    tcase_add_test(tc, test_comments_and_ignored_fields);
    tcase_add_test(tc, test_event_type);
    tcase_add_test(tc, test_line_endings);
    tcase_add_test(tc, test_bom_and_nul);
    tcase_add_test(tc, test_unterminated_and_finish);
    tcase_add_test(tc, test_overflow);
    tcase_add_test(tc, test_default_bound_is_one_mib);
    tcase_add_test(tc, test_big_event_dispatch);
    tcase_add_test(tc, test_callback_stops);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_byte_by_byte);
    tcase_add_test(tc, test_random_splits);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sse_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

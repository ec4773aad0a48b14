/* Unit tests for orch_agents (file parsing, validation, match rules) and
 * orch_router (who answers, authors, hop limit). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orch_agents.h"
#include "orch_router.h"

static orch_agents *parse_ok(const char *json)
{
    orch_agents *a = NULL;
    char err[256];

    ck_assert_msg(orch_agents_parse(&a, json, err, sizeof(err)) == SL_OK, "%s", err);
    return a;
}

static void parse_bad(const char *json, const char *needle)
{
    orch_agents *a = NULL;
    char err[256] = "";

    ck_assert_int_eq(orch_agents_parse(&a, json, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_null(a);
    ck_assert_msg(strstr(err, needle) != NULL, "error \"%s\" lacks \"%s\"", err, needle);
}

START_TEST(test_default_set)
{
    orch_agents *a = NULL;
    char err[256];
    size_t idx = 99;

    ck_assert_int_eq(orch_agents_load(&a, NULL, err, sizeof(err)), SL_OK);
    ck_assert_uint_eq(a->n, 2);
    ck_assert_ptr_nonnull(orch_agents_find(a, "assistant", &idx));
    ck_assert_uint_eq(idx, 0);
    ck_assert_int_eq(a->v[0].match, ORCH_MATCH_ALL);
    ck_assert_str_eq(a->v[0].model, "default");
    ck_assert_ptr_nonnull(orch_agents_find(a, "summarizer", &idx));
    ck_assert_uint_eq(idx, 1);
    ck_assert_int_eq(a->v[1].match, ORCH_MATCH_MENTION);
    ck_assert_str_eq(a->v[1].backend_model, "");
    ck_assert(a->v[1].fallback[0] != '\0');
    ck_assert_ptr_null(orch_agents_find(a, "nobody", NULL));
    orch_agents_destroy(a);
    orch_agents_destroy(NULL);
}
END_TEST

START_TEST(test_full_agent)
{
    orch_agents *a = parse_ok(
        "[{\"name\":\"coder\",\"model\":\"big\",\"backend_model\":\"qwen2.5-coder:7b\","
        "\"system_prompt\":\"You write C.\",\"match\":{\"regex\":\"\\\\b(code|bug)s?\\\\b\"},"
        "\"fallback\":\"no code today\",\"max_concurrent\":4,\"description\":\"x\"}]");

    ck_assert_uint_eq(a->n, 1);
    ck_assert_str_eq(a->v[0].name, "coder");
    ck_assert_str_eq(a->v[0].model, "big");
    ck_assert_str_eq(a->v[0].backend_model, "qwen2.5-coder:7b");
    ck_assert_str_eq(a->v[0].system_prompt, "You write C.");
    ck_assert_str_eq(a->v[0].fallback, "no code today");
    ck_assert_int_eq(a->v[0].max_concurrent, 4);
    ck_assert_int_eq(a->v[0].match, ORCH_MATCH_REGEX);
    ck_assert(orch_agent_matches(&a->v[0], "there is a bug here"));
    ck_assert(orch_agent_matches(&a->v[0], "show me code"));
    ck_assert(!orch_agent_matches(&a->v[0], "debugging"));
    ck_assert(!orch_agent_matches(&a->v[0], NULL));
    orch_agents_destroy(a);
    a = parse_ok("{\"agents\":[{\"name\":\"x\",\"model\":\"m\",\"match\":\"all\","
                 "\"system\":\"old key\"}]}");
    ck_assert_str_eq(a->v[0].system_prompt, "old key");
    ck_assert_int_eq(a->v[0].max_concurrent, 0);
    orch_agents_destroy(a);
}
END_TEST

START_TEST(test_invalid_files)
{
    parse_bad("not json", "not valid JSON");
    parse_bad("{\"agents\":[]}", "1..100 agents");
    parse_bad("{\"agents\":{}}", "must be an array");
    parse_bad("{\"agents\":[],\"extra\":1}", "expected");
    parse_bad("[1]", "must be an object");
    parse_bad("[{\"model\":\"m\",\"match\":\"all\"}]", "\"name\"");
    parse_bad("[{\"name\":\"a.b\",\"model\":\"m\",\"match\":\"all\"}]", "\"name\"");
    parse_bad("[{\"name\":\"a\",\"match\":\"all\"}]", "agent a: \"model\"");
    parse_bad("[{\"name\":\"a\",\"model\":\"m>\",\"match\":\"all\"}]", "\"model\"");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\"}]", "\"match\" is required");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"some\"}]", "\"match\" must be");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":{\"regex\":\"(\"}}]", "bad regex");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":{\"regex\":\"\"}}]", "\"match\" must be");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\",\"colour\":1}]",
              "unknown key \"colour\"");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\",\"max_concurrent\":-1}]",
              "max_concurrent");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\",\"max_concurrent\":1.5}]",
              "max_concurrent");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\",\"fallback\":\"\"}]", "fallback");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\",\"fallback\":7}]", "fallback");
    parse_bad("[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\"},"
              "{\"name\":\"a\",\"model\":\"n\",\"match\":\"mention\"}]",
              "duplicate name");
}
END_TEST

START_TEST(test_load_file)
{
    char path[] = "/tmp/check_orch_agents_XXXXXX";
    int fd = mkstemp(path);
    orch_agents *a = NULL;
    char err[512];
    const char *bad = "[{\"name\":\"a\",\"model\":\"m\",\"match\":{\"regex\":\"[\"}}]";

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, bad, strlen(bad)), (ssize_t)strlen(bad));
    close(fd);
    ck_assert_int_eq(orch_agents_load(&a, path, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert(strstr(err, path) != NULL && strstr(err, "bad regex") != NULL);
    unlink(path);
    ck_assert_int_eq(orch_agents_load(&a, path, err, sizeof(err)), SL_ERR_IO);
    ck_assert(strstr(err, "SLUICE_AGENTS_FILE") != NULL);
    ck_assert_ptr_null(a);
}
END_TEST

START_TEST(test_example_file)
{
    orch_agents *a = NULL;
    char err[512];

    /* The shipped example must load (tests run from the repository root). */
    ck_assert_msg(orch_agents_load(&a, "deploy/agents.json", err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_ptr_nonnull(orch_agents_find(a, "assistant", NULL));
    ck_assert_ptr_nonnull(orch_agents_find(a, "summarizer", NULL));
    orch_agents_destroy(a);
}
END_TEST

START_TEST(test_mentions)
{
    ck_assert(orch_text_mentions("hi @summarizer", "summarizer"));
    ck_assert(orch_text_mentions("@Summarizer: please", "summarizer"));
    ck_assert(orch_text_mentions("(@summarizer)", "summarizer"));
    ck_assert(orch_text_mentions("x @other and @summarizer.", "summarizer"));
    ck_assert(!orch_text_mentions("summarizer", "summarizer"));
    ck_assert(!orch_text_mentions("mail x@summarizer", "summarizer"));
    ck_assert(!orch_text_mentions("@summarizers", "summarizer"));
    ck_assert(!orch_text_mentions("@summarizer_bot", "summarizer"));
    ck_assert(!orch_text_mentions("@summ", "summarizer"));
    ck_assert(!orch_text_mentions("@", "summarizer"));
    ck_assert(!orch_text_mentions(NULL, "summarizer"));
    ck_assert(!orch_text_mentions("@x", ""));
}
END_TEST

START_TEST(test_route)
{
    orch_agents *a = parse_ok("[{\"name\":\"all1\",\"model\":\"m\",\"match\":\"all\"},"
                              "{\"name\":\"bob\",\"model\":\"m\",\"match\":\"mention\"},"
                              "{\"name\":\"re\",\"model\":\"m\",\"match\":{\"regex\":\"^go\"}}]");
    size_t idx[8];

    ck_assert_uint_eq(orch_route(a, "hello", NULL, 0, 3, idx, 8), 1);
    ck_assert_uint_eq(idx[0], 0);
    ck_assert_uint_eq(orch_route(a, "go @bob", NULL, 0, 3, idx, 8), 3);
    ck_assert_uint_eq(idx[0], 0);
    ck_assert_uint_eq(idx[1], 1);
    ck_assert_uint_eq(idx[2], 2);
    /* An agent never answers itself, and "all" answers people only. */
    ck_assert_uint_eq(orch_route(a, "go @bob", "bob", 1, 3, idx, 8), 1);
    ck_assert_uint_eq(idx[0], 2);
    ck_assert_uint_eq(orch_route(a, "hello", "all1", 1, 3, idx, 8), 0);
    ck_assert_uint_eq(orch_route(a, "hello", "bob", 1, 3, idx, 8), 0);
    /* The hop limit stops everyone. */
    ck_assert_uint_eq(orch_route(a, "go @bob", "x", 2, 3, idx, 8), 2);
    ck_assert_uint_eq(orch_route(a, "go @bob", "x", 3, 3, idx, 8), 0);
    ck_assert_uint_eq(orch_route(a, "go @bob", NULL, 0, 0, idx, 8), 0);
    /* cap bounds the output. */
    ck_assert_uint_eq(orch_route(a, "go @bob", NULL, 0, 3, idx, 2), 2);
    ck_assert_uint_eq(orch_route(NULL, "x", NULL, 0, 3, idx, 8), 0);
    orch_agents_destroy(a);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_agents");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_default_set);
    tcase_add_test(tc, test_full_agent);
    tcase_add_test(tc, test_invalid_files);
    tcase_add_test(tc, test_load_file);
    tcase_add_test(tc, test_example_file);
    tcase_add_test(tc, test_mentions);
    tcase_add_test(tc, test_route);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

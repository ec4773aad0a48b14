/* Unit tests for the text checks (common/sl_text). */
#include <check.h>
#include <string.h>

#include "sl_text.h"

#define U8(s) sl_utf8_valid((s), sizeof(s) - 1)
#define PR(s) sl_utf8_printable((s), sizeof(s) - 1)
#define NE(s) sl_json_has_nul_escape((s), sizeof(s) - 1)

START_TEST(test_utf8)
{
    ck_assert(U8("plain"));
    ck_assert(U8("caf\xc3\xa9"));
    ck_assert(U8("\xf0\x9f\x98\x80"));
    ck_assert(U8("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
    ck_assert(U8(""));
    ck_assert(sl_utf8_valid(NULL, 0));
    ck_assert(!sl_utf8_valid(NULL, 1));
    ck_assert(U8("a\0b"));              /* NUL is a character; callers refuse it on their own */
    ck_assert(!U8("\xc3"));             /* truncated */
    ck_assert(!U8("\xe2\x82"));         /* truncated */
    ck_assert(!U8("\xc0\xaf"));         /* overlong */
    ck_assert(!U8("\xe0\x80\xaf"));     /* overlong */
    ck_assert(!U8("\xed\xa0\x80"));     /* surrogate */
    ck_assert(!U8("\xf4\x90\x80\x80")); /* > U+10FFFF */
    ck_assert(!U8("\xf8\x88\x80\x80\x80"));
    ck_assert(!U8("\xff"));
    ck_assert(!U8("ab\x80"));
    ck_assert(!U8("\xc3(")); /* a continuation byte missing */
    /* Only len bytes are read. */
    ck_assert(sl_utf8_valid("ab\xc3\xa9", 2));
    ck_assert(!sl_utf8_valid("ab\xc3\xa9", 3));
}
END_TEST

START_TEST(test_printable)
{
    ck_assert(PR("alice"));
    ck_assert(PR("Zo\xc3\xab \xf0\x9f\x98\x80")); /* spaces and emoji are fine */
    ck_assert(PR("\xc2\xa0"));                    /* U+00A0, just above C1 */
    ck_assert(!PR("a\tb"));
    ck_assert(!PR("a\nb"));
    ck_assert(!PR("a\0b"));
    ck_assert(!PR("a\x7f"));
    ck_assert(!PR("\xc2\x80")); /* U+0080, C1 */
    ck_assert(!PR("\xc2\x9f")); /* U+009F, C1 */
    ck_assert(!PR("\xc3"));     /* and still UTF-8 first */
    ck_assert(!PR("\xed\xa0\x80"));
}
END_TEST

START_TEST(test_nul_escape)
{
    ck_assert(NE("{\"a\":\"x\\u0000\"}"));
    ck_assert(NE("\\u0000"));
    ck_assert(NE("\\\\\\u0000")); /* an escaped backslash, then the escape */
    ck_assert(!NE("\\\\u0000"));  /* an escaped backslash, then text */
    ck_assert(!NE("{\"a\":\"\\u0001\"}"));
    ck_assert(!NE("\\u000"));
    ck_assert(!NE("u0000"));
    ck_assert(!NE(""));
    ck_assert(!sl_json_has_nul_escape(NULL, 0));
    /* Only len bytes are read. */
    ck_assert(!sl_json_has_nul_escape("x\\u0000", 6));
    ck_assert(sl_json_has_nul_escape("x\\u0000", 7));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_text");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_utf8);
    tcase_add_test(tc, test_printable);
    tcase_add_test(tc, test_nul_escape);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

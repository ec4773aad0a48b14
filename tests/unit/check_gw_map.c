/* Unit tests for the gateway's string-keyed hash map (gw_map), checked
 * against a plain array that does the same operations the slow way. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_map.h"

START_TEST(test_put_get_del)
{
    gw_map *m = NULL;
    int a = 1, b = 2;

    ck_assert_int_eq(gw_map_create(&m), SL_OK);
    ck_assert_ptr_null(gw_map_get(m, "x"));
    ck_assert_uint_eq(gw_map_len(m), 0);
    ck_assert_int_eq(gw_map_put(m, "x", &a), SL_OK);
    ck_assert_ptr_eq(gw_map_get(m, "x"), &a);
    ck_assert_uint_eq(gw_map_len(m), 1);
    /* A put on an existing key replaces the value, the length stays. */
    ck_assert_int_eq(gw_map_put(m, "x", &b), SL_OK);
    ck_assert_ptr_eq(gw_map_get(m, "x"), &b);
    ck_assert_uint_eq(gw_map_len(m), 1);
    /* Keys are copied: the caller's buffer may change afterwards. */
    {
        char key[8] = "yy";
        ck_assert_int_eq(gw_map_put(m, key, &a), SL_OK);
        key[0] = 'z';
        ck_assert_ptr_eq(gw_map_get(m, "yy"), &a);
        ck_assert_ptr_null(gw_map_get(m, "zy"));
    }
    gw_map_del(m, "x");
    gw_map_del(m, "never there");
    ck_assert_ptr_null(gw_map_get(m, "x"));
    ck_assert_uint_eq(gw_map_len(m), 1);
    /* The empty key is a key like any other. */
    ck_assert_int_eq(gw_map_put(m, "", &a), SL_OK);
    ck_assert_ptr_eq(gw_map_get(m, ""), &a);
    gw_map_destroy(m);
    gw_map_destroy(NULL);
}
END_TEST

typedef struct ref_entry {
    char key[24];
    void *val;
    int seen;
} ref_entry;

#define REF_KEYS 3000

static int ref_find(ref_entry *r, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(r[i].key, key) == 0)
            return i;
    return -1;
}

static void count_cb(const char *key, void *val, void *ud)
{
    ref_entry *r = ud;
    int i = ref_find(r, REF_KEYS, key);

    ck_assert_int_ge(i, 0);
    ck_assert_ptr_eq(r[i].val, val);
    r[i].seen++;
}

/* Random puts, replaces and deletes across many growths: after every step
 * the map agrees with the reference on length, and every key's value; at
 * the end gw_map_each visits each live key exactly once. */
START_TEST(test_against_reference)
{
    static ref_entry ref[REF_KEYS];
    static char vals[REF_KEYS];
    gw_map *m = NULL;
    unsigned seed = 12345;
    size_t live = 0;

    memset(ref, 0, sizeof(ref));
    for (int i = 0; i < REF_KEYS; i++)
        snprintf(ref[i].key, sizeof(ref[i].key), "t%d.r:room-%d", i % 7, i);
    ck_assert_int_eq(gw_map_create(&m), SL_OK);
    for (int step = 0; step < 40000; step++) {
        int k = (int)(rand_r(&seed) % REF_KEYS);
        int op = (int)(rand_r(&seed) % 3);
        if (op < 2) {
            void *v = &vals[rand_r(&seed) % REF_KEYS];
            ck_assert_int_eq(gw_map_put(m, ref[k].key, v), SL_OK);
            if (ref[k].val == NULL)
                live++;
            ref[k].val = v;
        } else {
            gw_map_del(m, ref[k].key);
            if (ref[k].val != NULL)
                live--;
            ref[k].val = NULL;
        }
        ck_assert_uint_eq(gw_map_len(m), live);
        ck_assert_ptr_eq(gw_map_get(m, ref[k].key), ref[k].val);
    }
    for (int i = 0; i < REF_KEYS; i++)
        ck_assert_ptr_eq(gw_map_get(m, ref[i].key), ref[i].val);
    gw_map_each(m, count_cb, ref);
    for (int i = 0; i < REF_KEYS; i++)
        ck_assert_int_eq(ref[i].seen, ref[i].val != NULL ? 1 : 0);
    gw_map_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_map");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_put_get_del);
    tcase_add_test(tc, test_against_reference);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

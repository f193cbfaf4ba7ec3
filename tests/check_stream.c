/* tests/check_stream.c — the preview schedule of streamed requests (server/stream.h): how many
 * previews an image gets and after which scales, for every schedule length the format allows.
 * The streams themselves are tested against a real server with real clients
 * (tests/test_openai.py). */
#include <check.h>
#include <stdlib.h>

#include "runtime/blas.h"
#include "runtime/model.h"
#include "server/stream.h"

START_TEST(previews_are_capped_by_the_request_and_the_schedule)
{
    ck_assert_int_eq(vs_srv_stream_previews(10, 3), 3);
    ck_assert_int_eq(vs_srv_stream_previews(10, 0), 0);
    ck_assert_int_eq(vs_srv_stream_previews(3, 3), 2); /* one per scale before the last */
    ck_assert_int_eq(vs_srv_stream_previews(2, 3), 1);
    ck_assert_int_eq(vs_srv_stream_previews(1, 3), 0); /* one scale: the image is the only picture */
}
END_TEST

START_TEST(ten_scales_three_previews_come_after_scales_2_5_7)
{
    ck_assert_int_eq(vs_srv_stream_preview_after(10, 3, 0), 2);
    ck_assert_int_eq(vs_srv_stream_preview_after(10, 3, 1), 5);
    ck_assert_int_eq(vs_srv_stream_preview_after(10, 3, 2), 7);
    ck_assert_int_eq(vs_srv_stream_preview_after(10, 1, 0), 5);
}
END_TEST

START_TEST(every_schedule_rises_strictly_within_the_scales_before_the_last)
{
    for (int scales = 1; scales <= VS_RT_MAX_SCALES; scales++)
        for (int asked = 0; asked <= 3; asked++) {
            int p = vs_srv_stream_previews(scales, asked);
            int prev = 0;
            for (int k = 0; k < p; k++) {
                int after = vs_srv_stream_preview_after(scales, p, k);
                ck_assert_msg(after > prev && after <= scales - 1, "scales %d, %d previews: preview %d after %d",
                              scales, p, k, after);
                prev = after;
            }
        }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("stream");
    TCase *tc = tcase_create("schedule");
    tcase_add_test(tc, previews_are_capped_by_the_request_and_the_schedule);
    tcase_add_test(tc, ten_scales_three_previews_come_after_scales_2_5_7);
    tcase_add_test(tc, every_schedule_rises_strictly_within_the_scales_before_the_last);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    SRunner *r = srunner_create(suite());
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* tests/check_quality.c — PSNR and SSIM on images with known answers. */
#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "runtime/blas.h"
#include "server/quality.h"

enum { W = 32, H = 24, N = W * H * 3 };

static void pattern(uint8_t *img)
{
    for (int i = 0; i < N; i++)
        img[i] = (uint8_t)(40 + (i * 37) % 150);
}

START_TEST(identical_images_have_infinite_psnr_and_ssim_one)
{
    uint8_t a[N];
    pattern(a);
    ck_assert(isinf(vs_srv_psnr(a, a, N)));
    ck_assert_double_eq_tol(vs_srv_ssim(a, a, W, H), 1.0, 1e-12);
}
END_TEST

START_TEST(an_error_of_one_everywhere_is_48_13_db)
{
    uint8_t a[N], b[N];
    pattern(a);
    for (int i = 0; i < N; i++)
        b[i] = (uint8_t)(a[i] + 1);
    ck_assert_double_eq_tol(vs_srv_psnr(a, b, N), 20 * log10(255.0), 1e-9);
    double s = vs_srv_ssim(a, b, W, H);
    ck_assert(s < 1.0 && s > 0.99);
}
END_TEST

START_TEST(an_inverted_image_has_negative_ssim)
{
    uint8_t a[N], b[N];
    pattern(a);
    for (int i = 0; i < N; i++)
        b[i] = (uint8_t)(255 - a[i]);
    ck_assert(vs_srv_ssim(a, b, W, H) < 0);
    ck_assert(vs_srv_psnr(a, b, N) < 10);
}
END_TEST

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    Suite *s = suite_create("quality");
    TCase *tc = tcase_create("quality");
    tcase_add_test(tc, identical_images_have_infinite_psnr_and_ssim_one);
    tcase_add_test(tc, an_error_of_one_everywhere_is_48_13_db);
    tcase_add_test(tc, an_inverted_image_has_negative_ssim);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

/* tests/check_kvstep.c — the KV step's staged compression on the CPU backend (tests/kvstep_case.h;
 * check_cuda.c runs the same case with the pages in GPU memory). */
#include <check.h>
#include <stdlib.h>

#include "runtime/blas.h"
#include "tests/kvstep_case.h"

START_TEST(compression_leaves_each_heads_selected_tokens_in_the_pages)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 1, &be, &err) == VS_OK, "%s", err.msg);
    kvstep_run(be);
    vs_rt_backend_free(be);
}
END_TEST

START_TEST(a_row_with_unequal_heads_draws_exactly_its_simulated_peak)
{
    vs_rt_backend *be = NULL;
    vs_err err = {0};
    ck_assert_msg(vs_rt_backend_new(VS_RT_BACKEND_CPU, 1, &be, &err) == VS_OK, "%s", err.msg);
    kvstep_peak_is_exact(be);
    vs_rt_backend_free(be);
}
END_TEST

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    Suite *s = suite_create("kvstep");
    TCase *tc = tcase_create("compress");
    tcase_add_test(tc, compression_leaves_each_heads_selected_tokens_in_the_pages);
    tcase_add_test(tc, a_row_with_unequal_heads_draws_exactly_its_simulated_peak);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

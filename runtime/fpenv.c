/* runtime/fpenv.c — see fpenv.h. */
#include "runtime/fpenv.h"

#if defined(__x86_64__)
#include <xmmintrin.h>
#define MXCSR_DAZ (1u << 6)
#define MXCSR_FTZ (1u << 15)

void vs_rt_fp_env_init(void) { _mm_setcsr(_mm_getcsr() | MXCSR_FTZ | MXCSR_DAZ); }

int vs_rt_fp_env_flushing(void)
{
    unsigned m = _mm_getcsr();
    return (m & (MXCSR_FTZ | MXCSR_DAZ)) == (MXCSR_FTZ | MXCSR_DAZ);
}

void vs_rt_fp_env_reset(void) { _mm_setcsr(_mm_getcsr() & ~(MXCSR_FTZ | MXCSR_DAZ)); }

#elif defined(__aarch64__)
#include <stdint.h>
#define FPCR_FZ ((uint64_t)1 << 24)

static uint64_t get_fpcr(void)
{
    uint64_t r;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(r));
    return r;
}

static void set_fpcr(uint64_t r) { __asm__ __volatile__("msr fpcr, %0" : : "r"(r)); }

void vs_rt_fp_env_init(void) { set_fpcr(get_fpcr() | FPCR_FZ); }
int vs_rt_fp_env_flushing(void) { return (get_fpcr() & FPCR_FZ) != 0; }
void vs_rt_fp_env_reset(void) { set_fpcr(get_fpcr() & ~FPCR_FZ); }

#else
void vs_rt_fp_env_init(void) {}
int vs_rt_fp_env_flushing(void) { return -1; }
void vs_rt_fp_env_reset(void) {}
#endif

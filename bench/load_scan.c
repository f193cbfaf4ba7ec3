/* bench/load_scan.c — what the model loader's non-finite weight scan (runtime/model.c, convert)
 * costs: the same block loop timed with and without the scan over 256 M F32 and 128 M BF16
 * weights, three times each (the first F32 run also faults the pages in).
 *   cc -O2 -o build/load_scan bench/load_scan.c && build/load_scan
 * The scan must stay the one in runtime/model.c; this copy only measures it. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static size_t conv(float *dst, const unsigned char *src, size_t n, int scan, int bf16){
    for (size_t b = 0; b < n; b += 4096) {
        size_t end = b + 4096 < n ? b + 4096 : n;
        if (!bf16) memcpy(dst + b, src + 4 * b, (end - b) * 4);
        else for (size_t i = b; i < end; i++) { uint32_t bits = (uint32_t)(src[2 * i] | (src[2 * i + 1] << 8)) << 16; memcpy(&dst[i], &bits, 4); }
        if (!scan) continue;
        const uint32_t *bits = (const uint32_t *)(const void *)dst;
        uint32_t carry = 0;
        for (size_t k = b; k < end; k++) carry |= (bits[k] & 0x7f800000u) + 0x00800000u;
        if (carry & 0x80000000u) return b;
    }
    return n;
}
int main(void){
    size_t n = (size_t)256<<20;
    unsigned char *a = malloc(n*4); float *b = malloc(n*4);
    for (size_t i=0;i<n;i++) ((float*)a)[i]=(float)(i%1000)*1e-3f;
    memset(b,0,n*4);
    for (int bf=0; bf<2; bf++) for (int r=0;r<3;r++){
        double t0=now(); conv(b,a,bf?n/2*2/2:n,0,bf); double t1=now(); size_t k=conv(b,a,bf?n/2:n,1,bf); double t2=now();
        size_t m = bf?n/2:n;
        printf("%s: convert %.3f s, convert+scan %.3f s for %zu M weights (%zu)\n", bf?"bf16":"f32 ", t1-t0, t2-t1, m>>20, k);
    }
}

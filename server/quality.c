/* server/quality.c — see quality.h. SSIM follows Wang et al. 2004 with the usual Gaussian window;
 * images smaller than the window use the largest odd window that fits. */
#include "server/quality.h"

#include <math.h>
#include <stdlib.h>

double vs_srv_psnr(const uint8_t *a, const uint8_t *b, int n)
{
    double se = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        se += d * d;
    }
    if (se == 0)
        return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / n));
}

double vs_srv_ssim(const uint8_t *a, const uint8_t *b, int w, int h)
{
    int win = 11;
    while (win > 1 && (win > w || win > h))
        win -= 2;
    double g[11], gs = 0;
    for (int i = 0; i < win; i++) {
        double x = i - win / 2;
        g[i] = exp(-x * x / (2 * 1.5 * 1.5));
        gs += g[i];
    }
    for (int i = 0; i < win; i++)
        g[i] /= gs;
    const double C1 = (0.01 * 255) * (0.01 * 255), C2 = (0.03 * 255) * (0.03 * 255);
    double total = 0;
    long count = 0;
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y + win <= h; y++)
            for (int x = 0; x + win <= w; x++) {
                double ma = 0, mb = 0, saa = 0, sbb = 0, sab = 0;
                for (int dy = 0; dy < win; dy++)
                    for (int dx = 0; dx < win; dx++) {
                        double wt = g[dy] * g[dx];
                        size_t at = ((size_t)(y + dy) * w + (x + dx)) * 3 + ch;
                        double va = a[at], vb = b[at];
                        ma += wt * va;
                        mb += wt * vb;
                        saa += wt * va * va;
                        sbb += wt * vb * vb;
                        sab += wt * va * vb;
                    }
                double va = saa - ma * ma, vb = sbb - mb * mb, cov = sab - ma * mb;
                total += ((2 * ma * mb + C1) * (2 * cov + C2)) /
                         ((ma * ma + mb * mb + C1) * (va + vb + C2));
                count++;
            }
    return count ? total / count : 1.0;
}

/* common/parse.c — see parse.h. The grammar is checked here; strtol/strtod only convert what
 * passed it (they would accept leading spaces, '+', hex, "inf" and "nan"). */
#include "common/parse.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *digits(const char *p)
{
    const char *q = p;
    while (isdigit((unsigned char)*q))
        q++;
    return q > p ? q : NULL;
}

/* 1 when s is -?[0-9]+ (int_only) or the number grammar of parse.h. */
static int well_formed(const char *s, int int_only)
{
    const char *p = s + (*s == '-');
    if (!(p = digits(p)))
        return 0;
    if (!int_only && *p == '.' && !(p = digits(p + 1)))
        return 0;
    if (!int_only && (*p == 'e' || *p == 'E')) {
        p++;
        p += *p == '+' || *p == '-';
        if (!(p = digits(p)))
            return 0;
    }
    return *p == 0;
}

int vs_cli_long(const char *s, long lo, long hi, long *out)
{
    if (!well_formed(s, 1))
        return -1;
    errno = 0;
    long v = strtol(s, NULL, 10);
    if (errno || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int vs_cli_double(const char *s, double lo, double hi, double *out)
{
    if (!well_formed(s, 0))
        return -1;
    errno = 0;
    double v = strtod(s, NULL);
    if ((errno && fabs(v) > 1) || !isfinite(v) || v < lo || v > hi) /* underflow to ~0 is fine */
        return -1;
    *out = v;
    return 0;
}

int vs_cli_u64(const char *s, unsigned long long *out)
{
    if (*s == '-' || !well_formed(s, 1))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, NULL, 10);
    if (errno)
        return -1;
    *out = v;
    return 0;
}

int vs_cli_bool(const char *s, int *out)
{
    if (strcmp(s, "true") != 0 && strcmp(s, "false") != 0)
        return -1;
    *out = s[0] == 't';
    return 0;
}

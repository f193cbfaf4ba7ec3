/* common/json_text.c — see json_text.h. */
#include "common/json_text.h"

#include <stdio.h>
#include <string.h>

/* Bytes of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no overlongs, no surrogates,
 * nothing past U+10FFFF), or 0 when s does not start one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned lo = 0x80, hi = 0xbf; /* the allowed range of the second byte */
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

size_t vs_utf8_invalid_at(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0, k; i < n; i += k)
        if ((k = utf8_seq(u + i, n - i)) == 0)
            return i;
    return n;
}

char *vs_json_escape(char *dst, size_t cap, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s), j = 0;
    while (n) {
        char esc[8];
        const char *out = esc;
        size_t len, used;
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            len = 2;
            used = 1;
        } else if (*p < 0x20) {
            len = (size_t)snprintf(esc, sizeof esc, "\\u%04x", *p);
            used = 1;
        } else if ((used = utf8_seq(p, n)) != 0) {
            out = (const char *)p;
            len = used;
        } else {
            out = "\xef\xbf\xbd"; /* U+FFFD REPLACEMENT CHARACTER */
            len = 3;
            used = 1;
        }
        if (j + len + 1 > cap)
            break;
        memcpy(dst + j, out, len);
        j += len;
        p += used;
        n -= used;
    }
    dst[j] = 0;
    return dst;
}

size_t vs_utf8_prefix(const char *s, size_t n, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t at = 0;
    while (at < n) {
        size_t len = utf8_seq(p + at, n - at);
        if (!len)
            len = 1;
        if (at + len > max)
            break;
        at += len;
    }
    return at;
}

char *vs_utf8_clip(char *dst, size_t cap, const char *s, size_t max)
{
    size_t n = strlen(s);
    if (max + 4 > cap)
        max = cap > 4 ? cap - 4 : 0;
    size_t k = vs_utf8_prefix(s, n, max);
    memcpy(dst, s, k);
    snprintf(dst + k, cap - k, "%s", k < n ? "..." : "");
    return dst;
}

/* common/json_text.h — text that goes into JSON strings: the one escaper, and cutting text to a
 * length without splitting a UTF-8 character.
 *
 * Design: messages quote bytes a client or a file sent (a field value, a path, a header), and a
 * strict JSON client must be able to decode every body and log line, so the escaper writes valid
 * UTF-8 whatever it is given: each byte that does not start a well-formed UTF-8 sequence (stray
 * continuation bytes, overlongs, surrogates, code points past U+10FFFF, a sequence cut short) is
 * replaced by U+FFFD. Output is never cut inside a character or an escape. Any thread. */
#ifndef VS_JSON_TEXT_H
#define VS_JSON_TEXT_H

#include <stddef.h>

/* Writes s (NUL-terminated) JSON-escaped, without quotes, into dst of capacity cap (cap >= 1):
 * '"' and '\\' escaped, control characters as \u00XX, invalid UTF-8 as U+FFFD. Stops at the last
 * whole character that fits; always NUL-terminates. Returns dst. */
char *vs_json_escape(char *dst, size_t cap, const char *s);

/* The length of the longest prefix of s[0..n) of at most max bytes that does not end inside a
 * well-formed UTF-8 sequence (an invalid byte counts as one character). */
size_t vs_utf8_prefix(const char *s, size_t n, size_t max);

/* Copies at most max bytes of s into dst (capacity cap) on a character boundary, with "..."
 * appended when s was longer; always NUL-terminates. Returns dst. For quoting client text. */
char *vs_utf8_clip(char *dst, size_t cap, const char *s, size_t max);

/* The offset of the first byte of s[0..n) that does not start a well-formed UTF-8 sequence (the
 * rule above), or n when all of it is well-formed. */
size_t vs_utf8_invalid_at(const char *s, size_t n);

#endif

/* common/parse.h — the one strict parser of numbers and booleans written as text: command-line
 * options, VARSERVE_* variables and config values all go through it, so a value means the same
 * wherever it is given.
 *
 * Accepted: integers -?[0-9]+; numbers -?[0-9]+(.[0-9]+)?([eE][+-]?[0-9]+)? (finite); booleans
 * exactly "true" or "false". Nothing else: no spaces around the value, no '+', no hex, no "inf" or
 * "nan", no "yes"/"1". Any thread. */
#ifndef VS_PARSE_H
#define VS_PARSE_H

/* Each returns 0 when s is entirely such a value within [lo, hi], else -1 (out untouched). */
int vs_cli_long(const char *s, long lo, long hi, long *out);
int vs_cli_double(const char *s, double lo, double hi, double *out);
int vs_cli_u64(const char *s, unsigned long long *out);
int vs_cli_bool(const char *s, int *out);

#endif

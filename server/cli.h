/* server/cli.h — strict parsing of command-line and environment values. Any thread. */
#ifndef VS_SRV_CLI_H
#define VS_SRV_CLI_H

/* Each returns 0 when s is entirely a number within [lo, hi], else -1. */
int vs_cli_long(const char *s, long lo, long hi, long *out);
int vs_cli_double(const char *s, double lo, double hi, double *out);
int vs_cli_u64(const char *s, unsigned long long *out);

#endif

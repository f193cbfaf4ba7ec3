/* server/playground.h — the playground page served at GET /: server/playground.html (HTML, CSS
 * and JS in one file, no CDN), embedded in the binary at build time (the Makefile turns it into
 * $(BUILD)/gen/playground_html.c with xxd), so a user needs no build step and no files beside
 * the binary. Immutable; any thread. */
#ifndef VS_SRV_PLAYGROUND_H
#define VS_SRV_PLAYGROUND_H

#include <stddef.h>

extern const unsigned char vs_srv_playground_html[];
extern const size_t vs_srv_playground_html_len;

#endif

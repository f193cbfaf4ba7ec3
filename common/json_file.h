/* common/json_file.h — whole files in and out: reading one into memory and writing a cJSON
 * document, the one way every module does it. */
#ifndef VS_JSON_FILE_H
#define VS_JSON_FILE_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Prints root (pretty or compact) plus a newline into path, then deletes root. Returns 0, or -1
 * with errno set (out of memory: ENOMEM). Any thread. */
int vs_json_write_file(cJSON *root, const char *path, int pretty);

/* The whole of path, NUL-terminated (malloc'd, caller frees; *len_out excludes the NUL), or NULL
 * with errno set: the open or read error, EFBIG when it is over max_bytes or not a regular file's
 * size, ENOMEM. Any thread. */
char *vs_read_file(const char *path, size_t max_bytes, size_t *len_out);

/* Parses the whole file at path (at most max_bytes) into *root (cJSON_Delete it). Returns 0; or -1
 * with *root NULL and why in why[why_cap]: "cannot open: <strerror>", "larger than N bytes",
 * "cannot read", "not JSON" (the caller prefixes the file's role and path). Any thread. */
int vs_json_read_file(const char *path, size_t max_bytes, cJSON **root, char *why, size_t why_cap);

#endif

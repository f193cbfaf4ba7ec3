/* common/json_file.h — reading and writing a cJSON document as a whole file, the one way every
 * command and every budget-file loader does it. */
#ifndef VS_JSON_FILE_H
#define VS_JSON_FILE_H

#include <cjson/cJSON.h>

/* Prints root (pretty or compact) plus a newline into path, then deletes root. Returns 0, or -1
 * with errno set (out of memory: ENOMEM). Any thread. */
int vs_json_write_file(cJSON *root, const char *path, int pretty);

/* Parses the whole file at path (at most max_bytes) into *root (cJSON_Delete it). Returns 0; or -1
 * with *root NULL and why in why[why_cap]: "cannot open: <strerror>", "larger than N bytes",
 * "cannot read", "not JSON" (the caller prefixes the file's role and path). Any thread. */
int vs_json_read_file(const char *path, long max_bytes, cJSON **root, char *why, size_t why_cap);

#endif

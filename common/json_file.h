/* common/json_file.h — writing a cJSON document to a file, the one way every command does it. */
#ifndef VS_JSON_FILE_H
#define VS_JSON_FILE_H

#include <cjson/cJSON.h>

/* Prints root (pretty or compact) plus a newline into path, then deletes root. Returns 0, or -1
 * with errno set (out of memory: ENOMEM). Any thread. */
int vs_json_write_file(cJSON *root, const char *path, int pretty);

#endif

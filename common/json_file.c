/* common/json_file.c — see json_file.h. */
#include "common/json_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int vs_json_write_file(cJSON *root, const char *path, int pretty)
{
    char *txt = pretty ? cJSON_Print(root) : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!txt) {
        errno = ENOMEM;
        return -1;
    }
    FILE *f = fopen(path, "w");
    int ok = f && fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
    int saved = errno;
    if (f && fclose(f) != 0 && ok) {
        ok = 0;
        saved = errno;
    }
    free(txt);
    errno = saved;
    return ok ? 0 : -1;
}

int vs_json_read_file(const char *path, long max_bytes, cJSON **root, char *why, size_t why_cap)
{
    *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_cap, "cannot open: %s", strerror(errno));
        return -1;
    }
    long len = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (len < 0 || len > max_bytes || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        snprintf(why, why_cap, len > max_bytes ? "larger than %ld bytes" : "cannot read", max_bytes);
        return -1;
    }
    char *text = malloc((size_t)len + 1);
    size_t got = text ? fread(text, 1, (size_t)len, f) : 0;
    fclose(f);
    if (!text || got != (size_t)len) {
        free(text);
        snprintf(why, why_cap, "cannot read");
        return -1;
    }
    *root = cJSON_ParseWithLength(text, (size_t)len);
    free(text);
    if (!*root) {
        snprintf(why, why_cap, "not JSON");
        return -1;
    }
    return 0;
}

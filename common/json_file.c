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

char *vs_read_file(const char *path, size_t max_bytes, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len < 0 || (size_t)len > max_bytes || fseek(f, 0, SEEK_SET) != 0)
        errno = EFBIG;
    else if (!(text = malloc((size_t)len + 1)))
        errno = ENOMEM;
    else if (fread(text, 1, (size_t)len, f) != (size_t)len) {
        errno = ferror(f) ? EIO : EFBIG; /* shorter than it was a moment ago */
        free(text);
        text = NULL;
    } else {
        text[len] = 0;
        *len_out = (size_t)len;
    }
    int saved = errno;
    fclose(f);
    errno = saved;
    return text;}

int vs_json_read_file(const char *path, size_t max_bytes, cJSON **root, char *why, size_t why_cap)
{
    *root = NULL;
    size_t len = 0;
    char *text = vs_read_file(path, max_bytes, &len);
    if (!text) {
        if (errno == EFBIG)
            snprintf(why, why_cap, "larger than %zu bytes or not a regular file", max_bytes);
        else
            snprintf(why, why_cap, "cannot %s: %s", errno == ENOENT || errno == EACCES ? "open" : "read",
                     strerror(errno));
        return -1;
    }
    *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*root) {
        snprintf(why, why_cap, "not JSON");
        return -1;
    }
    return 0;
}

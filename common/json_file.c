/* common/json_file.c — see json_file.h. */
#include "common/json_file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

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

/* server/job.c — see job.h. */
#include "server/job.h"

#include <stdlib.h>

vs_srv_job *vs_srv_job_new(void)
{
    vs_srv_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->fd = -1;
    atomic_init(&j->state, VS_SRV_JOB_PENDING);
    atomic_init(&j->gone, 0);
    return j;
}

void vs_srv_job_free(vs_srv_job *j)
{
    if (!j)
        return;
    for (int i = 0; i < VS_SRV_MAX_N; i++)
        free(j->rgb[i]);
    free(j);
}

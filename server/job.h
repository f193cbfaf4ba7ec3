/* server/job.h — one POST /generate request on its way through queue and engine.
 *
 * Ownership is handed over, never shared: the HTTP thread that accepted the request fills the
 * job, suspends the connection and pushes the job; from then on the engine thread alone touches
 * it, until it stores the result, publishes `state` = DONE (release) and calls `notify`, which
 * resumes the connection. After that the HTTP side owns the job again (it reads `state` with
 * acquire before the result) and frees it when the connection completes. A suspended connection
 * is never closed by libmicrohttpd, so the client socket `fd` stays valid while the engine holds
 * the job; the engine polls it to notice a client that hung up. */
#ifndef VS_SRV_JOB_H
#define VS_SRV_JOB_H

#include <stdatomic.h>
#include <stdint.h>

#include "common/status.h"

#define VS_SRV_MAX_N 16
#define VS_SRV_PROMPT_MAX 2048 /* bytes of a text prompt, NUL included */

typedef enum { VS_SRV_FMT_B64_JSON = 0, VS_SRV_FMT_PNG } vs_srv_format;

/* A validated request (api.c fills it; every field set). */
typedef struct {
    int label;             /* a class-conditional (VAR) model's class */
    char prompt[VS_SRV_PROMPT_MAX]; /* a text-to-image (Infinity) model's prompt, UTF-8 */
    float tau;             /* Infinity: the sampling temperature */
    int n;                 /* 1..VS_SRV_MAX_N images; image i uses seed + i */
    uint64_t seed;
    int seed_given;        /* 0: the server chose the seed */
    float cfg;
    int top_k;
    float top_p;
    vs_srv_format format;
    long timeout_ms;
    int priority;          /* higher is admitted first; ties in arrival order */
    int kv_policy;         /* a vs_kv_policy_kind */
    double kv_budget;      /* fraction of the full cache (compressing policies) */
    int stream;            /* answer server-sent events (server/stream.h) */
    int partial_images;    /* 0..3 previews per image, streamed before it (stream only) */
} vs_srv_gen_params;

enum { VS_SRV_JOB_PENDING = 0, VS_SRV_JOB_DONE = 1 };

typedef struct vs_srv_job {
    /* immutable after push */
    vs_srv_gen_params p;
    char id[72];               /* request id */
    double t_arrival;          /* monotonic seconds */
    double deadline;           /* monotonic seconds */
    int fd;                    /* client socket, -1 when unknown */
    uint64_t seq;              /* arrival order, for ties in priority */
    void (*notify)(void *ctx); /* called by the engine after DONE is published */
    void *notify_ctx;
    int image_size;            /* rgb buffers are image_size² × 3 */
    struct vs_srv_stream *stream; /* stream: true, else NULL (server/stream.h); owns this job */

    /* any thread: set once by the HTTP side when the connection closed while the engine held the
     * job (a streamed response whose send failed); the engine then drops it as a client gone */
    atomic_int gone;

    /* engine only until DONE; HTTP only after */
    const struct vs_kv_policy *policy; /* resolved at the first admission (engine-owned) */
    struct vs_kv_policy *own_policy;   /* when the engine's policy cache was full; freed by it */
    size_t pages_per_image;            /* the policy's peak KV pages for one image */
    int admitted, finished;
    uint8_t *rgb[VS_SRV_MAX_N]; /* [image_size][image_size][3] each, engine-allocated */
    double t_admit, t_done;    /* monotonic seconds; t_admit 0 until the first image runs */
    double decode_s;
    int http;                  /* 200, or the error's HTTP code; 499 = the client went away */
    vs_status status;
    const char *err_type, *err_code; /* static strings for the error JSON */
    char msg[256];

    atomic_int state;          /* VS_SRV_JOB_PENDING → DONE, once */
} vs_srv_job;

/* A zeroed job (fd -1, state PENDING); NULL when out of memory. Any thread. */
vs_srv_job *vs_srv_job_new(void);
/* Frees the job and its images; NULL ok. Only by its current owner. */
void vs_srv_job_free(vs_srv_job *j);

#endif

/* server/metrics.c — see metrics.h. Rendering reads process_* numbers from /proc (Linux). */
#include "server/metrics.h"

#include "kvcache/policy.h"

#include <dirent.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "kvcache/policy.h"
#include "runtime/model.h"

#define MAX_BUCKETS 16
#define MAX_CODES 32

typedef struct {
    const double *le; /* upper bounds, ascending; +Inf is implicit */
    int n_le;
    unsigned long long count[MAX_BUCKETS + 1]; /* per bucket, not cumulative; [n_le] = over all */
    unsigned long long total;
    double sum;
} hist;

static const double le_seconds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
static const double le_step[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
static const double le_png[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5};
static const double le_rows[] = {2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
#define NLE(a) ((int)(sizeof a / sizeof a[0]))

/* codes shown from the start, so a rate() over them has a series before the first error */
static const int known_codes[] = {200, 400, 401, 404, 405, 413, 415, 429, 499, 500, 503, 504};

struct vs_srv_metrics {
    pthread_mutex_t mu;
    /* guarded by mu */
    int codes[MAX_CODES];
    unsigned long long code_count[MAX_CODES];
    int n_codes;
    unsigned long long images, kv_refused;
    double kv_seconds; /* inside steps: KV bookkeeping, selection and compaction */
    unsigned long long policy_images[VS_KV_POLICY_COUNT]; /* images generated, by KV policy */
    hist h[VS_SRV_H_COUNT];
    hist batch_rows;
    hist step[VS_RT_MAX_SCALES];
    int n_scales;
    vs_kv_stats kv;
    int policy_running[VS_KV_POLICY_COUNT];   /* images in the batch, by policy */
    size_t policy_pages[VS_KV_POLICY_COUNT];  /* pages they reserved, by policy */
    int running, engine_waiting;
    vs_rt_counters dev; /* the backend's device counters, as last published */
    char version[32], backend[32], model[128];
    double load_seconds;
    int have_model;
    double start_time; /* immutable after new */
};

static void hist_init(hist *h, const double *le, int n)
{
    memset(h, 0, sizeof *h);
    h->le = le;
    h->n_le = n;
}

static void hist_add(hist *h, double v)
{
    int b = 0;
    while (b < h->n_le && v > h->le[b])
        b++;
    h->count[b]++;
    h->total++;
    h->sum += v;
}

vs_status vs_srv_metrics_new(vs_srv_metrics **out, vs_err *err)
{
    vs_srv_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return vs_err_set(err, VS_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&m->mu, NULL);
    for (size_t i = 0; i < sizeof known_codes / sizeof known_codes[0]; i++)
        m->codes[m->n_codes++] = known_codes[i];
    hist_init(&m->h[VS_SRV_H_QUEUE], le_seconds, NLE(le_seconds));
    hist_init(&m->h[VS_SRV_H_INFER], le_seconds, NLE(le_seconds));
    hist_init(&m->h[VS_SRV_H_REQUEST], le_seconds, NLE(le_seconds));
    hist_init(&m->h[VS_SRV_H_PNG], le_png, NLE(le_png));
    hist_init(&m->h[VS_SRV_H_PREVIEW], le_step, NLE(le_step));
    hist_init(&m->batch_rows, le_rows, NLE(le_rows));
    for (int s = 0; s < VS_RT_MAX_SCALES; s++)
        hist_init(&m->step[s], le_step, NLE(le_step));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    m->start_time = (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    snprintf(m->version, sizeof m->version, "unknown");
    *out = m;
    return VS_OK;
}

void vs_srv_metrics_free(vs_srv_metrics *m)
{
    if (!m)
        return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void vs_srv_metrics_set_model(vs_srv_metrics *m, const char *version, const char *backend,
                              const char *model, double load_seconds, int n_scales)
{
    pthread_mutex_lock(&m->mu);
    snprintf(m->version, sizeof m->version, "%s", version);
    snprintf(m->backend, sizeof m->backend, "%s", backend);
    snprintf(m->model, sizeof m->model, "%s", model);
    m->load_seconds = load_seconds;
    m->n_scales = n_scales < VS_RT_MAX_SCALES ? n_scales : VS_RT_MAX_SCALES;
    m->have_model = 1;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_request(vs_srv_metrics *m, int code)
{
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->n_codes && m->codes[i] != code)
        i++;
    if (i == m->n_codes && m->n_codes < MAX_CODES)
        m->codes[m->n_codes++] = code;
    if (i < m->n_codes)
        m->code_count[i]++;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_images(vs_srv_metrics *m, int n)
{
    pthread_mutex_lock(&m->mu);
    m->images += (unsigned long long)n;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_images_policy(vs_srv_metrics *m, int policy, int n)
{
    pthread_mutex_lock(&m->mu);
    m->images += (unsigned long long)n;
    if (policy >= 0 && policy < VS_KV_POLICY_COUNT)
        m->policy_images[policy] += (unsigned long long)n;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_observe(vs_srv_metrics *m, vs_srv_hist h, double v)
{
    pthread_mutex_lock(&m->mu);
    hist_add(&m->h[h], v);
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_step(vs_srv_metrics *m, int scale, double seconds, double kv_seconds, int rows)
{
    pthread_mutex_lock(&m->mu);
    m->kv_seconds += kv_seconds;
    if (scale >= 0 && scale < VS_RT_MAX_SCALES)
        hist_add(&m->step[scale], seconds);
    hist_add(&m->batch_rows, rows);
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_kv(vs_srv_metrics *m, const vs_kv_stats *s, const int *images_by_policy,
                       const size_t *pages_by_policy)
{
    pthread_mutex_lock(&m->mu);
    m->kv = *s;
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++) {
        m->policy_running[k] = images_by_policy[k];
        m->policy_pages[k] = pages_by_policy[k];
    }
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_kv_refused(vs_srv_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    m->kv_refused++;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_device(vs_srv_metrics *m, const vs_rt_counters *c)
{
    pthread_mutex_lock(&m->mu);
    m->dev = *c;
    pthread_mutex_unlock(&m->mu);
}

void vs_srv_metrics_engine_jobs(vs_srv_metrics *m, int running, int waiting)
{
    pthread_mutex_lock(&m->mu);
    m->running = running;
    m->engine_waiting = waiting;
    pthread_mutex_unlock(&m->mu);
}

double vs_srv_metrics_mean_inference(vs_srv_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    const hist *h = &m->h[VS_SRV_H_INFER];
    double v = h->total ? h->sum / (double)h->total : 0;
    pthread_mutex_unlock(&m->mu);
    return v;
}

size_t vs_srv_metrics_kv_used_bytes(vs_srv_metrics *m)
{
    pthread_mutex_lock(&m->mu);
    size_t v = (m->kv.pages_used + m->kv.pages_reserved) * m->kv.page_bytes;
    pthread_mutex_unlock(&m->mu);
    return v;
}

/* ---- rendering ------------------------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static void head(sbuf *b, const char *name, const char *type, const char *help)
{
    put(b, "# HELP varserve_%s %s\n# TYPE varserve_%s %s\n", name, help, name, type);
}

/* Label values escaped as the text format asks: backslash, quote and newline. */
static void escape_label(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (; *src && j + 3 < cap; src++) {
        if (*src == '\\' || *src == '"') {
            dst[j++] = '\\';
            dst[j++] = *src;
        } else if (*src == '\n') {
            dst[j++] = '\\';
            dst[j++] = 'n';
        } else {
            dst[j++] = *src;
        }
    }
    dst[j] = 0;
}

static void put_hist(sbuf *b, const char *name, const char *labels, const hist *h)
{
    unsigned long long cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i < h->n_le; i++) {
        cum += h->count[i];
        put(b, "varserve_%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, h->le[i], cum);
    }
    put(b, "varserve_%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, h->total);
    if (labels[0]) {
        put(b, "varserve_%s_sum{%s} %.9g\n", name, labels, h->sum);
        put(b, "varserve_%s_count{%s} %llu\n", name, labels, h->total);
    } else {
        put(b, "varserve_%s_sum %.9g\n", name, h->sum);
        put(b, "varserve_%s_count %llu\n", name, h->total);
    }
}

static void put_process(sbuf *b, double start_time)
{
    long page = sysconf(_SC_PAGESIZE);
    unsigned long long vsz = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%llu %llu", &vsz, &rss) != 2)
            vsz = rss = 0;
        fclose(f);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec * 1e-6;
    long fds = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                fds++;
        closedir(d);
        fds--; /* the directory stream itself */
    }
    struct rlimit rl;
    double max_fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (double)rl.rlim_cur : 0;
    put(b, "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
           "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total %.3f\n", cpu);
    put(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
           "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n",
        rss * (unsigned long long)page);
    put(b, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
           "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n",
        vsz * (unsigned long long)page);
    put(b, "# HELP process_open_fds Number of open file descriptors.\n"
           "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n", fds);
    put(b, "# HELP process_max_fds Maximum number of open file descriptors.\n"
           "# TYPE process_max_fds gauge\nprocess_max_fds %.0f\n", max_fds);
    put(b, "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
           "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %.3f\n", start_time);
}

char *vs_srv_metrics_render(vs_srv_metrics *m, size_t queued, size_t *len)
{
    sbuf b = {malloc(16384), 0, 16384, 0};
    if (!b.p)
        return NULL;
    pthread_mutex_lock(&m->mu);
    head(&b, "requests_total", "counter", "HTTP requests answered, by status code (499: client went away).");
    for (int i = 0; i < m->n_codes; i++)
        put(&b, "varserve_requests_total{code=\"%d\"} %llu\n", m->codes[i], m->code_count[i]);
    head(&b, "images_generated_total", "counter", "Images generated and decoded.");
    put(&b, "varserve_images_generated_total %llu\n", m->images);
    head(&b, "kv_policy_images_total", "counter", "Images generated, by the KV cache policy they ran under.");
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++)
        put(&b, "varserve_kv_policy_images_total{policy=\"%s\"} %llu\n",
            vs_kv_policy_name((vs_kv_policy_kind)k), m->policy_images[k]);
    head(&b, "requests_waiting", "gauge", "Requests accepted and not yet running (queued or waiting for KV pages).");
    put(&b, "varserve_requests_waiting %zu\n", queued + (size_t)m->engine_waiting);
    head(&b, "requests_running", "gauge", "Requests with at least one image in the running batch.");
    put(&b, "varserve_requests_running %d\n", m->running);
    head(&b, "kv_pool_bytes", "gauge", "Size of the KV page pool in bytes.");
    put(&b, "varserve_kv_pool_bytes %zu\n", m->kv.pages_total * m->kv.page_bytes);
    head(&b, "kv_pool_used_bytes", "gauge", "KV pool bytes held by running images or promised to them.");
    put(&b, "varserve_kv_pool_used_bytes %zu\n", (m->kv.pages_used + m->kv.pages_reserved) * m->kv.page_bytes);
    head(&b, "kv_pool_pages_free", "gauge", "KV pool pages neither held nor promised.");
    put(&b, "varserve_kv_pool_pages_free %zu\n",
        m->kv.pages_free > m->kv.pages_reserved ? m->kv.pages_free - m->kv.pages_reserved : 0);
    head(&b, "kv_images_running", "gauge", "Images in the running batch, by the KV cache policy they run under.");
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++)
        put(&b, "varserve_kv_images_running{policy=\"%s\"} %d\n", vs_kv_policy_name((vs_kv_policy_kind)k),
            m->policy_running[k]);
    head(&b, "kv_pool_reserved_bytes", "gauge",
         "KV pool bytes reserved by running images (held or promised), by policy; they sum to "
         "varserve_kv_pool_used_bytes.");
    for (int k = 0; k < VS_KV_POLICY_COUNT; k++)
        put(&b, "varserve_kv_pool_reserved_bytes{policy=\"%s\"} %zu\n",
            vs_kv_policy_name((vs_kv_policy_kind)k), m->policy_pages[k] * m->kv.page_bytes);
    head(&b, "kv_reservations_refused_total", "counter",
         "Admissions the KV pool refused (an image kept waiting for pages, or one that can never fit).");
    put(&b, "varserve_kv_reservations_refused_total %llu\n", m->kv_refused);
    head(&b, "kv_seconds_total", "counter",
         "Seconds of engine steps spent on KV bookkeeping and compression (selection, compaction); "
         "compare with the sum of varserve_step_seconds.");
    put(&b, "varserve_kv_seconds_total %.6f\n", m->kv_seconds);
    /* the backend's device counters (vs_rt_counters), 0 without a device */
    const struct {
        const char *name, *type, *help;
        uint64_t v;
    } dev[] = {
        {"device_kernel_launches_total", "counter",
         "Kernel launches and cuBLAS calls the backend issued to its device (0 without one).",
         m->dev.launches},
        {"device_copies_total", "counter",
         "Device-to-device copies and memsets the backend issued one by one.", m->dev.copies},
        {"device_syncs_total", "counter", "Times the host waited for the device.", m->dev.syncs},
        {"device_h2d_bytes_total", "counter", "Bytes copied host to device.", m->dev.h2d_bytes},
        {"device_d2h_bytes_total", "counter", "Bytes copied device to host.", m->dev.d2h_bytes},
        {"device_kv_h2d_bytes_total", "counter",
         "Of the host to device bytes, those written into KV pool pages (compressed layers).",
         m->dev.kv_h2d_bytes},
        {"device_kv_d2h_bytes_total", "counter",
         "Of the device to host bytes, those read out of KV pool pages (layers being compressed).",
         m->dev.kv_d2h_bytes},
        {"device_allocated_bytes", "gauge",
         "Device memory the backend holds: weights, buffers, KV pool, scratch (0 without a device).",
         m->dev.allocated_bytes},
        {"device_allocated_peak_bytes", "gauge", "The most device memory the backend has held.",
         m->dev.allocated_peak_bytes},
    };
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) {
        head(&b, dev[i].name, dev[i].type, dev[i].help);
        put(&b, "varserve_%s %llu\n", dev[i].name, (unsigned long long)dev[i].v);
    }
    head(&b, "batch_rows", "histogram", "Rows (two per image) in each engine step.");
    put_hist(&b, "batch_rows", "", &m->batch_rows);
    head(&b, "step_seconds", "histogram", "Wall time of one engine step, by the largest scale index in it.");
    for (int s = 0; s < m->n_scales; s++) {
        char lab[32];
        snprintf(lab, sizeof lab, "scale=\"%d\"", s);
        put_hist(&b, "step_seconds", lab, &m->step[s]);
    }
    static const char *hname[VS_SRV_H_COUNT] = {"queue_seconds", "inference_seconds", "request_seconds",
                                                "png_encode_seconds", "preview_decode_seconds"};
    static const char *hhelp[VS_SRV_H_COUNT] = {
        "Time from arrival to the first image admitted to the batch.",
        "Time from the first image admitted to the last image decoded.",
        "Time from POST /generate arrival to the response, every status.",
        "Time to encode one PNG.",
        "Time the engine spent decoding one streamed preview (its count: previews decoded)."};
    for (int i = 0; i < VS_SRV_H_COUNT; i++) {
        head(&b, hname[i], "histogram", hhelp[i]);
        put_hist(&b, hname[i], "", &m->h[i]);
    }
    if (m->have_model) {
        char v[64], be[64], mo[256];
        escape_label(v, sizeof v, m->version);
        escape_label(be, sizeof be, m->backend);
        escape_label(mo, sizeof mo, m->model);
        head(&b, "build_info", "gauge", "Version, backend and model of this server (always 1).");
        put(&b, "varserve_build_info{version=\"%s\",backend=\"%s\",model=\"%s\"} 1\n", v, be, mo);
        head(&b, "model_load_seconds", "gauge", "Time it took to load the model and start the engine.");
        put(&b, "varserve_model_load_seconds %.6f\n", m->load_seconds);
    }
    double start = m->start_time;
    pthread_mutex_unlock(&m->mu);
    put_process(&b, start);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

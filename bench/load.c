/* bench/load.c — a closed-loop load generator for `varserve serve` (libcurl, one thread per
 * client).
 *
 * For each concurrency level C, C clients send POST /generate back to back until N requests in
 * all have been sent (N = max(--requests, 2·C)); each request asks for one image with its own
 * label and seed. It reports images/s over the level's wall time, client latency percentiles,
 * failures by status, the server's own split of the time (queue, inference, decode, encode, from
 * each response's "timings") and what is left: HTTP + JSON + base64 + PNG overhead as a share of
 * the request time, and the engine's step batch sizes over the level (from /metrics: the
 * batch_rows histogram before and after).
 *
 *   build/bench/load --url http://127.0.0.1:8080 --concurrency 1,4,16,64 --requests 32
 *
 * Build: bench/load.sh builds it (cc … -lcurl -lpthread) and runs a sweep against a server it
 * starts. Output: one Markdown table on stdout. */
#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"

typedef struct {
    char *p;
    size_t len;
} buf;

typedef struct {
    double latency_s;      /* client side, send to last byte */
    double queue_ms, inference_ms, decode_ms, encode_ms, total_ms;
    long code;
} sample;

typedef struct {
    const char *url;
    const char *extra; /* extra JSON fields, e.g. "\"top_k\":50" */
    int total, n_per_request;
    atomic_int next;
    sample *samples; /* [total] */
} level;

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    buf *b = ud;
    char *np = realloc(b->p, b->len + sz * n + 1);
    if (!np)
        return 0;
    b->p = np;
    memcpy(b->p + b->len, p, sz * n);
    b->len += sz * n;
    b->p[b->len] = 0;
    return sz * n;
}

static double json_num(const char *body, const char *key)
{
    const char *p = body ? strstr(body, key) : NULL;
    return p ? atof(p + strlen(key)) : NAN;
}

static void *client(void *arg)
{
    level *lv = arg;
    struct curl_slist *h = NULL;
    CURL *c = generate_handle(lv->url, on_body, 900L, &h);
    if (!c)
        return NULL; /* its requests stay unsent: code 0, counted as failed */
    for (;;) {
        int i = atomic_fetch_add(&lv->next, 1);
        if (i >= lv->total)
            break;
        char body[512];
        snprintf(body, sizeof body, "{\"class_label\":%d,\"seed\":%d,\"n\":%d,\"timeout_ms\":600000%s%s}", i % 10,
                 1000 + i, lv->n_per_request, lv->extra[0] ? "," : "", lv->extra);
        buf b = {0};
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
        double t0 = now_s();
        CURLcode rc = curl_easy_perform(c);
        sample *s = &lv->samples[i];
        s->latency_s = now_s() - t0;
        s->code = 0;
        if (rc == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &s->code);
        s->queue_ms = json_num(b.p, "\"queue_ms\":");
        s->inference_ms = json_num(b.p, "\"inference_ms\":");
        s->decode_ms = json_num(b.p, "\"decode_ms\":");
        s->encode_ms = json_num(b.p, "\"encode_ms\":");
        s->total_ms = json_num(b.p, "\"total_ms\":");
        free(b.p);
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return NULL;
}

/* batch_rows histogram from /metrics: cumulative counts per bucket, sum and count. */
typedef struct {
    double le[32], cum[32], sum, count;
    int n;
} rows_hist;

static int scrape(const char *base, rows_hist *h)
{
    memset(h, 0, sizeof *h);
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s/metrics", base);
    buf b = {0};
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || !b.p) {
        free(b.p);
        return -1;
    }
    for (char *line = strtok(b.p, "\n"); line; line = strtok(NULL, "\n")) {
        double le, v;
        if (sscanf(line, "varserve_batch_rows_bucket{le=\"%lf\"} %lf", &le, &v) == 2 && h->n < 32) {
            h->le[h->n] = le;
            h->cum[h->n++] = v;
        } else if (sscanf(line, "varserve_batch_rows_sum %lf", &v) == 1) {
            h->sum = v;
        } else if (sscanf(line, "varserve_batch_rows_count %lf", &v) == 1) {
            h->count = v;
        }
    }
    free(b.p);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *sorted, int n, double p)
{
    if (n == 0)
        return NAN;
    int i = (int)ceil(p / 100.0 * n) - 1;
    return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

int main(int argc, char **argv)
{
    const char *url = "http://127.0.0.1:8080", *levels = "1,4,16,64", *extra = "";
    int requests = 32, n_per = 1;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--url") == 0 && v)
            url = v, i++;
        else if (strcmp(argv[i], "--concurrency") == 0 && v)
            levels = v, i++;
        else if (strcmp(argv[i], "--requests") == 0 && v)
            requests = atoi(v), i++;
        else if (strcmp(argv[i], "--n") == 0 && v)
            n_per = atoi(v), i++;
        else if (strcmp(argv[i], "--extra") == 0 && v)
            extra = v, i++;
        else {
            fprintf(stderr,
                    "usage: load [--url http://127.0.0.1:8080] [--concurrency 1,4,16,64] [--requests 32]\n"
                    "            [--n 1] [--extra '\"top_k\":50']\n");
            return 2;
        }
    }
    if (requests < 1 || n_per < 1 || n_per > 16) {
        fprintf(stderr, "load: --requests must be >= 1 and --n 1..16\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_ALL);
    printf("| clients | requests | failed | images/s | p50 s | p95 s | p99 s | queue ms | inference ms | decode ms "
           "| encode ms | overhead | rows/step (mean) | rows/step (max) |\n");
    printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    char *copy = strdup(levels);
    int rc = 0;
    for (char *save = NULL, *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int conc = atoi(t);
        if (conc < 1 || conc > 1024) {
            fprintf(stderr, "load: concurrency '%s' must be 1..1024\n", t);
            rc = 2;
            break;
        }
        level lv = {url, extra, requests > 2 * conc ? requests : 2 * conc, n_per, 0, NULL};
        atomic_init(&lv.next, 0);
        lv.samples = calloc((size_t)lv.total, sizeof *lv.samples);
        pthread_t *th = calloc((size_t)conc, sizeof *th);
        rows_hist before, after;
        if (scrape(url, &before) != 0) {
            fprintf(stderr, "load: cannot reach %s/metrics\n", url);
            rc = 1;
            break;
        }
        double t0 = now_s();
        for (int i = 0; i < conc; i++)
            pthread_create(&th[i], NULL, client, &lv);
        for (int i = 0; i < conc; i++)
            pthread_join(th[i], NULL);
        double wall = now_s() - t0;
        scrape(url, &after);
        double *lat = calloc((size_t)lv.total, sizeof *lat);
        int ok = 0, failed = 0;
        double q = 0, inf = 0, dec = 0, enc = 0, lat_sum = 0, server_core = 0;
        for (int i = 0; i < lv.total; i++) {
            sample *s = &lv.samples[i];
            if (s->code != 200) {
                failed++;
                fprintf(stderr, "load: request %d: HTTP %ld\n", i, s->code);
                continue;
            }
            lat[ok++] = s->latency_s;
            q += s->queue_ms;
            inf += s->inference_ms;
            dec += s->decode_ms;
            enc += s->encode_ms;
            lat_sum += s->latency_s;
            server_core += (s->queue_ms + s->inference_ms + s->decode_ms) / 1e3;
        }
        qsort(lat, (size_t)ok, sizeof *lat, cmp_double);
        double rows_mean = after.count > before.count ? (after.sum - before.sum) / (after.count - before.count) : 0;
        double rows_max = 0;
        for (int b = 0; b < after.n && b < before.n; b++) {
            double below = b ? (after.cum[b - 1] - before.cum[b - 1]) : 0;
            if (after.cum[b] - before.cum[b] > below)
                rows_max = after.le[b];
        }
        printf("| %d | %d | %d | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %.0f | %.1f | %.1f%% | %.1f | %s%.0f |\n", conc,
               lv.total, failed, (double)ok * n_per / wall, pct(lat, ok, 50), pct(lat, ok, 95), pct(lat, ok, 99),
               ok ? q / ok : 0, ok ? inf / ok : 0, ok ? dec / ok : 0, ok ? enc / ok : 0,
               lat_sum > 0 ? 100.0 * (lat_sum - server_core) / lat_sum : 0, rows_mean, "≤", rows_max);
        fflush(stdout);
        if (failed)
            rc = 1;
        free(lat);
        free(th);
        free(lv.samples);
    }
    free(copy);
    curl_global_cleanup();
    return rc;
}

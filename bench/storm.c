/* bench/storm.c — a 429 storm against `varserve serve`: CLIENTS threads, each on one keep-alive
 * libcurl connection, POST /generate {"class_label": L} in a loop, sleeping --retry-ms after a
 * 429 (a client that honours no Retry-After) and none after any other answer, for --seconds.
 *
 *   build/bench/storm --url http://127.0.0.1:8080 --clients 128 --seconds 20 [--retry-ms 50]
 *
 * C rather than Python threads so that the load generator's own CPU is small next to the
 * server's on the same cores; it prints that CPU (getrusage) so a run can say what it took.
 * Output: one JSON line {"requests", "images", "codes": {"429": n, ...}, "cpu_s", "wall_s"}.
 * Build: cc -O2 -o build/bench/storm bench/storm.c -lcurl -lpthread (bench/soak.py does). */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "client.h"

enum { MAX_CODE = 600 };

typedef struct {
    const char *url;
    double t_end;
    long retry_ms;
    atomic_uint next_id;         /* each client's label sequence */
    atomic_long codes[MAX_CODE]; /* [http code], 0 = no answer */
} storm;

static size_t discard(char *p, size_t sz, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return sz * n;
}

static void *client(void *arg)
{
    storm *s = arg;
    struct curl_slist *h = NULL;
    CURL *c = generate_handle(s->url, discard, 60L, &h);
    if (!c)
        return NULL;
    char body[64];
    unsigned seed = atomic_fetch_add(&s->next_id, 1) * 2654435761u;
    while (now_s() < s->t_end) {
        snprintf(body, sizeof body, "{\"class_label\":%d}", rand_r(&seed) % 10);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        long code = 0;
        if (curl_easy_perform(c) == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
        atomic_fetch_add(&s->codes[code > 0 && code < MAX_CODE ? code : 0], 1);
        if (code == 429) {
            struct timespec ts = {0, s->retry_ms * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *url = "http://127.0.0.1:8080";
    int clients = 128;
    double seconds = 20;
    long retry_ms = 50;
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--url") == 0 && v)
            url = v, i++;
        else if (strcmp(argv[i], "--clients") == 0 && v)
            clients = atoi(v), i++;
        else if (strcmp(argv[i], "--seconds") == 0 && v)
            seconds = atof(v), i++;
        else if (strcmp(argv[i], "--retry-ms") == 0 && v)
            retry_ms = atol(v), i++;
        else {
            fprintf(stderr, "usage: storm [--url http://127.0.0.1:8080] [--clients 128] [--seconds 20] "
                            "[--retry-ms 50]\n");
            return 2;
        }
    }
    if (clients < 1 || clients > 4096 || !(seconds > 0) || retry_ms < 0 || retry_ms > 60000) {
        fprintf(stderr, "storm: --clients must be 1..4096, --seconds > 0 and --retry-ms 0..60000\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_ALL);
    storm *s = calloc(1, sizeof *s);
    pthread_t *th = calloc((size_t)clients, sizeof *th);
    if (!s || !th) {
        fprintf(stderr, "storm: out of memory\n");
        return 1;
    }
    s->url = url;
    s->retry_ms = retry_ms;
    double t0 = now_s();
    s->t_end = t0 + seconds;
    int started = 0;
    while (started < clients && pthread_create(&th[started], NULL, client, s) == 0)
        started++;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    double wall = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long requests = 0;
    for (int k = 0; k < MAX_CODE; k++)
        requests += atomic_load(&s->codes[k]);
    printf("{\"clients\": %d, \"requests\": %ld, \"images\": %ld, \"codes\": {", started, requests,
           atomic_load(&s->codes[200]));
    const char *sep = "";
    for (int k = 0; k < MAX_CODE; k++)
        if (atomic_load(&s->codes[k])) {
            printf("%s\"%d\": %ld", sep, k, atomic_load(&s->codes[k]));
            sep = ", ";
        }
    printf("}, \"cpu_s\": %.3f, \"wall_s\": %.3f}\n",
           (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
               ru.ru_stime.tv_usec * 1e-6,
           wall);
    free(th);
    free(s);
    curl_global_cleanup();
    return started == clients ? 0 : 1;
}

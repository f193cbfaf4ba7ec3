/* bench/client.h — what bench/load.c and bench/storm.c share: the monotonic clock and a libcurl
 * handle set up for POST BASE/generate (JSON, no Expect: 100-continue, no signals), reused by one
 * client thread for all its requests so that libcurl keeps its connection alive. Header-only:
 * each tool is one `cc` line. */
#ifndef VS_BENCH_CLIENT_H
#define VS_BENCH_CLIENT_H

#include <curl/curl.h>
#include <stdio.h>
#include <time.h>

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* NULL when libcurl is out of memory; *headers is the caller's to curl_slist_free_all. */
static inline CURL *generate_handle(const char *base, curl_write_callback on_body, long timeout_s,
                                    struct curl_slist **headers)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    *headers = curl_slist_append(curl_slist_append(NULL, "Content-Type: application/json"), "Expect:");
    char url[512];
    snprintf(url, sizeof url, "%s/generate", base);
    curl_easy_setopt(c, CURLOPT_URL, url); /* libcurl copies the string */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, *headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    return c;
}

#endif

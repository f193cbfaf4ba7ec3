/* tests/check_server.c — the HTTP daemon against a real server on an ephemeral port.
 *
 * Each case group starts `$VARSERVE_BIN serve` (default build/varserve) with the tiny fixture
 * model on 127.0.0.1:0, reads the bound port from its log, waits for /ready, talks to it with
 * libcurl (or a raw socket where the test needs control over the bytes sent), and stops it with
 * SIGTERM expecting exit status 0 — so a sanitizer report in the server fails the suite too.
 * Servers are shared by the tests of a group through unchecked fixtures (started in the parent
 * process, before libcheck forks each test).
 *
 * VARSERVE_TEST_CLIENTS sets the number of concurrent clients (default 32; fewer under TSan). */
#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvcache/policy.h"
#include "runtime/blas.h"

#define MODEL "tests/fixtures/tiny/model.safetensors"

/* ---- small utilities ------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static const char *server_bin(void)
{
    const char *b = getenv("VARSERVE_BIN");
    return b && *b ? b : "build/varserve";
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    for (size_t r; s && (r = fread(s + n, 1, cap - n - 1, f)) > 0;) {
        n += r;
        if (cap - n < 2048) {
            char *ns = realloc(s, cap *= 2);
            if (!ns) {
                free(s);
                s = NULL;
            } else {
                s = ns;
            }
        }
    }
    fclose(f);
    if (s)
        s[n] = 0;
    if (len)
        *len = n;
    return s;
}

/* ---- servers ---------------------------------------------------------------------------------- */

typedef struct {
    pid_t pid;
    int port;
    char log[64];
} server;

/* Starts a server with extra flags (NULL-terminated) and environment ("K=V", NULL-terminated).
 * 0 when it answers /ready 200. */
static int http_get_code(int port, const char *path);

static int server_start(server *s, const char *const *extra, const char *const *env)
{
    memset(s, 0, sizeof *s);
    snprintf(s->log, sizeof s->log, "/tmp/varserve-test-XXXXXX");
    int fd = mkstemp(s->log);
    if (fd < 0)
        return -1;
    const char *args[64] = {server_bin(), "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0"};
    int na = 8;
    for (int i = 0; extra && extra[i] && na < 62; i++)
        args[na++] = extra[i];
    args[na] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        execv(args[0], (char *const *)args);
        _exit(127);
    }
    close(fd);
    s->pid = pid;
    double t0 = now_s();
    while (now_s() - t0 < 30 && !s->port) {
        char *txt = read_file(s->log, NULL);
        const char *p = txt ? strstr(txt, "listening on http://127.0.0.1:") : NULL;
        if (p)
            s->port = atoi(p + strlen("listening on http://127.0.0.1:"));
        free(txt);
        int st;
        if (!s->port && waitpid(pid, &st, WNOHANG) == pid) {
            s->pid = 0;
            return -1;
        }
        if (!s->port)
            sleep_s(0.02);
    }
    while (s->port && now_s() - t0 < 120) {
        if (http_get_code(s->port, "/ready") == 200)
            return 0;
        sleep_s(0.05);
    }
    return -1;
}

/* Sends sig and waits up to timeout_s: the exit status, 128+signal when killed, -1 on timeout
 * (then the server is killed). */
static int server_stop(server *s, int sig, double timeout_s)
{
    if (!s->pid)
        return -1;
    if (sig)
        kill(s->pid, sig);
    double t0 = now_s();
    int st = 0;
    while (waitpid(s->pid, &st, WNOHANG) == 0) {
        if (now_s() - t0 > timeout_s) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &st, 0);
            s->pid = 0;
            return -1;
        }
        sleep_s(0.01);
    }
    s->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void dump_log(const server *s)
{
    char *txt = read_file(s->log, NULL);
    if (txt) {
        size_t n = strlen(txt);
        fprintf(stderr, "---- server log %s (last 4000 bytes) ----\n%s\n----\n", s->log, n > 4000 ? txt + n - 4000 : txt);
        free(txt);
    }
}

/* ---- HTTP with libcurl ------------------------------------------------------------------------ */

typedef struct {
    long code;
    char *body;
    size_t len;
    char request_id[96], retry_after[32], content_type[96], allow[64], seed[32];
    int curl_error;
} resp;

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    resp *r = ud;
    char *nb = realloc(r->body, r->len + sz * n + 1);
    if (!nb)
        return 0;
    r->body = nb;
    memcpy(r->body + r->len, p, sz * n);
    r->len += sz * n;
    r->body[r->len] = 0;
    return sz * n;
}

static void header_value(const char *line, size_t n, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return;
    const char *v = line + k + 1;
    while (*v == ' ')
        v++;
    size_t m = (size_t)(line + n - v);
    while (m && (v[m - 1] == '\r' || v[m - 1] == '\n'))
        m--;
    snprintf(out, cap, "%.*s", (int)m, v);
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    resp *r = ud;
    size_t len = sz * n;
    header_value(p, len, "X-Request-Id", r->request_id, sizeof r->request_id);
    header_value(p, len, "Retry-After", r->retry_after, sizeof r->retry_after);
    header_value(p, len, "Content-Type", r->content_type, sizeof r->content_type);
    header_value(p, len, "Allow", r->allow, sizeof r->allow);
    header_value(p, len, "X-Seed", r->seed, sizeof r->seed);
    return len;
}

/* One request. ctype NULL: no Content-Type; body NULL: none. hdrs: extra "Name: value" lines. */
static void http_req(int port, const char *method, const char *path, const char *ctype, const char *body,
                     const char *const *hdrs, resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    struct curl_slist *h = NULL;
    char ct[128];
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype ? ctype : "");
    h = curl_slist_append(h, ct); /* "Content-Type:" with nothing removes curl's default */
    h = curl_slist_append(h, "Expect:");
    for (int i = 0; hdrs && hdrs[i]; i++)
        h = curl_slist_append(h, hdrs[i]);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 300L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    r->curl_error = rc != CURLE_OK;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->code);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
}

static void resp_free(resp *r)
{
    free(r->body);
    r->body = NULL;
}

static int http_get_code(int port, const char *path)
{
    resp r;
    http_req(port, "GET", path, NULL, NULL, NULL, &r);
    resp_free(&r);
    return (int)r.code;
}

static void post(int port, const char *body, resp *r)
{
    http_req(port, "POST", "/generate", "application/json", body, NULL, r);
}

/* Asserts an error response: the code, the JSON error shape and, when given, the param. */
static void check_error(const resp *r, long code, const char *param)
{
    ck_assert_msg(r->code == code, "expected HTTP %ld, got %ld: %.300s", code, r->code, r->body ? r->body : "");
    ck_assert_ptr_nonnull(r->body);
    ck_assert_msg(strstr(r->body, "\"error\":{\"message\":\"") != NULL, "no error JSON: %s", r->body);
    ck_assert_msg(strstr(r->body, "\"type\":\"") && strstr(r->body, "\"code\":\""), "error JSON: %s", r->body);
    if (param) {
        char want[96];
        snprintf(want, sizeof want, "\"param\":\"%s\"", param);
        ck_assert_msg(strstr(r->body, want) != NULL, "expected %s in %s", want, r->body);
    }
    ck_assert_msg(r->request_id[0] != 0, "no X-Request-Id");
}

/* The value of a metric line "name value" (exact name with labels) in a /metrics body, or -1. */
static double metric_in(const char *body, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = body; p && *p;) {
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return atof(p + n + 1);
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    return -1;
}

/* The same, from a fresh scrape. */
static double metric(int port, const char *name)
{
    resp r;
    http_req(port, "GET", "/metrics", NULL, NULL, NULL, &r);
    double v = metric_in(r.body, name);
    resp_free(&r);
    return v;
}

/* Waits until metric `name` == want: 1, or 0 after timeout_s. */
static int wait_metric(int port, const char *name, double want, double timeout_s)
{
    double t0 = now_s();
    do {
        if (metric(port, name) == want)
            return 1;
        sleep_s(0.02);
    } while (now_s() - t0 < timeout_s);
    return 0;
}

/* ---- raw sockets -------------------------------------------------------------------------------- */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads until the peer closes or timeout_s; returns the status code of the response, or -1. */
static int raw_status(int fd, char *buf, size_t cap, double timeout_s)
{
    size_t n = 0;
    double t0 = now_s();
    while (n + 1 < cap && now_s() - t0 < timeout_s) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0)
            continue;
        ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
        if (r <= 0)
            break;
        n += (size_t)r;
        buf[n] = 0;
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    buf[n] = 0;
    int code = -1;
    if (sscanf(buf, "HTTP/1.%*d %d", &code) != 1)
        return -1;
    return code;
}

/* ---- the shared server ------------------------------------------------------------------------- */

static server S;
static int suite_failed;

static void shared_up(void)
{
    const char *extra[] = {"--max-batch-images", "8", "--log-level", "debug", "--http-threads", "4", NULL};
    const char *env[] = {"VARSERVE_FAILPOINT=label:9", NULL};
    if (server_start(&S, extra, env) != 0) {
        dump_log(&S);
        fprintf(stderr, "check_server: the shared server did not start\n");
        suite_failed = 1;
    }
}

static void shared_down(void)
{
    int st = server_stop(&S, SIGTERM, 60);
    if (st != 0) {
        dump_log(&S);
        fprintf(stderr, "check_server: the shared server exited with %d after SIGTERM (want 0)\n", st);
        suite_failed = 1;
    }
    unlink(S.log);
}

/* ---- basic endpoints ------------------------------------------------------------------------------ */

START_TEST(health_and_ready_answer_200_once_loaded)
{
    resp r;
    http_req(S.port, "GET", "/health", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"ok\""));
    resp_free(&r);
    http_req(S.port, "GET", "/ready", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"ready\""));
    resp_free(&r);
    http_req(S.port, "HEAD", "/health", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 200);
    resp_free(&r);
}
END_TEST

START_TEST(info_reports_model_backend_policy_and_pool)
{
    resp r;
    http_req(S.port, "GET", "/info", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.content_type, "application/json"));
    const char *want[] = {"\"image_size\":256", "\"num_classes\":10", "\"backend\":{\"name\":\"cpu\"",
                          "\"policy\":\"full\"", "\"images_fit\":8", "\"page_bytes\":8192",
                          "\"pages_per_image\":216",
                          "\"max_batch_images\":8"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(strstr(r.body, want[i]) != NULL, "no %s in %s", want[i], r.body);
    resp_free(&r);
}
END_TEST

START_TEST(unknown_path_is_404_and_wrong_method_is_405_with_allow)
{
    resp r;
    http_req(S.port, "GET", "/nope", NULL, NULL, NULL, &r);
    check_error(&r, 404, NULL);
    resp_free(&r);
    http_req(S.port, "GET", "/generate", NULL, NULL, NULL, &r);
    check_error(&r, 405, NULL);
    ck_assert_str_eq(r.allow, "POST");
    resp_free(&r);
    http_req(S.port, "POST", "/metrics", "application/json", "{}", NULL, &r);
    check_error(&r, 405, NULL);
    ck_assert_str_eq(r.allow, "GET, HEAD");
    resp_free(&r);
}
END_TEST

START_TEST(non_json_content_type_is_415)
{
    resp r;
    http_req(S.port, "POST", "/generate", "text/plain", "{\"class_label\":1}", NULL, &r);
    check_error(&r, 415, NULL);
    resp_free(&r);
    http_req(S.port, "POST", "/generate", NULL, "{\"class_label\":1}", NULL, &r);
    check_error(&r, 415, NULL);
    resp_free(&r);
}
END_TEST

START_TEST(oversized_body_is_413_before_it_is_read)
{
    /* headers announce 10 MB and wait for 100 Continue: the answer comes before any body byte */
    int fd = raw_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *req = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Content-Length: 10000000\r\nExpect: 100-continue\r\n\r\n";
    ck_assert_int_eq(send_all(fd, req, strlen(req)), 0);
    char buf[4096];
    ck_assert_int_eq(raw_status(fd, buf, sizeof buf, 10), 413);
    close(fd);

    /* a chunked body without a length is cut off at the limit too */
    fd = raw_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *head = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n";
    ck_assert_int_eq(send_all(fd, head, strlen(head)), 0);
    static char chunk[8192 + 16];
    int hl = snprintf(chunk, sizeof chunk, "2000\r\n");
    memset(chunk + hl, ' ', 8192);
    memcpy(chunk + hl + 8192, "\r\n", 2);
    for (int i = 0; i < 10; i++) /* 80 KiB > 64 KiB */
        ck_assert_int_eq(send_all(fd, chunk, (size_t)hl + 8192 + 2), 0);
    ck_assert_int_eq(send_all(fd, "0\r\n\r\n", 5), 0);
    ck_assert_int_eq(raw_status(fd, buf, sizeof buf, 10), 413);
    close(fd);
}
END_TEST

/* ---- validation: 400 naming the field ------------------------------------------------------------ */

START_TEST(bad_fields_are_400_naming_the_field)
{
    static const struct {
        const char *body, *param;
    } cases[] = {
        {"{\"n\":1}", "class_label"},
        {"{\"class_label\":10}", "class_label"},
        {"{\"class_label\":-1}", "class_label"},
        {"{\"class_label\":1.5}", "class_label"},
        {"{\"class_label\":\"no such class\"}", "class_label"},
        {"{\"class_label\":[1]}", "class_label"},
        {"{\"class_label\":1,\"n\":0}", "n"},
        {"{\"class_label\":1,\"n\":17}", "n"},
        {"{\"class_label\":1,\"n\":\"2\"}", "n"},
        {"{\"class_label\":1,\"seed\":-1}", "seed"},
        {"{\"class_label\":1,\"seed\":1e300}", "seed"},
        {"{\"class_label\":1,\"cfg_scale\":35}", "cfg_scale"},
        {"{\"class_label\":1,\"cfg_scale\":\"x\"}", "cfg_scale"},
        {"{\"class_label\":1,\"top_k\":5000}", "top_k"},
        {"{\"class_label\":1,\"top_k\":-1}", "top_k"},
        {"{\"class_label\":1,\"top_p\":1.5}", "top_p"},
        {"{\"class_label\":1,\"response_format\":\"jpeg\"}", "response_format"},
        {"{\"class_label\":1,\"response_format\":\"png\",\"n\":2}", "response_format"},
        {"{\"class_label\":1,\"timeout_ms\":0}", "timeout_ms"},
        {"{\"class_label\":1,\"timeout_ms\":999999999}", "timeout_ms"},
        {"{\"class_label\":1,\"priority\":11}", "priority"},
        {"{\"class_label\":1,\"kv_policy\":\"lru\"}", "kv_policy"},
        {"{\"class_label\":1,\"kv_policy\":3}", "kv_policy"},
        {"{\"class_label\":1,\"kv_budget\":0}", "kv_budget"},
        {"{\"class_label\":1,\"colour\":\"red\"}", "colour"},
        {"{\"class_label\":1,\"n\":1,\"n\":2}", "n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        resp r;
        post(S.port, cases[i].body, &r);
        check_error(&r, 400, cases[i].param);
        resp_free(&r);
    }
    static const char *not_json[] = {"", "{", "[1,2]", "{\"class_label\":1} trailing", "nul\x01"};
    for (size_t i = 0; i < sizeof not_json / sizeof not_json[0]; i++) {
        resp r;
        post(S.port, not_json[i], &r);
        check_error(&r, 400, NULL);
        ck_assert_ptr_nonnull(strstr(r.body, "\"param\":null"));
        resp_free(&r);
    }
}
END_TEST

/* ---- generation ------------------------------------------------------------------------------------- */

static const char b64tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t b64_decode(const char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *p = strchr(b64tab, s[i]);
        if (!p)
            break;
        v = v << 6 | (unsigned)(p - b64tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    return o;
}

/* The k-th "b64_json" string of a response (pointer and length), or NULL. */
static const char *nth_b64(const char *body, int k, size_t *len)
{
    const char *p = body;
    for (int i = 0; p && i <= k; i++) {
        p = strstr(p, "\"b64_json\":\"");
        if (p && i < k)
            p++;
    }
    if (!p)
        return NULL;
    p += strlen("\"b64_json\":\"");
    const char *e = strchr(p, '"');
    *len = e ? (size_t)(e - p) : 0;
    return p;
}

START_TEST(generate_returns_pngs_seeds_timings_and_the_request_id)
{
    resp r;
    const char *hdrs[] = {"X-Request-Id: my-req.42", NULL};
    http_req(S.port, "POST", "/generate", "application/json",
             "{\"class_label\":\"3\",\"n\":2,\"seed\":7,\"cfg_scale\":1.5,\"top_k\":900,\"top_p\":0.96,"
             "\"response_format\":\"b64_json\",\"timeout_ms\":60000,\"priority\":1,\"kv_policy\":\"full\"}",
             hdrs, &r);
    ck_assert_msg(r.code == 200, "HTTP %ld: %.300s", r.code, r.body);
    ck_assert_str_eq(r.request_id, "my-req.42");
    ck_assert_ptr_nonnull(strstr(r.body, "\"id\":\"my-req.42\""));
    ck_assert_ptr_nonnull(strstr(r.body, "\"seeds\":[7,8]"));
    ck_assert_ptr_nonnull(strstr(r.body, "\"class_label\":3"));
    const char *keys[] = {"\"queue_ms\":", "\"inference_ms\":", "\"decode_ms\":", "\"encode_ms\":", "\"total_ms\":"};
    for (int i = 0; i < 5; i++)
        ck_assert_msg(strstr(r.body, keys[i]) != NULL, "no %s", keys[i]);
    for (int k = 0; k < 2; k++) {
        size_t n;
        const char *b = nth_b64(r.body, k, &n);
        ck_assert_ptr_nonnull(b);
        unsigned char *png = malloc(n);
        size_t m = b64_decode(b, n, png);
        ck_assert_uint_gt(m, 1000);
        ck_assert_int_eq(memcmp(png, "\x89PNG\r\n\x1a\n", 8), 0);
        free(png);
    }
    ck_assert_ptr_null(nth_b64(r.body, 2, &(size_t){0}));
    resp_free(&r);
}
END_TEST

START_TEST(accept_image_png_returns_the_png_itself)
{
    resp a, b, j;
    const char *hdrs[] = {"Accept: image/png", NULL};
    http_req(S.port, "POST", "/generate", "application/json", "{\"class_label\":5,\"seed\":11}", hdrs, &a);
    ck_assert_msg(a.code == 200, "HTTP %ld", a.code);
    ck_assert_str_eq(a.content_type, "image/png");
    ck_assert_str_eq(a.seed, "11");
    ck_assert_int_eq(memcmp(a.body, "\x89PNG\r\n\x1a\n", 8), 0);
    post(S.port, "{\"class_label\":5,\"seed\":11,\"response_format\":\"png\"}", &b);
    ck_assert_int_eq(b.code, 200);
    ck_assert_str_eq(b.content_type, "image/png");
    ck_assert_uint_eq(a.len, b.len);
    ck_assert_int_eq(memcmp(a.body, b.body, a.len), 0);
    /* the same image as base64 in JSON */
    post(S.port, "{\"class_label\":5,\"seed\":11}", &j);
    ck_assert_int_eq(j.code, 200);
    size_t n;
    const char *s = nth_b64(j.body, 0, &n);
    unsigned char *png = malloc(n);
    ck_assert_uint_eq(b64_decode(s, n, png), a.len);
    ck_assert_int_eq(memcmp(png, a.body, a.len), 0);
    free(png);
    resp_free(&a);
    resp_free(&b);
    resp_free(&j);
}
END_TEST

START_TEST(a_request_without_seed_gets_one_chosen_and_returned)
{
    resp r;
    post(S.port, "{\"class_label\":2}", &r);
    ck_assert_int_eq(r.code, 200);
    const char *p = strstr(r.body, "\"seeds\":[");
    ck_assert_ptr_nonnull(p);
    unsigned long long seed = strtoull(p + 9, NULL, 10);
    ck_assert_uint_le(seed, 9007199254740991ULL);
    ck_assert_msg(r.request_id[0] && strlen(r.request_id) == 16, "generated id '%s'", r.request_id);
    /* the seed reproduces the image */
    char body[128];
    snprintf(body, sizeof body, "{\"class_label\":2,\"seed\":%llu}", seed);
    resp again;
    post(S.port, body, &again);
    ck_assert_int_eq(again.code, 200);
    size_t n1, n2;
    const char *a = nth_b64(r.body, 0, &n1), *b = nth_b64(again.body, 0, &n2);
    ck_assert_uint_eq(n1, n2);
    ck_assert_int_eq(memcmp(a, b, n1), 0);
    resp_free(&r);
    resp_free(&again);
}
END_TEST

START_TEST(compressing_policies_serve_with_fewer_kv_pages)
{
    static const char *policies[] = {"scalekv", "snapkv", "pyramidkv", "sliding", "streamingllm"};
    double before[5];
    for (int i = 0; i < 5; i++) {
        char name[96];
        snprintf(name, sizeof name, "varserve_kv_policy_images_total{policy=\"%s\"}", policies[i]);
        before[i] = metric(S.port, name);
        ck_assert_msg(before[i] >= 0, "no %s in /metrics", name);
    }
    for (int i = 0; i < 5; i++) {
        char body[160], want[96];
        snprintf(body, sizeof body, "{\"class_label\":6,\"seed\":2,\"kv_policy\":\"%s\",\"kv_budget\":0.25}",
                 policies[i]);
        resp r;
        post(S.port, body, &r);
        ck_assert_msg(r.code == 200, "%s: HTTP %ld %.300s", policies[i], r.code, r.body);
        snprintf(want, sizeof want, "\"kv\":{\"policy\":\"%s\",\"budget\":0.25,\"bytes_per_image\":", policies[i]);
        const char *p = strstr(r.body, want);
        ck_assert_msg(p != NULL, "no %s in the response", want);
        long bytes = atol(p + strlen(want));
        ck_assert_msg(bytes > 0 && bytes < 108L * 16384, "%s reserves %ld bytes per image", policies[i], bytes);
        resp_free(&r);
        char name[96];
        snprintf(name, sizeof name, "varserve_kv_policy_images_total{policy=\"%s\"}", policies[i]);
        ck_assert_msg(metric(S.port, name) == before[i] + 1, "%s not counted once", name);
    }
    resp r;
    post(S.port, "{\"class_label\":6,\"seed\":2}", &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"kv\":{\"policy\":\"full\",\"budget\":1,\"bytes_per_image\":1769472}"));
    resp_free(&r);
    ck_assert(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 5));
}
END_TEST

/* every policy of the registry, hack with the fixture's head map (tests/fixtures/tiny/model.hack.json) */
enum { MIX_POLICIES = VS_KV_POLICY_COUNT, MIX_CLIENTS = 2 * VS_KV_POLICY_COUNT, MIX_REQUESTS = 2 };
#define mix_policy(i) vs_kv_policy_name((vs_kv_policy_kind)(i))

typedef struct {
    int port, policy;
    long codes[MIX_REQUESTS];
    atomic_int done; /* set last: the scrape loop polls it (pthread_join synchronises; a
                      * pthread_tryjoin_np poll is not one ThreadSanitizer knows) */
} mix_client;

static void *mix_run(void *arg)
{
    mix_client *m = arg;
    for (int k = 0; k < MIX_REQUESTS; k++) {
        char body[160];
        snprintf(body, sizeof body, "{\"class_label\":%d,\"n\":%d,\"kv_policy\":\"%s\",\"kv_budget\":0.25}",
                 (m->policy + k) % 10, 1 + k % 2, mix_policy(m->policy));
        resp r;
        post(m->port, body, &r);
        m->codes[k] = r.code;
        resp_free(&r);
    }
    atomic_store(&m->done, 1);
    return NULL;
}

/* Many clients under mixed policies: every scrape accounts for every page of the pool. The pages
 * reserved under each policy are its running images times that policy's pages per image, they sum
 * to the used bytes, and used plus free is the whole pool. */
START_TEST(kv_pages_are_accounted_exactly_while_clients_run_mixed_policies)
{
    double per_image[MIX_POLICIES];
    for (int i = 0; i < MIX_POLICIES; i++) { /* each policy's bytes per image, from its response */
        char body[160], want[96];
        snprintf(body, sizeof body, "{\"class_label\":1,\"kv_policy\":\"%s\",\"kv_budget\":0.25}", mix_policy(i));
        resp r;
        post(S.port, body, &r);
        ck_assert_msg(r.code == 200, "%s: HTTP %ld", mix_policy(i), r.code);
        snprintf(want, sizeof want, "\"policy\":\"%s\",\"budget\":", mix_policy(i));
        const char *p = strstr(r.body, want);
        ck_assert_ptr_nonnull(p);
        p = strstr(p, "\"bytes_per_image\":");
        ck_assert_ptr_nonnull(p);
        per_image[i] = atof(p + strlen("\"bytes_per_image\":"));
        resp_free(&r);
    }
    resp info;
    http_req(S.port, "GET", "/info", NULL, NULL, NULL, &info);
    const char *pb = strstr(info.body, "\"page_bytes\":");
    ck_assert_ptr_nonnull(pb);
    double page_bytes = atof(pb + strlen("\"page_bytes\":"));
    resp_free(&info);

    pthread_t th[MIX_CLIENTS];
    mix_client cl[MIX_CLIENTS];
    for (int i = 0; i < MIX_CLIENTS; i++) {
        cl[i] = (mix_client){S.port, i % MIX_POLICIES, {0}, 0};
        pthread_create(&th[i], NULL, mix_run, &cl[i]);
    }
    int scrapes = 0, mixed = 0, busy = 0;
    double t0 = now_s();
    while (now_s() - t0 < 120) {
        resp r;
        http_req(S.port, "GET", "/metrics", NULL, NULL, NULL, &r);
        ck_assert_int_eq(r.code, 200);
        double pool = metric_in(r.body, "varserve_kv_pool_bytes");
        double used = metric_in(r.body, "varserve_kv_pool_used_bytes");
        double free_pages = metric_in(r.body, "varserve_kv_pool_pages_free");
        double sum = 0;
        int policies_running = 0, images = 0;
        for (int i = 0; i < MIX_POLICIES; i++) {
            char name[96];
            snprintf(name, sizeof name, "varserve_kv_pool_reserved_bytes{policy=\"%s\"}", mix_policy(i));
            double resv = metric_in(r.body, name);
            snprintf(name, sizeof name, "varserve_kv_images_running{policy=\"%s\"}", mix_policy(i));
            double run = metric_in(r.body, name);
            ck_assert_msg(resv >= 0 && run >= 0, "no per-policy KV gauges for %s", mix_policy(i));
            ck_assert_msg(resv == run * per_image[i],
                          "%s: %.0f images running reserve %.0f bytes, not %.0f each", mix_policy(i),
                          run, resv, per_image[i]);
            sum += resv;
            policies_running += run > 0;
            images += (int)run;
        }
        ck_assert_msg(sum == used, "per-policy reserved bytes sum to %.0f, used bytes are %.0f", sum, used);
        ck_assert_msg(used + free_pages * page_bytes == pool, "used %.0f + free %.0f pages of %.0f != pool %.0f",
                      used, free_pages, page_bytes, pool);
        resp_free(&r);
        scrapes++;
        mixed += policies_running >= 2;
        busy += images > 0;
        int alive = 0;
        for (int i = 0; i < MIX_CLIENTS; i++)
            alive += !atomic_load(&cl[i].done);
        if (!alive)
            break;
        sleep_s(0.005);
    }
    printf("kv accounting: %d scrapes, %d with images running, %d with two or more policies\n", scrapes, busy,
           mixed);
    for (int i = 0; i < MIX_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        for (int k = 0; k < MIX_REQUESTS; k++)
            ck_assert_msg(cl[i].codes[k] == 200, "client %d request %d: HTTP %ld", i, k, cl[i].codes[k]);
    }
    ck_assert_msg(mixed > 0, "no scrape saw two policies running at once (%d scrapes)", scrapes);
    ck_assert(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 5));
}
END_TEST

START_TEST(an_engine_failure_is_500_and_the_server_goes_on)
{
    resp r;
    post(S.port, "{\"class_label\":9,\"seed\":1}", &r); /* VARSERVE_FAILPOINT=label:9 */
    check_error(&r, 500, NULL);
    ck_assert_ptr_nonnull(strstr(r.body, "failpoint"));
    resp_free(&r);
    ck_assert(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 5));
    post(S.port, "{\"class_label\":8,\"seed\":1}", &r);
    ck_assert_int_eq(r.code, 200);
    resp_free(&r);
}
END_TEST

START_TEST(a_deadline_that_passes_is_504_and_frees_the_pages)
{
    resp r;
    post(S.port, "{\"class_label\":1,\"n\":16,\"timeout_ms\":150}", &r);
    check_error(&r, 504, NULL);
    ck_assert_ptr_nonnull(strstr(r.body, "deadline"));
    resp_free(&r);
    ck_assert(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 5));
    ck_assert(wait_metric(S.port, "varserve_requests_running", 0, 5));
}
END_TEST

static void *instant_deadline(void *arg)
{
    resp *r = arg;
    post(S.port, "{\"class_label\":1,\"timeout_ms\":1}", r);
    return NULL;
}

START_TEST(requests_that_expire_at_once_are_all_504)
{
    /* the engine may answer before the handler that queued the job has returned */
    enum { N = 24 };
    pthread_t th[N];
    resp r[N];
    for (int i = 0; i < N; i++)
        pthread_create(&th[i], NULL, instant_deadline, &r[i]);
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        check_error(&r[i], 504, NULL);
        resp_free(&r[i]);
    }
    ck_assert(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 5));
    ck_assert_int_eq(http_get_code(S.port, "/ready"), 200);
}
END_TEST

START_TEST(a_client_that_hangs_up_mid_generation_frees_its_pages)
{
    double before = metric(S.port, "varserve_requests_total{code=\"499\"}");
    int fd = raw_connect(S.port);
    ck_assert_int_ge(fd, 0);
    const char *body = "{\"class_label\":4,\"n\":16,\"seed\":3}";
    char req[512];
    int n = snprintf(req, sizeof req,
                     "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    ck_assert_int_eq(send_all(fd, req, (size_t)n), 0);
    ck_assert_msg(wait_metric(S.port, "varserve_requests_running", 1, 30), "the request never ran");
    ck_assert(metric(S.port, "varserve_kv_pool_used_bytes") > 0);
    close(fd);
    ck_assert_msg(wait_metric(S.port, "varserve_kv_pool_used_bytes", 0, 10), "pages not returned");
    ck_assert(wait_metric(S.port, "varserve_requests_running", 0, 5));
    ck_assert(wait_metric(S.port, "varserve_requests_total{code=\"499\"}", before + 1, 5));
    ck_assert_double_eq(metric(S.port, "varserve_kv_pool_pages_free"), 1728); /* 8 images x 216 */
}
END_TEST

/* ---- concurrency: continuous batching never changes a result -------------------------------------- */

typedef struct {
    int port, label, n;
    unsigned seed;
    double delay_s;
    resp r;
    const char *kv; /* extra JSON fields, e.g. "\"kv_policy\":\"snapkv\"" (NULL: none) */
} client;

static void *client_main(void *arg)
{
    client *c = arg;
    sleep_s(c->delay_s);
    char body[256];
    /* a long deadline: sanitizer builds are many times slower */
    snprintf(body, sizeof body, "{\"class_label\":%d,\"n\":%d,\"seed\":%u,\"top_k\":50,\"timeout_ms\":600000%s%s}",
             c->label, c->n, c->seed, c->kv ? "," : "", c->kv ? c->kv : "");
    post(c->port, body, &c->r);
    return NULL;
}

static int n_clients(void)
{
    const char *v = getenv("VARSERVE_TEST_CLIENTS");
    int n = v ? atoi(v) : 32;
    return n < 2 ? 2 : n > 256 ? 256 : n;
}

START_TEST(concurrent_clients_all_get_the_images_they_would_get_alone)
{
    int nc = n_clients();
    client *cs = calloc((size_t)nc, sizeof *cs);
    pthread_t *th = calloc((size_t)nc, sizeof *th);
    for (int i = 0; i < nc; i++) {
        /* some compress their cache: a row's policy must not leak into its batch-mates */
        static const char *kv[4] = {NULL, "\"kv_policy\":\"scalekv\",\"kv_budget\":0.2",
                                    "\"kv_policy\":\"sliding\",\"kv_budget\":0.3", NULL};
        cs[i] = (client){S.port, i % 9, 1 + (i % 5 == 0), 1000u + 17u * (unsigned)i, 0.03 * i, {0}, kv[i % 4]};
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    for (int i = 0; i < nc; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < nc; i++)
        ck_assert_msg(cs[i].r.code == 200, "client %d: HTTP %ld %.300s", i, cs[i].r.code, cs[i].r.body ? cs[i].r.body : "");

    /* steps held several images, at different scales at once */
    double one = metric(S.port, "varserve_batch_rows_bucket{le=\"2\"}");
    double all = metric(S.port, "varserve_batch_rows_count");
    ck_assert_msg(all > one, "no step ever held more than one image (%g of %g)", one, all);
    char *log = read_file(S.log, NULL);
    int mixed = 0;
    for (const char *p = log; p && (p = strstr(p, " at scales ")); p++) {
        int lo, hi;
        if (sscanf(p, " at scales %d..%d", &lo, &hi) == 2 && lo != hi)
            mixed++;
    }
    free(log);
    ck_assert_msg(mixed > 0, "no step mixed images at different scales");

    /* each alone, one after the other */
    for (int i = 0; i < nc; i++) {
        client alone = cs[i];
        alone.delay_s = 0;
        client_main(&alone);
        ck_assert_int_eq(alone.r.code, 200);
        for (int k = 0; k < cs[i].n; k++) {
            size_t n1, n2;
            const char *a = nth_b64(cs[i].r.body, k, &n1), *b = nth_b64(alone.r.body, k, &n2);
            ck_assert_ptr_nonnull(a);
            ck_assert_ptr_nonnull(b);
            ck_assert_msg(n1 == n2 && memcmp(a, b, n1) == 0, "client %d image %d differs when made alone", i, k);
        }
        resp_free(&alone.r);
    }
    for (int i = 0; i < nc; i++)
        resp_free(&cs[i].r);
    free(cs);
    free(th);
}
END_TEST

/* ---- metrics -------------------------------------------------------------------------------------- */

START_TEST(metrics_have_the_architecture_names_and_pass_promtool)
{
    resp r;
    http_req(S.port, "GET", "/metrics", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.content_type, "text/plain; version=0.0.4"));
    const char *names[] = {
        "varserve_requests_total{code=\"200\"} ", "varserve_images_generated_total ", "varserve_requests_waiting ",
        "varserve_requests_running ", "varserve_kv_pool_bytes ", "varserve_kv_pool_used_bytes ",
        "varserve_kv_pool_pages_free ", "varserve_kv_reservations_refused_total ",
        "varserve_batch_rows_bucket{le=\"+Inf\"} ", "varserve_batch_rows_sum ", "varserve_batch_rows_count ",
        "varserve_step_seconds_bucket{scale=\"0\",le=", "varserve_step_seconds_count{scale=\"9\"} ",
        "varserve_queue_seconds_bucket{", "varserve_inference_seconds_sum ", "varserve_request_seconds_count ",
        "varserve_png_encode_seconds_bucket{", "varserve_build_info{version=\"", "varserve_model_load_seconds ",
        "process_resident_memory_bytes ", "process_cpu_seconds_total ", "process_open_fds "};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        ck_assert_msg(strstr(r.body, names[i]) != NULL, "no '%s' in /metrics", names[i]);
    ck_assert_ptr_nonnull(strstr(r.body, "backend=\"cpu\",model=\"model\"} 1"));
    ck_assert_double_eq(metric(S.port, "varserve_kv_pool_bytes"), 864.0 * 16384);

    char path[] = "/tmp/varserve-metrics-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, r.body, r.len), (ssize_t)r.len);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    char out[2048] = {0};
    size_t n = fread(out, 1, sizeof out - 1, p);
    out[n] = 0;
    int st = pclose(p);
    unlink(path);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool check metrics (status %d): %s", st, out);
    resp_free(&r);
}
END_TEST

START_TEST(every_request_gets_one_access_log_line)
{
    const char *hdrs[] = {"X-Request-Id: access-log-probe", NULL};
    resp r;
    http_req(S.port, "GET", "/health", NULL, NULL, hdrs, &r);
    resp_free(&r);
    sleep_s(0.1);
    char *log = read_file(S.log, NULL);
    ck_assert_ptr_nonnull(log);
    const char *p = strstr(log, "[access-log-probe] 127.0.0.1 \"GET /health\" 200 ");
    ck_assert_msg(p != NULL, "no access line for the probe");
    ck_assert_ptr_null(strstr(p + 1, "[access-log-probe]"));
    free(log);
}
END_TEST

/* ---- servers of their own --------------------------------------------------------------------------- */

START_TEST(api_key_is_required_when_configured)
{
    server s;
    const char *extra[] = {"--api-key", "s3cret-key", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    resp r;
    post(s.port, "{\"class_label\":1}", &r);
    check_error(&r, 401, NULL);
    resp_free(&r);
    const char *wrong[] = {"Authorization: Bearer s3cret-kez", NULL};
    http_req(s.port, "POST", "/generate", "application/json", "{\"class_label\":1}", wrong, &r);
    check_error(&r, 401, NULL);
    resp_free(&r);
    const char *prefix[] = {"Authorization: Bearer s3cret", NULL};
    http_req(s.port, "POST", "/generate", "application/json", "{\"class_label\":1}", prefix, &r);
    check_error(&r, 401, NULL);
    resp_free(&r);
    /* the right key passes auth: validation answers */
    const char *right[] = {"Authorization: Bearer s3cret-key", NULL};
    http_req(s.port, "POST", "/generate", "application/json", "{\"class_label\":1,\"n\":0}", right, &r);
    check_error(&r, 400, "n");
    resp_free(&r);
    /* health, readiness and metrics stay open to probes and scrapers */
    ck_assert_int_eq(http_get_code(s.port, "/metrics"), 200);
    ck_assert_int_eq(server_stop(&s, SIGTERM, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(a_full_queue_answers_429_with_retry_after_and_serves_the_rest)
{
    server s;
    const char *extra[] = {"--queue-size", "2", "--max-batch-images", "1", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    enum { NC = 6 };
    client cs[NC];
    pthread_t th[NC];
    /* one running (n = 4 keeps it busy), two queued, the rest refused; the last one's body names
     * n twice, a 400 if it were read: a full queue is refused from the headers, body unparsed */
    for (int i = 0; i < NC; i++) {
        cs[i] = (client){s.port, i, i == 0 ? 4 : 1, (unsigned)i, i == 0 ? 0 : 0.3 + 0.05 * i, {0},
                         i == NC - 1 ? "\"n\":2" : NULL};
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    for (int i = 0; i < NC; i++)
        pthread_join(th[i], NULL);
    int ok = 0, full = 0;
    ck_assert_int_eq(cs[NC - 1].r.code, 429);
    for (int i = 0; i < NC; i++) {
        if (cs[i].r.code == 200)
            ok++;
        if (cs[i].r.code == 429) {
            full++;
            check_error(&cs[i].r, 429, NULL);
            ck_assert_msg(atoi(cs[i].r.retry_after) >= 1, "Retry-After '%s'", cs[i].r.retry_after);
            ck_assert_ptr_nonnull(strstr(cs[i].r.body, "queue_full"));
        }
        resp_free(&cs[i].r);
    }
    ck_assert_int_eq(ok, 3);
    ck_assert_int_eq(full, 3);
    ck_assert_double_eq(metric(s.port, "varserve_requests_total{code=\"429\"}"), 3);
    ck_assert_int_eq(server_stop(&s, SIGTERM, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(a_request_waiting_for_kv_pages_runs_when_they_come_back)
{
    server s;
    /* a pool for one image: the second request waits (LATER), then runs */
    const char *extra[] = {"--kv-pool-mb", "3", "--max-batch-images", "4", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    client cs[2] = {{s.port, 1, 2, 5, 0, {0}, NULL}, {s.port, 2, 1, 6, 0.2, {0}, NULL}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(cs[0].r.code, 200);
    ck_assert_int_eq(cs[1].r.code, 200);
    ck_assert(metric(s.port, "varserve_kv_reservations_refused_total") >= 1);
    ck_assert_double_eq(metric(s.port, "varserve_kv_pool_used_bytes"), 0);
    resp_free(&cs[0].r);
    resp_free(&cs[1].r);
    ck_assert_int_eq(server_stop(&s, SIGTERM, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(an_image_larger_than_the_whole_pool_is_503_naming_the_fix)
{
    server s;
    /* 128 pages: a sliding-window image fits, a full-cache one (216 pages) never can */
    const char *extra[] = {"--kv-pool-mb", "1", "--kv-policy", "sliding", "--kv-budget", "0.2", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    resp r;
    post(s.port, "{\"class_label\":1,\"kv_policy\":\"full\"}", &r);
    check_error(&r, 503, NULL);
    ck_assert_ptr_nonnull(strstr(r.body, "kv_never"));
    ck_assert_ptr_nonnull(strstr(r.body, "kv_pool_mb"));
    resp_free(&r);
    post(s.port, "{\"class_label\":1}", &r);
    ck_assert_int_eq(r.code, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "\"policy\":\"sliding\",\"budget\":0.2"));
    resp_free(&r);
    ck_assert(metric(s.port, "varserve_kv_reservations_refused_total") >= 1);
    ck_assert_int_eq(server_stop(&s, SIGTERM, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(a_queued_request_past_its_deadline_is_504)
{
    server s;
    const char *extra[] = {"--max-batch-images", "1", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    client big = {s.port, 1, 3, 1, 0, {0}, NULL};
    pthread_t th;
    pthread_create(&th, NULL, client_main, &big);
    ck_assert(wait_metric(s.port, "varserve_requests_running", 1, 30));
    resp r;
    post(s.port, "{\"class_label\":2,\"timeout_ms\":200}", &r);
    check_error(&r, 504, NULL);
    ck_assert_ptr_nonnull(strstr(r.body, "queue"));
    resp_free(&r);
    pthread_join(th, NULL);
    ck_assert_int_eq(big.r.code, 200);
    resp_free(&big.r);
    ck_assert_int_eq(server_stop(&s, SIGTERM, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0)
{
    server s;
    const char *extra[] = {"--max-batch-images", "8", "--drain-timeout-s", "600", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    enum { NC = 4 };
    client cs[NC];
    pthread_t th[NC];
    for (int i = 0; i < NC; i++) {
        cs[i] = (client){s.port, i, 2, 40u + (unsigned)i, 0, {0}, NULL};
        pthread_create(&th[i], NULL, client_main, &cs[i]);
    }
    ck_assert(wait_metric(s.port, "varserve_requests_running", NC, 30));
    kill(s.pid, SIGTERM);
    sleep_s(0.1);
    /* still listening while it drains: not ready, and new work is refused */
    resp r;
    http_req(s.port, "GET", "/ready", NULL, NULL, NULL, &r);
    ck_assert_int_eq(r.code, 503);
    ck_assert_ptr_nonnull(strstr(r.body, "draining"));
    resp_free(&r);
    post(s.port, "{\"class_label\":1}", &r);
    check_error(&r, 503, NULL);
    ck_assert(atoi(r.retry_after) >= 1);
    resp_free(&r);
    for (int i = 0; i < NC; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(cs[i].r.code == 200, "in-flight request %d: HTTP %ld", i, cs[i].r.code);
        resp_free(&cs[i].r);
    }
    int st = server_stop(&s, 0, 60);
    if (st != 0)
        dump_log(&s);
    ck_assert_int_eq(st, 0);
    unlink(s.log);
}
END_TEST

START_TEST(a_drain_past_its_timeout_answers_503_and_exits_0)
{
    server s;
    const char *extra[] = {"--drain-timeout-s", "0.3", "--max-batch-images", "2", NULL};
    ck_assert_int_eq(server_start(&s, extra, NULL), 0);
    client big = {s.port, 1, 16, 1, 0, {0}, NULL};
    pthread_t th;
    pthread_create(&th, NULL, client_main, &big);
    ck_assert(wait_metric(s.port, "varserve_requests_running", 1, 30));
    kill(s.pid, SIGTERM);
    pthread_join(th, NULL);
    check_error(&big.r, 503, NULL);
    ck_assert_ptr_nonnull(strstr(big.r.body, "shutting_down"));
    resp_free(&big.r);
    ck_assert_int_eq(server_stop(&s, 0, 30), 0);
    unlink(s.log);
}
END_TEST

START_TEST(sigint_on_an_idle_server_exits_0)
{
    server s;
    ck_assert_int_eq(server_start(&s, NULL, NULL), 0);
    ck_assert_int_eq(server_stop(&s, SIGINT, 30), 0);
    unlink(s.log);
}
END_TEST

/* ---- configuration ---------------------------------------------------------------------------------- */

/* Runs the binary with args/env, capturing stdout+stderr; returns the exit status. */
static int run_cmd(const char *const *args, const char *const *env, const char *cwd, char *out, size_t cap)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        if (cwd && chdir(cwd) != 0)
            _exit(126);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execv(args[0], (char *const *)args);
        _exit(127);
    }
    close(pfd[1]);
    size_t n = 0;
    for (ssize_t r; (r = read(pfd[0], out + n, cap - n - 1)) > 0;)
        n += (size_t)r;
    out[n] = 0;
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(the_config_file_matches_the_built_in_defaults)
{
    char bin[1024], with[8192], without[8192];
    const char *b = server_bin();
    char cwd[512];
    ck_assert_ptr_nonnull(getcwd(cwd, sizeof cwd));
    snprintf(bin, sizeof bin, "%s%s%s", b[0] == '/' ? "" : cwd, b[0] == '/' ? "" : "/", b);
    const char *a1[] = {bin, "serve", "--config", "config/varserve.json", "--print-config", NULL};
    ck_assert_int_eq(run_cmd(a1, NULL, NULL, with, sizeof with), 0);
    const char *a2[] = {bin, "serve", "--print-config", NULL};
    ck_assert_int_eq(run_cmd(a2, NULL, "/tmp", without, sizeof without), 0); /* no config/ there */
    ck_assert_str_eq(with, without);
    ck_assert_ptr_nonnull(strstr(with, "\"model\":\t\"models/mnist-var.safetensors\""));
}
END_TEST

START_TEST(overrides_apply_in_order_file_env_flags)
{
    char path[] = "/tmp/varserve-cfg-XXXXXX", out[8192];
    int fd = mkstemp(path);
    const char *cfg = "{\"port\": 1111, \"queue_size\": 5, \"api_key\": \"k\"}";
    ck_assert_int_eq(write(fd, cfg, strlen(cfg)), (ssize_t)strlen(cfg));
    close(fd);
    const char *args[] = {server_bin(), "serve", "--config", path, "--port", "3333", "--print-config", NULL};
    const char *env[] = {"VARSERVE_PORT=2222", "VARSERVE_MAX_BATCH_IMAGES=3", NULL};
    ck_assert_int_eq(run_cmd(args, env, NULL, out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "\"port\":\t3333"));
    ck_assert_ptr_nonnull(strstr(out, "\"queue_size\":\t5"));
    ck_assert_ptr_nonnull(strstr(out, "\"max_batch_images\":\t3"));
    ck_assert_ptr_nonnull(strstr(out, "\"api_key\":\t\"***\""));
    const char *args2[] = {server_bin(), "serve", "--config", path, "--kv-pool-mb=64", "--print-config", NULL};
    ck_assert_int_eq(run_cmd(args2, NULL, NULL, out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "\"kv_pool_mb\":\t64"));
    unlink(path);
}
END_TEST

START_TEST(bad_values_stop_start_up_naming_the_key)
{
    char out[8192];
    const char *a1[] = {server_bin(), "serve", "--port", "70000", NULL};
    ck_assert_int_eq(run_cmd(a1, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'port'"));
    const char *a2[] = {server_bin(), "serve", "--print-config", NULL};
    const char *e2[] = {"VARSERVE_MAX_BATCH_IMAGES=zero", NULL};
    ck_assert_int_eq(run_cmd(a2, e2, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'max_batch_images' (from VARSERVE_MAX_BATCH_IMAGES)"));
    const char *a3[] = {server_bin(), "serve", "--backend", "tpu", NULL};
    ck_assert_int_eq(run_cmd(a3, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'backend'"));
    const char *a4[] = {server_bin(), "serve", "--no-such-thing", "1", NULL};
    ck_assert_int_eq(run_cmd(a4, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "--no-such-thing"));
    /* bad config files: each must stop start-up naming what is wrong */
    static const char *const files[][2] = {{"{\"queue_size\": \"many\"}", "'queue_size'"},
                                           {"{\"queue_sise\": 3}", "'queue_sise'"},
                                           {"{\"port\": 1, \"queue_size\": 3, \"port\": 2}",
                                            "'port' appears more than once"}};
    char path[] = "/tmp/varserve-cfg-XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    const char *a5[] = {server_bin(), "serve", "--config", path, NULL};
    for (int i = 0; i < 3; i++) {
        fd = open(path, O_WRONLY | O_TRUNC);
        ck_assert_int_eq(write(fd, files[i][0], strlen(files[i][0])), (ssize_t)strlen(files[i][0]));
        close(fd);
        ck_assert_int_eq(run_cmd(a5, NULL, NULL, out, sizeof out), 2);
        ck_assert_msg(strstr(out, files[i][1]) != NULL, "%s: %s", files[i][0], out);
    }
    unlink(path);
    const char *a6[] = {server_bin(), "serve", "--default-timeout-ms", "5000", "--max-timeout-ms", "1000", NULL};
    ck_assert_int_eq(run_cmd(a6, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'default_timeout_ms'"));
    /* strict alike from the environment and flags: no spaces, '+', hex, inf, yes/1 */
    static const char *const bad_env[] = {"VARSERVE_PORT= 8080", "VARSERVE_PORT=8080 ",  "VARSERVE_PORT=+8080",
                                          "VARSERVE_PORT=0x1f90", "VARSERVE_KV_BUDGET=inf", "VARSERVE_KV_BUDGET=.5",
                                          "VARSERVE_ACCESS_LOG=yes", "VARSERVE_ACCESS_LOG=1", NULL};
    for (int i = 0; bad_env[i]; i++) {
        const char *e7[] = {bad_env[i], NULL};
        ck_assert_msg(run_cmd(a2, e7, NULL, out, sizeof out) == 2, "%s was accepted", bad_env[i]);
    }
    const char *e8[] = {"VARSERVE_KV_BUDGET=5e-1", "VARSERVE_ACCESS_LOG=false", NULL};
    ck_assert_int_eq(run_cmd(a2, e8, NULL, out, sizeof out), 0);
    ck_assert_ptr_nonnull(strstr(out, "\"kv_budget\":\t0.5"));
    const char *a9[] = {server_bin(), "serve", "--port", " 80", "--print-config", NULL};
    ck_assert_int_eq(run_cmd(a9, NULL, NULL, out, sizeof out), 2);
}
END_TEST

START_TEST(a_model_that_cannot_load_or_a_pool_too_small_exits_2_naming_the_key)
{
    char out[16384];
    const char *a1[] = {server_bin(), "serve", "--model", "/nonexistent/m.safetensors", "--host", "127.0.0.1",
                        "--port", "0", NULL};
    ck_assert_int_eq(run_cmd(a1, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'model'"));
    const char *a2[] = {server_bin(), "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", "0",
                        "--kv-pool-mb", "1", NULL};
    ck_assert_int_eq(run_cmd(a2, NULL, NULL, out, sizeof out), 2);
    ck_assert_ptr_nonnull(strstr(out, "'kv_pool_mb'"));
}
END_TEST

/* ---- suite ------------------------------------------------------------------------------------------ */

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("shared");
    tcase_add_unchecked_fixture(tc, shared_up, shared_down);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, health_and_ready_answer_200_once_loaded);
    tcase_add_test(tc, info_reports_model_backend_policy_and_pool);
    tcase_add_test(tc, unknown_path_is_404_and_wrong_method_is_405_with_allow);
    tcase_add_test(tc, non_json_content_type_is_415);
    tcase_add_test(tc, oversized_body_is_413_before_it_is_read);
    tcase_add_test(tc, bad_fields_are_400_naming_the_field);
    tcase_add_test(tc, generate_returns_pngs_seeds_timings_and_the_request_id);
    tcase_add_test(tc, accept_image_png_returns_the_png_itself);
    tcase_add_test(tc, a_request_without_seed_gets_one_chosen_and_returned);
    tcase_add_test(tc, compressing_policies_serve_with_fewer_kv_pages);
    tcase_add_test(tc, kv_pages_are_accounted_exactly_while_clients_run_mixed_policies);
    tcase_add_test(tc, an_engine_failure_is_500_and_the_server_goes_on);
    tcase_add_test(tc, a_deadline_that_passes_is_504_and_frees_the_pages);
    tcase_add_test(tc, requests_that_expire_at_once_are_all_504);
    tcase_add_test(tc, a_client_that_hangs_up_mid_generation_frees_its_pages);
    tcase_add_test(tc, concurrent_clients_all_get_the_images_they_would_get_alone);
    tcase_add_test(tc, metrics_have_the_architecture_names_and_pass_promtool);
    tcase_add_test(tc, every_request_gets_one_access_log_line);
    suite_add_tcase(s, tc);

    tc = tcase_create("own_server");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, api_key_is_required_when_configured);
    tcase_add_test(tc, a_full_queue_answers_429_with_retry_after_and_serves_the_rest);
    tcase_add_test(tc, a_request_waiting_for_kv_pages_runs_when_they_come_back);
    tcase_add_test(tc, an_image_larger_than_the_whole_pool_is_503_naming_the_fix);
    tcase_add_test(tc, a_queued_request_past_its_deadline_is_504);
    tcase_add_test(tc, sigterm_finishes_requests_in_flight_refuses_new_ones_and_exits_0);
    tcase_add_test(tc, a_drain_past_its_timeout_answers_503_and_exits_0);
    tcase_add_test(tc, sigint_on_an_idle_server_exits_0);
    suite_add_tcase(s, tc);

    tc = tcase_create("config");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, the_config_file_matches_the_built_in_defaults);
    tcase_add_test(tc, overrides_apply_in_order_file_env_flags);
    tcase_add_test(tc, bad_values_stop_start_up_naming_the_key);
    tcase_add_test(tc, a_model_that_cannot_load_or_a_pool_too_small_exits_2_naming_the_key);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    vs_rt_blas_pin_core(argv); /* the GEMMs on the kernels varserve runs (runtime/blas.h) */
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    struct stat st;
    if (stat(server_bin(), &st) != 0) {
        fprintf(stderr, "check_server: %s not found (build it, or set VARSERVE_BIN)\n", server_bin());
        return 1;
    }
    SRunner *sr = srunner_create(server_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed || suite_failed ? 1 : 0;
}

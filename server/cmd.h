/* server/cmd.h — what the varserve commands share: the common sampling and backend options, and
 * opening a model, backend, engine and KV pool for a command.
 *
 * Each command lives in its own file (cmd_<name>.c; serve in serve.c) and returns the process's
 * exit code: 0 done, 2 bad arguments (one line on stderr naming the option and what to change),
 * 1 a run-time failure (printed). The options' values are checked by the configuration's key
 * table (config/config.c), so the commands and `serve` accept the same ranges. Main thread only. */
#ifndef VS_SRV_CMD_H
#define VS_SRV_CMD_H

#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "kvcache/policy.h"
#include "kvcache/pool.h"
#include "runtime/backend.h"
#include "runtime/model.h"
#include "runtime/var.h"

/* The options every model-running command takes (--model, --cfg, --top-k, --top-p, --threads,
 * --backend, --kv-policy, --kv-budget, --precision). */
typedef struct {
    const char *model, *backend, *kv_policy;
    double cfg, top_p, kv_budget;
    long top_k, threads;
    int have_cfg, have_top_k, have_top_p; /* 0: vs_srv_cli_open takes the model's default */
    int fp32; /* --precision fp32: the CUDA backend in strict FP32 (the CPU is always FP32) */
} vs_srv_cli_opts;

/* What a command runs on: the model, a backend, an engine and, once made, a KV pool. */
typedef struct {
    vs_rt_model *m;
    vs_rt_backend *be;
    vs_rt_engine *e;
    vs_kv_pool *pool;
} vs_srv_cli_engine;

/* Prints "varserve: <message>" on stderr; returns 2, the bad-arguments exit code. */
int vs_srv_cli_bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The options at the configuration's built-in defaults. */
vs_srv_cli_opts vs_srv_cli_defaults(void);

/* Consumes one of the common options at argv[*i] (advancing *i past its value); 1 consumed, 0 not
 * one of them, -1 error (printed). */
int vs_srv_cli_opt(vs_srv_cli_opts *o, int argc, char **argv, int *i);

/* The next option at argv[*i] of command `cmd`, whose own options are `flags` (no value) and
 * `valued` (one value each; both lists NULL-terminated). A common option is consumed into o:
 * returns 0. One of the command's sets *k to its name and returns 1 for a flag, or sets *v to its
 * value, advances *i past it and returns 2. Anything else, or a missing value, is printed:
 * returns -1 (exit 2). */
int vs_srv_cli_next(vs_srv_cli_opts *o, const char *cmd, const char *const *flags,
                    const char *const *valued, int argc, char **argv, int *i, const char **k,
                    const char **v);

/* The policy named kind_name at o's budget into *out (the caller frees it); scalekv and hack
 * read the model's budget file when it exists. Prints the error; returns 1 on failure. */
int vs_srv_cli_policy(const vs_srv_cli_opts *o, const vs_rt_model *m, const char *kind_name,
                      vs_kv_policy **out);

/* Loads o->model and starts a backend and an engine for max_images into ce, and fills o's
 * sampling options the command line left unset from the model's defaults. vs_srv_cli_close frees
 * what was made, also after a failure. Prints the error; returns 2 for a bad --backend, else 1. */
int vs_srv_cli_open(vs_srv_cli_opts *o, int max_images, vs_srv_cli_engine *ce);
void vs_srv_cli_close(vs_srv_cli_engine *ce);

/* Bytes of one page of the commands' pools for model c with elements of elem_bytes (a backend's
 * kv_elem_bytes). */
size_t vs_srv_cli_page_bytes(const vs_rt_config *c, int elem_bytes);

/* A pool in be's memory that holds `images` images at pol's peak; NULL with err set on failure. */
vs_kv_pool *vs_srv_cli_pool_for(const vs_rt_model *m, vs_rt_backend *be, const vs_kv_policy *pol,
                                int images, vs_err *err);

/* The family a non-VAR file's metadata names ("an Infinity", "a T5 text encoder":
 * vs_st_family), or NULL for a VAR model or a file that does not open (the VAR loader then says
 * what is wrong). generate runs an Infinity model by prompts; inspect summarises either. */
const char *vs_srv_cli_family(const char *path);

/* generate with an Infinity model (cmd_generate_infinity.c): n prompts (≤ 256), image i with seed
 * seed + i, to <out>-<i>.png. */
int vs_srv_generate_infinity(const vs_srv_cli_opts *o, const char *const *prompts, int n, uint64_t seed,
                             const char *t5_path, const char *spiece, double tau, const char *out);

/* The commands: argv[0] is the program, argv[1] the command's name. */
int vs_srv_cmd_generate(int argc, char **argv);
int vs_srv_cmd_bench(int argc, char **argv);
int vs_srv_cmd_calibrate(int argc, char **argv);
int vs_srv_cmd_fidelity(int argc, char **argv);
int vs_srv_cmd_inspect(int argc, char **argv);
int vs_srv_serve_main(int argc, char **argv);

#endif

/* server/main.c — the varserve binary: the command table, --help, and dispatch to the commands
 * (server/cmd.h; serve in serve.c, the others in cmd_<name>.c).
 *
 * Only main exits, and only before any port opens. Bad arguments get one line naming the option
 * and what to change, and exit code 2; runtime failures exit 1. */
#include <stdio.h>
#include <string.h>

#include "kvcache/policy.h"
#include "runtime/blas.h"
#include "server/cmd.h"

/* Each command's usage, written once: `varserve --help` prints them all, `varserve CMD --help` its
 * own (serve's --help, in serve.c, adds its configuration keys). */
static const struct {
    const char *name, *args;
} commands[] = {
    {"generate", "--model M --labels 3,7 [--seed S] [--cfg X] [--top-k K] [--top-p P]\n"
                 "            [--threads N] [--backend auto|cpu|cuda] [--precision bf16|fp32]\n"
                 "            [--kv-policy P] [--kv-budget B]\n"
                 "            --out PREFIX [--tokens-out FILE.json]\n"
                 "          an Infinity model: --model M --t5 T5 --spiece SPM --prompt TEXT [--prompt ...]\n"
                 "            [--seed S] [--cfg 3] [--tau 1] [--top-k 900] [--top-p 0.97] [--backend B]\n"
                 "            --out PREFIX (FP32 on the host, slow: for trying a model)\n"},
    {"bench", "--model M [--batch 1,8] [--reps 3] [--kv-policy P] [--kv-budget B]\n"
              "            [--pool-mb MB] [--json] [sampling and backend options as for generate]\n"
              "            --json: one JSON object per batch size (images/s, phase times, device\n"
              "            counters per engine step) instead of the table\n"},
    {"calibrate", "--model M [--images 16] [--method asi|sensitivity|hack] [--top-history 32]\n"
                  "            [--out M.budgets.json, or M.hack.json for hack] [--backend auto|cpu|cuda]\n"
                  "            asi, sensitivity: ScaleKV's drafter layers; hack: HACK's head map\n"},
    {"fidelity", "--model M --kv-policy P --kv-budget B [--images 16] [--seed S] [--json]\n"
                 "            [--backend auto|cpu|cuda] [--precision bf16|fp32]\n"},
    {"inspect", "[--verify] MODEL\n"
                "            --verify: exit 1 unless the file carries a data checksum and it matches\n"},
    {"serve", "[--config FILE] [--print-config] [--KEY VALUE ...], e.g. --model M --port P\n"
              "            (varserve serve --help lists the keys)\n"},
};
#define N_COMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage_of(FILE *f, int i) { fprintf(f, "  %-9s %s", commands[i].name, commands[i].args); }

/* The KV policies P may name, from the registry (kvcache/policy.h). */
static void policies_help(FILE *f)
{
    int n;
    const vs_kv_policy_def *const *defs = vs_kv_policy_defs(&n);
    fprintf(f, "KV policies (--kv-policy P, config key kv_policy, request field kv_policy):\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %-13s %s\n", defs[i]->name, defs[i]->doc);
}

static int usage(FILE *f)
{
    fprintf(f, "usage: varserve <command> [options]\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++)
        usage_of(f, i);
    policies_help(f);
    return 2;
}

/* `varserve CMD ... --help` (or -h): CMD's usage on stdout. */
static int command_help(int argc, char **argv)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            for (int c = 0; c < N_COMMANDS; c++)
                if (strcmp(argv[1], commands[c].name) == 0) {
                    printf("usage: varserve %s %s", commands[c].name, commands[c].args);
                    if (strstr(commands[c].args, "--kv-policy"))
                        policies_help(stdout);
                    return 1;
                }
    return 0;
}

int main(int argc, char **argv)
{
    vs_rt_blas_pin_core(argv); /* before any thread: it may re-execute this program */
    if (argc < 2)
        return usage(stderr);
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "serve") == 0)
        return vs_srv_serve_main(argc, argv); /* its --help adds the configuration keys */
    if (command_help(argc, argv))
        return 0;
    if (strcmp(cmd, "generate") == 0)
        return vs_srv_cmd_generate(argc, argv);
    if (strcmp(cmd, "inspect") == 0)
        return vs_srv_cmd_inspect(argc, argv);
    if (strcmp(cmd, "bench") == 0)
        return vs_srv_cmd_bench(argc, argv);
    if (strcmp(cmd, "calibrate") == 0)
        return vs_srv_cmd_calibrate(argc, argv);
    if (strcmp(cmd, "fidelity") == 0)
        return vs_srv_cmd_fidelity(argc, argv);
    fprintf(stderr, "varserve: unknown command '%s' (commands:", cmd);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(stderr, "%s %s", i ? "," : "", commands[i].name);
    fprintf(stderr, ")\n");
    return 2;
}


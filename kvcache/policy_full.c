/* kvcache/policy_full.c — `full`: every layer keeps every token (the budget is ignored). */
#include "kvcache/policy_impl.h"

static int32_t full_cap(const vs_kv_policy *p, int layer, int head, int scale)
{
    (void)p, (void)layer, (void)head, (void)scale;
    return VS_KV_KEEP_ALL;
}

const vs_kv_policy_def vs_kv_policy_full_def = {
    .kind = VS_KV_POLICY_FULL,
    .name = "full",
    .doc = "keeps every token of every layer (no compression; the budget is ignored)",
    .compresses = 0,
    .budget_file = VS_KV_BUDGET_FILE_NONE,
    .cap = full_cap,
    .plan = vs_kv_plan_scored, /* never called: nothing is compressed */
};

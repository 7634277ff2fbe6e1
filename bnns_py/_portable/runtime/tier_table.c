/* bnns-py portable backend: one vector tier's table of entry points, compiled once per tier with
   BP_TIER set to the tier's name (see tier.h); it defines bp_tier_ops_<tier>. */
#include "tier_ops.h"

#ifndef BP_TIER
#error "tier_table.c is compiled once per vector tier, with -DBP_TIER=<name>"
#endif

#define BP_STRINGIFY2(x) #x
#define BP_STRINGIFY(x) BP_STRINGIFY2(x)
#define BP_TIER_ENTRY(member, function) .member = function,

const bp_tier_ops BP_TIER_SYMBOL(bp_tier_ops) = {
    .name = BP_STRINGIFY(BP_TIER),
    BP_TIER_FUNCTIONS(BP_TIER_ENTRY)
};

/* bnns-py portable backend: the choice of engine for each pass of a filter (plan/plan.c). */
#ifndef BNNS_PORTABLE_PLAN_H
#define BNNS_PORTABLE_PLAN_H

#include "filter.h"

/* Plan the filter's passes on the direct and Winograd engines where they take them (the others
   stay on the im2col engine), growing the filter's per-worker scratch and packed-weight sizes to
   what the plans need. A plan that cannot be made is not an error. */
void bp_plan_engines(bp_filter *f);

#endif

/* Thread-local reason for the last failure, readable through bnns_portable_last_error(). */
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

static _Thread_local char last_error[512];

void bp_set_error(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(last_error, sizeof last_error, format, args);
    va_end(args);
}

void bp_clear_error(void) { last_error[0] = '\0'; }

const char *bnns_portable_last_error(void) { return last_error; }

/* Small assertion helpers shared by the C tests. */
#ifndef SDRS_TEST_CHECK_H
#define SDRS_TEST_CHECK_H

#include <stdio.h>
#include <string.h>

#include "sdrs.h"

static int check_failures = 0;

/* Records a failure with its location; the test continues so that one run reports them all. */
#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
      check_failures++;                                                              \
    }                                                                                \
  } while (0)

/* Checks a status and, for failures, that the last error message contains `needle`. */
#define CHECK_STATUS(call, expected, needle)                                         \
  do {                                                                               \
    sdrs_status got_ = (call);                                                       \
    const char *msg_ = sdrs_last_error_message();                                    \
    if (got_ != (sdrs_status)(expected)) {                                           \
      fprintf(stderr, "%s:%d: %s returned %u (%s), expected %u; message: %s\n",      \
              __FILE__, __LINE__, #call, (unsigned)got_, sdrs_status_str(got_),      \
              (unsigned)(expected), msg_ ? msg_ : "(none)");                         \
      check_failures++;                                                              \
    } else if ((expected) != SDRS_STATUS_OK &&                                       \
               (msg_ == NULL || strstr(msg_, (needle)) == NULL)) {                   \
      fprintf(stderr, "%s:%d: %s: message \"%s\" lacks \"%s\"\n", __FILE__,          \
              __LINE__, #call, msg_ ? msg_ : "(none)", (needle));                    \
      check_failures++;                                                              \
    }                                                                                \
  } while (0)

#endif

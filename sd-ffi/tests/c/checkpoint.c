/*
 * Checkpoint scanning and conversion through the C API: a genuine checkpoint is reported
 * loadable with its tensors, globals and metadata; a hostile pickle is reported refused (and
 * converting it fails without writing anything); converting to f16 gives a safetensors file
 * that scans as such; NULLs, invalid UTF-8, bad enum values and out-of-range indexes fail with
 * messages naming the argument.
 *
 * usage: checkpoint GENUINE.ckpt HOSTILE.pkl OUTPUT_DIR
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static const char BAD_UTF8[] = {'a', (char)0xff, 'b', 0};

static void check_genuine(const char *path) {
  sdrs_scan_report *report = NULL;
  CHECK_STATUS(sdrs_checkpoint_scan(path, &report), SDRS_STATUS_OK, "");
  CHECK(report != NULL);
  CHECK(sdrs_scan_report_loadable(report));
  CHECK(sdrs_scan_report_reason(report) == NULL);
  CHECK(strstr(sdrs_scan_report_format(report), "torch") != NULL);
  CHECK(strstr(sdrs_scan_report_text(report), "verdict: LOADABLE") != NULL);

  size_t tensors = sdrs_scan_report_tensor_count(report);
  CHECK(tensors > 0);
  for (size_t i = 0; i < tensors; i++) {
    sdrs_scanned_tensor t;
    CHECK_STATUS(sdrs_scan_report_tensor(report, i, &t), SDRS_STATUS_OK, "");
    CHECK(t.name != NULL && t.name[0] != '\0');
    CHECK(t.dtype != NULL && t.dtype[0] != '\0');
    CHECK((t.rank == 0) == (t.shape == NULL));
    for (size_t d = 0; d < t.rank; d++) CHECK(t.shape[d] > 0);
  }
  sdrs_scanned_tensor t;
  CHECK_STATUS(sdrs_scan_report_tensor(report, tensors, &t), SDRS_STATUS_INVALID_ARGUMENT,
               "out of range");
  CHECK_STATUS(sdrs_scan_report_tensor(report, SIZE_MAX, &t), SDRS_STATUS_INVALID_ARGUMENT,
               "out of range");
  CHECK_STATUS(sdrs_scan_report_tensor(report, 0, NULL), SDRS_STATUS_NULL_ARGUMENT,
               "`tensor_out`");

  int rebuild = 0;
  size_t globals = sdrs_scan_report_global_count(report);
  for (size_t i = 0; i < globals; i++) {
    sdrs_scanned_global g;
    CHECK_STATUS(sdrs_scan_report_global(report, i, &g), SDRS_STATUS_OK, "");
    CHECK(g.count > 0);
    if (strcmp(g.module, "torch._utils") == 0 && strcmp(g.name, "_rebuild_tensor_v2") == 0)
      rebuild = 1;
  }
  CHECK(rebuild);
  CHECK(sdrs_scan_report_refused_global_count(report) == 0);
  sdrs_scanned_global g;
  CHECK_STATUS(sdrs_scan_report_global(report, globals, &g), SDRS_STATUS_INVALID_ARGUMENT,
               "out of range");

  int step = 0;
  size_t entries = sdrs_scan_report_metadata_count(report);
  for (size_t i = 0; i < entries; i++) {
    const char *key = NULL, *value = NULL;
    CHECK_STATUS(sdrs_scan_report_metadata(report, i, &key, &value), SDRS_STATUS_OK, "");
    CHECK(key != NULL && value != NULL);
    if (key != NULL && strcmp(key, "global_step") == 0) step = 1;
  }
  CHECK(step);
  const char *key = NULL;
  CHECK_STATUS(sdrs_scan_report_metadata(report, 0, &key, NULL), SDRS_STATUS_NULL_ARGUMENT,
               "`value_out`");
  sdrs_scan_report_free(report);
}

static void check_hostile(const char *path, const char *dir) {
  sdrs_scan_report *report = NULL;
  CHECK_STATUS(sdrs_checkpoint_scan(path, &report), SDRS_STATUS_OK, "");
  CHECK(report != NULL);
  CHECK(!sdrs_scan_report_loadable(report));
  const char *reason = sdrs_scan_report_reason(report);
  CHECK(reason != NULL && strstr(reason, "posix.system") != NULL);
  CHECK(strstr(sdrs_scan_report_text(report), "REFUSED") != NULL);
  CHECK(sdrs_scan_report_tensor_count(report) == 0);
  CHECK(sdrs_scan_report_global_count(report) == 0);
  /* Every global the refused file names, read from its opcodes: here the one payload. */
  CHECK(sdrs_scan_report_refused_global_count(report) == 1);
  sdrs_scanned_global g;
  const char *why = NULL;
  CHECK_STATUS(sdrs_scan_report_refused_global(report, 0, &g, &why), SDRS_STATUS_OK, "");
  CHECK(strcmp(g.module, "posix") == 0 && strcmp(g.name, "system") == 0 && g.count == 1);
  CHECK(why != NULL && strstr(why, "allow-list") != NULL);
  CHECK_STATUS(sdrs_scan_report_refused_global(report, 0, &g, NULL), SDRS_STATUS_OK, "");
  CHECK_STATUS(sdrs_scan_report_refused_global(report, 1, &g, &why),
               SDRS_STATUS_INVALID_ARGUMENT, "refused globals");
  CHECK_STATUS(sdrs_scan_report_refused_global(report, 0, NULL, &why),
               SDRS_STATUS_NULL_ARGUMENT, "`global_out`");
  sdrs_scan_report_free(report);

  char out[4096];
  snprintf(out, sizeof out, "%s/hostile.safetensors", dir);
  CHECK_STATUS(sdrs_checkpoint_convert(path, out, SDRS_CONVERT_DTYPE_KEEP),
               SDRS_STATUS_INVALID_MODEL, "posix.system");
}

static void check_convert(const char *genuine, const char *dir) {
  char out[4096];
  snprintf(out, sizeof out, "%s/converted.safetensors", dir);
  CHECK_STATUS(sdrs_checkpoint_convert(genuine, out, SDRS_CONVERT_DTYPE_F16), SDRS_STATUS_OK,
               "");
  sdrs_scan_report *report = NULL;
  CHECK_STATUS(sdrs_checkpoint_scan(out, &report), SDRS_STATUS_OK, "");
  CHECK(sdrs_scan_report_loadable(report));
  CHECK(strcmp(sdrs_scan_report_format(report), "safetensors") == 0);
  int halves = 0;
  for (size_t i = 0; i < sdrs_scan_report_tensor_count(report); i++) {
    sdrs_scanned_tensor t;
    CHECK_STATUS(sdrs_scan_report_tensor(report, i, &t), SDRS_STATUS_OK, "");
    CHECK(strcmp(t.dtype, "F32") != 0);
    if (strcmp(t.dtype, "F16") == 0) halves++;
  }
  CHECK(halves > 0);
  sdrs_scan_report_free(report);

  CHECK_STATUS(sdrs_checkpoint_convert(genuine, out, 4), SDRS_STATUS_INVALID_ARGUMENT,
               "sdrs_convert_dtype");
  CHECK_STATUS(sdrs_checkpoint_convert(genuine, out, UINT32_MAX),
               SDRS_STATUS_INVALID_ARGUMENT, "dtype");
  CHECK_STATUS(sdrs_checkpoint_convert(NULL, out, 0), SDRS_STATUS_NULL_ARGUMENT, "`input`");
  CHECK_STATUS(sdrs_checkpoint_convert(genuine, NULL, 0), SDRS_STATUS_NULL_ARGUMENT,
               "`output`");
  CHECK_STATUS(sdrs_checkpoint_convert(BAD_UTF8, out, 0), SDRS_STATUS_INVALID_UTF8, "`input`");
  CHECK_STATUS(sdrs_checkpoint_convert(genuine, BAD_UTF8, 0), SDRS_STATUS_INVALID_UTF8,
               "`output`");
  CHECK_STATUS(sdrs_checkpoint_convert("/nonexistent/sdrs.ckpt", out, 0),
               SDRS_STATUS_NOT_FOUND, "/nonexistent/sdrs.ckpt");
}

static void check_misuse(void) {
  sdrs_scan_report *report = (sdrs_scan_report *)&report; /* not NULL: must be reset */
  CHECK_STATUS(sdrs_checkpoint_scan("/nonexistent/sdrs.ckpt", &report), SDRS_STATUS_NOT_FOUND,
               "/nonexistent/sdrs.ckpt");
  CHECK(report == NULL);
  report = (sdrs_scan_report *)&report;
  CHECK_STATUS(sdrs_checkpoint_scan(NULL, &report), SDRS_STATUS_NULL_ARGUMENT, "`path`");
  CHECK(report == NULL);
  CHECK_STATUS(sdrs_checkpoint_scan("x", NULL), SDRS_STATUS_NULL_ARGUMENT, "`report_out`");
  CHECK_STATUS(sdrs_checkpoint_scan(BAD_UTF8, &report), SDRS_STATUS_INVALID_UTF8, "`path`");

  CHECK(!sdrs_scan_report_loadable(NULL));
  CHECK(sdrs_scan_report_text(NULL) == NULL);
  CHECK(sdrs_scan_report_format(NULL) == NULL);
  CHECK(sdrs_scan_report_reason(NULL) == NULL);
  CHECK(sdrs_scan_report_tensor_count(NULL) == 0);
  CHECK(sdrs_scan_report_global_count(NULL) == 0);
  CHECK(sdrs_scan_report_refused_global_count(NULL) == 0);
  CHECK(sdrs_scan_report_metadata_count(NULL) == 0);
  sdrs_scanned_tensor t;
  CHECK_STATUS(sdrs_scan_report_tensor(NULL, 0, &t), SDRS_STATUS_NULL_ARGUMENT, "`report`");
  sdrs_scan_report_free(NULL);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: checkpoint GENUINE.ckpt HOSTILE.pkl OUTPUT_DIR\n");
    return 2;
  }
  check_genuine(argv[1]);
  check_hostile(argv[2], argv[3]);
  check_convert(argv[1], argv[3]);
  check_misuse();
  printf("checkpoint: %d failed checks\n", check_failures);
  return check_failures == 0 ? 0 : 1;
}

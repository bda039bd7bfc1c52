/*
 * Error paths of the C API: NULL in every pointer argument, invalid UTF-8, out-of-range enums,
 * zero and huge sizes, wrong buffer lengths, load failures, and every _free(NULL).
 *
 * usage: api_errors MODEL_DIR
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

static const char BAD_UTF8[] = {'a', (char)0xff, 'b', 0};

static void check_versions(void) {
  char expected[64];
  snprintf(expected, sizeof expected, "%d.%d.%d", SDRS_VERSION_MAJOR, SDRS_VERSION_MINOR,
           SDRS_VERSION_PATCH);
  CHECK(strcmp(sdrs_version(), expected) == 0);
  CHECK(sdrs_abi_version() == SDRS_ABI_VERSION);
  CHECK(strcmp(sdrs_status_str(SDRS_STATUS_OK), "ok") == 0);
  CHECK(strcmp(sdrs_status_str(SDRS_STATUS_CANCELLED), "cancelled") == 0);
  CHECK(strcmp(sdrs_status_str(9999), "unknown status") == 0);
  CHECK(strcmp(sdrs_status_str(UINT32_MAX), "unknown status") == 0);
}

static void check_free_null(void) {
  sdrs_pipeline_free(NULL);
  sdrs_images_free(NULL);
}

static void check_load_errors(const char *model) {
  sdrs_pipeline *pipe = (sdrs_pipeline *)&pipe; /* not NULL: must be reset */
  CHECK_STATUS(sdrs_pipeline_load("/nonexistent/sdrs-model", NULL, &pipe),
               SDRS_STATUS_NOT_FOUND, "/nonexistent/sdrs-model");
  CHECK(pipe == NULL);

  pipe = (sdrs_pipeline *)&pipe;
  CHECK_STATUS(sdrs_pipeline_load(NULL, NULL, &pipe), SDRS_STATUS_NULL_ARGUMENT, "`path`");
  CHECK(pipe == NULL);
  CHECK_STATUS(sdrs_pipeline_load(model, NULL, NULL), SDRS_STATUS_NULL_ARGUMENT,
               "`pipeline_out`");

  pipe = (sdrs_pipeline *)&pipe;
  CHECK_STATUS(sdrs_pipeline_load(BAD_UTF8, NULL, &pipe), SDRS_STATUS_INVALID_UTF8, "`path`");
  CHECK(pipe == NULL);

  sdrs_load_params lp = sdrs_load_params_default();
  CHECK(lp.device_kind == SDRS_DEVICE_KIND_CPU);
  CHECK(lp.config_dir == NULL);
  CHECK(!lp.prefer_ema);
  lp.device_kind = 7;
  CHECK_STATUS(sdrs_pipeline_load(model, &lp, &pipe), SDRS_STATUS_INVALID_ARGUMENT,
               "device_kind");
  CHECK(pipe == NULL);

  lp = sdrs_load_params_default();
  lp.config_dir = BAD_UTF8;
  CHECK_STATUS(sdrs_pipeline_load(model, &lp, &pipe), SDRS_STATUS_INVALID_UTF8, "config_dir");
  CHECK(pipe == NULL);
}

/* A request that must fail before any work: the status and a word of the message. */
static void expect_rejected(const sdrs_pipeline *pipe, const sdrs_gen_params *p,
                            sdrs_status status, const char *needle, int line) {
  sdrs_images *images = (sdrs_images *)&images;
  sdrs_status got = sdrs_pipeline_generate(pipe, p, &images);
  const char *msg = sdrs_last_error_message();
  if (got != status || msg == NULL || strstr(msg, needle) == NULL || images != NULL) {
    fprintf(stderr, "line %d: expected status %u with \"%s\", got %u: %s\n", line,
            (unsigned)status, needle, (unsigned)got, msg ? msg : "(none)");
    check_failures++;
  }
  sdrs_images_free(images == (sdrs_images *)&images ? NULL : images);
}

#define REJECT(field_assignment, status, needle)            \
  do {                                                      \
    sdrs_gen_params p_ = base;                              \
    p_.field_assignment;                                    \
    expect_rejected(pipe, &p_, (status), (needle), __LINE__); \
  } while (0)

static void check_generate_errors(const sdrs_pipeline *pipe) {
  sdrs_gen_params base = sdrs_gen_params_default();
  base.prompt = "a test";
  base.width = 64;
  base.height = 64;
  base.steps = 2;

  sdrs_images *images = (sdrs_images *)&images;
  CHECK_STATUS(sdrs_pipeline_generate(NULL, &base, &images), SDRS_STATUS_NULL_ARGUMENT,
               "`pipeline`");
  CHECK(images == NULL);
  images = (sdrs_images *)&images;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, NULL, &images), SDRS_STATUS_NULL_ARGUMENT,
               "`params`");
  CHECK(images == NULL);
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &base, NULL), SDRS_STATUS_NULL_ARGUMENT,
               "`images_out`");

  REJECT(prompt = BAD_UTF8, SDRS_STATUS_INVALID_UTF8, "`prompt`");
  REJECT(negative_prompt = BAD_UTF8, SDRS_STATUS_INVALID_UTF8, "`negative_prompt`");
  REJECT(init_image_path = BAD_UTF8, SDRS_STATUS_INVALID_UTF8, "`init_image_path`");
  /* Zero and huge sizes and counts: rejected by validation before anything is allocated. */
  REJECT(width = 0, SDRS_STATUS_INVALID_ARGUMENT, "width");
  REJECT(height = 0, SDRS_STATUS_INVALID_ARGUMENT, "height");
  REJECT(width = 60, SDRS_STATUS_INVALID_ARGUMENT, "width");
  REJECT(width = UINT32_MAX, SDRS_STATUS_INVALID_ARGUMENT, "width");
  REJECT(height = 4104, SDRS_STATUS_INVALID_ARGUMENT, "height");
  REJECT(steps = 0, SDRS_STATUS_INVALID_ARGUMENT, "steps");
  REJECT(steps = UINT32_MAX, SDRS_STATUS_INVALID_ARGUMENT, "steps");
  REJECT(batch_size = 0, SDRS_STATUS_INVALID_ARGUMENT, "batch_size");
  REJECT(batch_size = UINT32_MAX, SDRS_STATUS_INVALID_ARGUMENT, "batch_size");
  REJECT(clip_skip = 0, SDRS_STATUS_INVALID_ARGUMENT, "clip_skip");
  REJECT(guidance_scale = NAN, SDRS_STATUS_INVALID_ARGUMENT, "guidance_scale");
  REJECT(guidance_scale = INFINITY, SDRS_STATUS_INVALID_ARGUMENT, "guidance_scale");
  /* Out-of-range enum values. */
  REJECT(scheduler = 7, SDRS_STATUS_INVALID_ARGUMENT, "scheduler");
  REJECT(scheduler = UINT32_MAX, SDRS_STATUS_INVALID_ARGUMENT, "scheduler");

  /* img2img inputs. */
  static const uint8_t pixels[8 * 8 * 3] = {0};
  REJECT(init_image_path = "/nonexistent/init.png", SDRS_STATUS_NOT_FOUND, "init.png");
  {
    sdrs_gen_params p = base;
    p.init_image_data = pixels;
    p.init_image_width = 8;
    p.init_image_height = 8;
    p.init_image_len = sizeof pixels - 1;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "init_image_len", __LINE__);
    p.init_image_len = sizeof pixels;
    p.init_image_width = 0;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "init_image_width", __LINE__);
    p.init_image_width = UINT32_MAX;
    p.init_image_height = UINT32_MAX;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "init_image_width", __LINE__);
    p.init_image_width = 8;
    p.init_image_height = 8;
    p.init_image_path = "/nonexistent/init.png";
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "not both", __LINE__);
    p.init_image_path = NULL;
    p.strength = 1.5;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "strength", __LINE__);
    p.strength = 0.5;
    static const float noise[4] = {0};
    p.initial_latents = noise;
    p.initial_latents_len = 1 * 4 * 8 * 8;
    /* Wrong length first (checked at the boundary), then the right length with an image. */
    p.initial_latents_len = 4;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "initial_latents_len", __LINE__);
  }
  {
    /* A latents buffer whose stated length matches an absurd size: the core rejects the size
     * without the library reading (or copying) the buffer. */
    static const float noise[4] = {0};
    sdrs_gen_params p = base;
    p.width = UINT32_MAX - 7;
    p.initial_latents = noise;
    p.initial_latents_len = SIZE_MAX;
    expect_rejected(pipe, &p, SDRS_STATUS_INVALID_ARGUMENT, "width", __LINE__);
  }

  uint32_t w = 0, h = 0;
  CHECK_STATUS(sdrs_pipeline_default_size(NULL, &w, &h), SDRS_STATUS_NULL_ARGUMENT,
               "`pipeline`");
  CHECK_STATUS(sdrs_pipeline_default_size(pipe, NULL, &h), SDRS_STATUS_NULL_ARGUMENT,
               "`width_out`");
  CHECK_STATUS(sdrs_pipeline_default_size(pipe, &w, NULL), SDRS_STATUS_NULL_ARGUMENT,
               "`height_out`");
  CHECK(w == 0 && h == 0); /* outputs untouched on failure */
  CHECK_STATUS(sdrs_pipeline_default_size(pipe, &w, &h), SDRS_STATUS_OK, "");
  CHECK(w > 0 && w % 8 == 0 && h == w);
  CHECK(sdrs_last_error_message() == NULL); /* cleared by the successful call */
}

static void check_image_accessors_null(void) {
  sdrs_image_view view;
  memset(&view, 0xAB, sizeof view);
  CHECK(sdrs_images_count(NULL) == 0);
  CHECK_STATUS(sdrs_images_get(NULL, 0, &view), SDRS_STATUS_NULL_ARGUMENT, "`images`");
  CHECK(view.data == NULL && view.width == 0);
  CHECK_STATUS(sdrs_images_get(NULL, 0, NULL), SDRS_STATUS_NULL_ARGUMENT, "`view_out`");
  CHECK(sdrs_images_infotext(NULL, 0) == NULL);
  CHECK(strstr(sdrs_last_error_message(), "`images`") != NULL);
  CHECK_STATUS(sdrs_image_save_png(NULL, 0, "/tmp/x.png"), SDRS_STATUS_NULL_ARGUMENT,
               "`images`");
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  sdrs_pipeline *pipe = NULL;
  int rc = 1;

  check_versions();
  check_free_null();
  check_load_errors(argv[1]);
  check_image_accessors_null();

  if (sdrs_pipeline_load(argv[1], NULL, &pipe) != SDRS_STATUS_OK) {
    fprintf(stderr, "loading %s failed: %s\n", argv[1], sdrs_last_error_message());
    goto cleanup;
  }
  check_generate_errors(pipe);
  rc = check_failures == 0 ? 0 : 1;

cleanup:
  sdrs_pipeline_free(pipe);
  printf("api_errors: %d failed checks\n", check_failures);
  return rc;
}

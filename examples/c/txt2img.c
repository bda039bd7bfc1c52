/*
 * Text-to-image through the sdrs C API.
 *
 *   cargo build -p sd-ffi
 *   cc -std=c11 -Iinclude examples/c/txt2img.c target/debug/libsdrs.a \
 *      -lpthread -ldl -lm -o txt2img
 *   ./txt2img tests/fixtures/tiny-sd "a lighthouse at dusk" out.png
 *
 * With the tiny random-weight fixture model the picture is noise; pass a real model folder or
 * .safetensors checkpoint for real images.
 */
#include <stdio.h>
#include <stdlib.h>

#include "sdrs.h"

static bool print_progress(void *user_data, uint32_t step, uint32_t total_steps) {
  (void)user_data;
  fprintf(stderr, "\rstep %u/%u", (unsigned)step, (unsigned)total_steps);
  if (step == total_steps) fprintf(stderr, "\n");
  return true; /* false would cancel */
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL PROMPT OUTPUT.png\n", argv[0]);
    return 2;
  }
  int rc = 1;
  sdrs_pipeline *pipe = NULL;
  sdrs_images *images = NULL;

  if (sdrs_abi_version() != SDRS_ABI_VERSION) {
    fprintf(stderr, "libsdrs ABI %u does not match the header's %d\n",
            (unsigned)sdrs_abi_version(), SDRS_ABI_VERSION);
    goto cleanup;
  }
  sdrs_load_params load = sdrs_load_params_default();
  if (sdrs_pipeline_load(argv[1], &load, &pipe) != SDRS_STATUS_OK) {
    fprintf(stderr, "error: %s\n", sdrs_last_error_message());
    goto cleanup;
  }

  sdrs_gen_params params = sdrs_gen_params_default();
  params.prompt = argv[2];
  params.steps = 10;
  params.seed = 42;
  params.scheduler = SDRS_SCHEDULER_DPM_PP2M_KARRAS;
  params.progress = print_progress;
  if (sdrs_pipeline_default_size(pipe, &params.width, &params.height) != SDRS_STATUS_OK) {
    fprintf(stderr, "error: %s\n", sdrs_last_error_message());
    goto cleanup;
  }
  sdrs_status status = sdrs_pipeline_generate(pipe, &params, &images);
  if (status != SDRS_STATUS_OK) {
    fprintf(stderr, "error (%s): %s\n", sdrs_status_str(status), sdrs_last_error_message());
    goto cleanup;
  }
  if (sdrs_image_save_png(images, 0, argv[3]) != SDRS_STATUS_OK) {
    fprintf(stderr, "error: %s\n", sdrs_last_error_message());
    goto cleanup;
  }
  printf("%s\n%s\n", argv[3], sdrs_images_infotext(images, 0));
  rc = 0;

cleanup:
  sdrs_images_free(images);
  sdrs_pipeline_free(pipe);
  return rc;
}

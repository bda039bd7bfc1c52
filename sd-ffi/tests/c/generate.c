/*
 * Full generations through the C API on the tiny fixture model: text-to-image, caller-supplied
 * latents, img2img from a file and from RGB bytes, progress reports, cancellation, image
 * accessors, PNG output, and one pipeline used by two threads at once. Pixels are written to
 * OUT_DIR for the Rust test to compare with the Rust API's output.
 *
 * usage: generate MODEL_DIR OUT_DIR INIT_PNG INIT_RGB INIT_WIDTH INIT_HEIGHT
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

enum { SIDE = 64, STEPS = 4, LATENTS = 2 * 4 * (SIDE / 8) * (SIDE / 8) };

static sdrs_gen_params base_params(void) {
  sdrs_gen_params p = sdrs_gen_params_default();
  p.prompt = "a red lighthouse at dusk";
  p.negative_prompt = "blurry";
  p.width = SIDE;
  p.height = SIDE;
  p.steps = STEPS;
  p.seed = 42;
  p.scheduler = SDRS_SCHEDULER_EULER_ANCESTRAL;
  return p;
}

/* Writes every image's pixels, one after the other, to OUT_DIR/NAME. */
static int write_pixels(const sdrs_images *images, const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) return 0;
  int ok = 1;
  for (size_t i = 0; i < sdrs_images_count(images); i++) {
    sdrs_image_view v;
    if (sdrs_images_get(images, i, &v) != SDRS_STATUS_OK) ok = 0;
    else if (fwrite(v.data, 1, v.stride * v.height, f) != v.stride * v.height) ok = 0;
  }
  return fclose(f) == 0 && ok;
}

struct progress_log {
  uint32_t calls;
  uint32_t last_step;
  uint32_t total;
  uint32_t cancel_at; /* 0: never cancel */
  int in_order;
};

static bool on_progress(void *user_data, uint32_t step, uint32_t total_steps) {
  struct progress_log *log = user_data;
  log->calls++;
  if (step != log->last_step + 1) log->in_order = 0;
  log->last_step = step;
  log->total = total_steps;
  return log->cancel_at == 0 || step < log->cancel_at;
}

static int same_pixels(const sdrs_images *a, const sdrs_images *b) {
  if (sdrs_images_count(a) != sdrs_images_count(b)) return 0;
  for (size_t i = 0; i < sdrs_images_count(a); i++) {
    sdrs_image_view va, vb;
    if (sdrs_images_get(a, i, &va) != SDRS_STATUS_OK) return 0;
    if (sdrs_images_get(b, i, &vb) != SDRS_STATUS_OK) return 0;
    if (va.width != vb.width || va.height != vb.height) return 0;
    if (memcmp(va.data, vb.data, va.stride * va.height) != 0) return 0;
  }
  return 1;
}

struct thread_job {
  const sdrs_pipeline *pipe;
  sdrs_images *images;
  sdrs_status status;
};

static void *run_job(void *arg) {
  struct thread_job *job = arg;
  sdrs_gen_params p = base_params();
  job->status = sdrs_pipeline_generate(job->pipe, &p, &job->images);
  return NULL;
}

static uint8_t *read_file(const char *path, size_t expected) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  uint8_t *buf = malloc(expected);
  if (buf != NULL && fread(buf, 1, expected, f) != expected) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s MODEL_DIR OUT_DIR INIT_PNG INIT_RGB INIT_W INIT_H\n", argv[0]);
    return 2;
  }
  const char *out_dir = argv[2];
  const uint32_t init_w = (uint32_t)strtoul(argv[5], NULL, 10);
  const uint32_t init_h = (uint32_t)strtoul(argv[6], NULL, 10);
  int rc = 1;
  sdrs_pipeline *pipe = NULL;
  sdrs_images *txt = NULL, *latent_run = NULL, *from_file = NULL, *from_bytes = NULL;
  sdrs_images *cancelled = NULL;
  struct thread_job jobs[2] = {{0}, {0}};
  uint8_t *init_rgb = NULL;
  float *noise = NULL;

  if (sdrs_pipeline_load(argv[1], NULL, &pipe) != SDRS_STATUS_OK) {
    fprintf(stderr, "load: %s\n", sdrs_last_error_message());
    goto cleanup;
  }

  /* Text-to-image, batch of 2, with progress reports. */
  struct progress_log log = {0, 0, 0, 0, 1};
  sdrs_gen_params p = base_params();
  p.batch_size = 2;
  p.progress = on_progress;
  p.progress_user_data = &log;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &txt), SDRS_STATUS_OK, "");
  if (txt == NULL) goto cleanup;
  CHECK(log.calls == STEPS && log.total == STEPS && log.in_order);
  CHECK(sdrs_images_count(txt) == 2);
  sdrs_image_view view;
  CHECK_STATUS(sdrs_images_get(txt, 1, &view), SDRS_STATUS_OK, "");
  CHECK(view.width == SIDE && view.height == SIDE && view.channels == 3);
  CHECK(view.stride == SIDE * 3 && view.data != NULL);
  CHECK_STATUS(sdrs_images_get(txt, 2, &view), SDRS_STATUS_INVALID_ARGUMENT, "index");
  CHECK(view.data == NULL);
  const char *info = sdrs_images_infotext(txt, 0);
  CHECK(info != NULL && strstr(info, "a red lighthouse at dusk") != NULL);
  CHECK(info != NULL && strstr(info, "Seed: 42") != NULL);
  CHECK(info != NULL && strstr(info, "Batch pos: 0") != NULL);
  CHECK(sdrs_images_infotext(txt, 2) == NULL);
  CHECK(strstr(sdrs_last_error_message(), "index") != NULL);
  char png[4096];
  snprintf(png, sizeof png, "%s/txt2img.png", out_dir);
  CHECK_STATUS(sdrs_image_save_png(txt, 0, png), SDRS_STATUS_OK, "");
  CHECK_STATUS(sdrs_image_save_png(txt, 0, NULL), SDRS_STATUS_NULL_ARGUMENT, "`path`");
  CHECK_STATUS(sdrs_image_save_png(txt, 9, png), SDRS_STATUS_INVALID_ARGUMENT, "index");
  CHECK(write_pixels(txt, out_dir, "txt2img.rgb"));

  /* Caller-supplied latents (a fixed pattern the Rust test recomputes). */
  noise = malloc(LATENTS * sizeof *noise);
  if (noise == NULL) goto cleanup;
  for (int i = 0; i < LATENTS; i++) noise[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
  p = base_params();
  p.batch_size = 2;
  p.scheduler = SDRS_SCHEDULER_DPM_PP2M_KARRAS;
  p.initial_latents = noise;
  p.initial_latents_len = LATENTS;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &latent_run), SDRS_STATUS_OK, "");
  if (latent_run != NULL) CHECK(write_pixels(latent_run, out_dir, "latents.rgb"));

  /* img2img from the file and from the same pixels in memory: identical results. */
  p = base_params();
  p.scheduler = SDRS_SCHEDULER_DDIM;
  p.strength = 0.75;
  p.init_image_path = argv[3];
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &from_file), SDRS_STATUS_OK, "");
  init_rgb = read_file(argv[4], (size_t)init_w * init_h * 3);
  CHECK(init_rgb != NULL);
  if (init_rgb == NULL || from_file == NULL) goto cleanup;
  p.init_image_path = NULL;
  p.init_image_data = init_rgb;
  p.init_image_width = init_w;
  p.init_image_height = init_h;
  p.init_image_len = (size_t)init_w * init_h * 3;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &from_bytes), SDRS_STATUS_OK, "");
  if (from_bytes != NULL) CHECK(same_pixels(from_file, from_bytes));
  CHECK(write_pixels(from_file, out_dir, "img2img.rgb"));

  /* Cancellation from the callback at step 2: no images, status CANCELLED. */
  struct progress_log stop = {0, 0, 0, 2, 1};
  p = base_params();
  p.progress = on_progress;
  p.progress_user_data = &stop;
  cancelled = (sdrs_images *)&cancelled;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &cancelled), SDRS_STATUS_CANCELLED,
               "cancelled");
  CHECK(cancelled == NULL);
  CHECK(stop.calls == 2);

  /* One pipeline, two threads at once: both match each other and the batch's first image. */
  pthread_t threads[2];
  int started = 0;
  for (int i = 0; i < 2; i++) {
    jobs[i].pipe = pipe;
    if (pthread_create(&threads[i], NULL, run_job, &jobs[i]) == 0) started++;
  }
  for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
  CHECK(started == 2);
  CHECK(jobs[0].status == SDRS_STATUS_OK && jobs[1].status == SDRS_STATUS_OK);
  if (jobs[0].images != NULL && jobs[1].images != NULL) {
    CHECK(same_pixels(jobs[0].images, jobs[1].images));
    CHECK(write_pixels(jobs[0].images, out_dir, "thread.rgb"));
  }

  rc = check_failures == 0 ? 0 : 1;

cleanup:
  for (int i = 0; i < 2; i++) sdrs_images_free(jobs[i].images);
  sdrs_images_free(from_bytes);
  sdrs_images_free(from_file);
  sdrs_images_free(latent_run);
  sdrs_images_free(txt);
  sdrs_pipeline_free(pipe);
  free(init_rgb);
  free(noise);
  printf("generate: %d failed checks\n", check_failures);
  return rc;
}

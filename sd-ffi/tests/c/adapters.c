/*
 * Adapters through the C API on the tiny fixture model: a LoRA with separate text-encoder and
 * UNet strengths, a hypernetwork and a textual inversion in one generation (pixels written for
 * the Rust test to compare with the Rust API's), the same LoRA named by a prompt tag and found
 * in `lora_dir`, the adapter report, and misuse: NULL arrays and entries, counts out of range,
 * missing files, invalid UTF-8, non-finite strengths, unknown enum values, unresolvable tags.
 *
 * usage: adapters MODEL_DIR FIXTURES_DIR OUT_DIR
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "check.h"

static const char BAD_UTF8[] = {'a', (char)0xff, 'b', 0};

static char lora_path[8192], lora_dir[4096], hn_path[8192], ti_path[8192];

static sdrs_gen_params base_params(void) {
  sdrs_gen_params p = sdrs_gen_params_default();
  p.prompt = "a red lighthouse in the style of ti-alpha";
  p.negative_prompt = "blurry";
  p.width = 64;
  p.height = 64;
  p.steps = 4;
  p.seed = 42;
  p.scheduler = SDRS_SCHEDULER_EULER;
  return p;
}

static int write_pixels(const sdrs_images *images, const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL) return 0;
  sdrs_image_view v;
  int ok = sdrs_images_get(images, 0, &v) == SDRS_STATUS_OK &&
           fwrite(v.data, 1, v.stride * v.height, f) == v.stride * v.height;
  return fclose(f) == 0 && ok;
}

static int same_pixels(const sdrs_images *a, const sdrs_images *b) {
  sdrs_image_view va, vb;
  if (sdrs_images_get(a, 0, &va) != SDRS_STATUS_OK) return 0;
  if (sdrs_images_get(b, 0, &vb) != SDRS_STATUS_OK) return 0;
  return va.stride * va.height == vb.stride * vb.height &&
         memcmp(va.data, vb.data, va.stride * va.height) == 0;
}

static void check_misuse(const sdrs_pipeline *pipe) {
  sdrs_images *out = NULL;
  sdrs_gen_params p = base_params();
  p.lora_count = 1; /* loras is NULL */
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_NULL_ARGUMENT, "`loras`");
  CHECK(out == NULL);

  sdrs_lora bad = {NULL, 1.0f, 1.0f};
  p = base_params();
  p.loras = &bad;
  p.lora_count = 1;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_NULL_ARGUMENT,
               "loras[0].path");
  bad.path = "/nonexistent/style.safetensors";
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_NOT_FOUND,
               "/nonexistent/style.safetensors");
  bad.path = BAD_UTF8;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_UTF8,
               "loras[0].path");
  bad.path = lora_path;
  bad.unet_strength = NAN;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "not a finite number");
  bad.unet_strength = INFINITY;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "not a finite number");
  p.lora_count = 100000;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "at most 256");
  p.lora_count = SIZE_MAX;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "at most 256");

  const char *embeddings[1] = {NULL};
  p = base_params();
  p.embeddings = embeddings;
  p.embedding_count = 1;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_NULL_ARGUMENT,
               "embeddings[0]");
  sdrs_hypernetwork hn = {hn_path, NAN};
  p = base_params();
  p.hypernetworks = &hn;
  p.hypernetwork_count = 1;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "not a finite number");

  p = base_params();
  p.prompt_syntax = 2;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "sdrs_prompt_syntax");
  p = base_params();
  p.emphasis = UINT32_MAX;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "sdrs_emphasis");
  p = base_params();
  p.prompt = "a cat <lora:kohya_locon:1>";
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_ARGUMENT,
               "<lora:kohya_locon>");
  p.lora_dir = BAD_UTF8;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &out), SDRS_STATUS_INVALID_UTF8, "lora_dir");
  CHECK(out == NULL);
  CHECK(sdrs_images_adapter_report(NULL) == NULL);
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s MODEL_DIR FIXTURES_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  if (strlen(argv[2]) > 4000) {
    fprintf(stderr, "FIXTURES_DIR is too long\n");
    return 2;
  }
  snprintf(lora_dir, sizeof lora_dir, "%s/lora", argv[2]);
  snprintf(lora_path, sizeof lora_path, "%s/kohya_locon.safetensors", lora_dir);
  snprintf(hn_path, sizeof hn_path, "%s/hypernetwork/hn-relu.pt", argv[2]);
  snprintf(ti_path, sizeof ti_path, "%s/ti/ti-alpha.pt", argv[2]);
  int rc = 1;
  sdrs_pipeline *pipe = NULL;
  sdrs_images *flags = NULL, *tags = NULL, *again = NULL;
  if (sdrs_pipeline_load(argv[1], NULL, &pipe) != SDRS_STATUS_OK) {
    fprintf(stderr, "load: %s\n", sdrs_last_error_message());
    goto cleanup;
  }

  sdrs_lora lora = {lora_path, 0.5f, 0.8f};
  sdrs_hypernetwork hn = {hn_path, 0.6f};
  const char *embeddings[1] = {ti_path};
  sdrs_gen_params p = base_params();
  p.loras = &lora;
  p.lora_count = 1;
  p.hypernetworks = &hn;
  p.hypernetwork_count = 1;
  p.embeddings = embeddings;
  p.embedding_count = 1;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &flags), SDRS_STATUS_OK, "");
  if (flags == NULL) goto cleanup;
  CHECK(write_pixels(flags, argv[3], "adapters.rgb"));
  const char *report = sdrs_images_adapter_report(flags);
  CHECK(report != NULL && strstr(report, "lora kohya_locon: ") != NULL);
  const char *info = sdrs_images_infotext(flags, 0);
  CHECK(info != NULL && strstr(info, "<lora:kohya_locon:0.5:0.8>") != NULL);
  CHECK(info != NULL && strstr(info, "<hypernet:hn-relu:0.6>") != NULL);
  CHECK(info != NULL && strstr(info, "Lora hashes: ") != NULL);
  CHECK(info != NULL && strstr(info, "TI hashes: ") != NULL);

  /* The same generation again reuses the loaded files; the result is identical. */
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &again), SDRS_STATUS_OK, "");
  if (again != NULL) CHECK(same_pixels(flags, again));

  /* The LoRA named by a prompt tag and found in lora_dir: the same image. */
  p.loras = NULL;
  p.lora_count = 0;
  p.prompt = "a red lighthouse in the style of ti-alpha <lora:kohya_locon:0.5:0.8>";
  p.lora_dir = lora_dir;
  CHECK_STATUS(sdrs_pipeline_generate(pipe, &p, &tags), SDRS_STATUS_OK, "");
  if (tags != NULL) CHECK(same_pixels(flags, tags));

  check_misuse(pipe);
  rc = 0;
cleanup:
  sdrs_images_free(flags);
  sdrs_images_free(tags);
  sdrs_images_free(again);
  sdrs_pipeline_free(pipe);
  printf("adapters: %d failed checks\n", check_failures);
  return rc == 0 && check_failures == 0 ? 0 : 1;
}

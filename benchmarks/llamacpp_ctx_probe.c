// Create one llama.cpp context and print llama.cpp's own log of what it allocated (KV cache, output and
// compute buffers), then exit: nothing is decoded. Built and run by benchmarks/llamacpp_buffers.py.
//   llamacpp_ctx_probe MODEL N_CTX N_BATCH N_UBATCH N_SEQ_MAX KV_UNIFIED
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

static void log_all(enum ggml_log_level level, const char * text, void * user) {
    (void) level;
    (void) user;
    fputs(text, stdout);  // every level: the DEBUG lines carry the compute buffer to 4 decimals
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL N_CTX N_BATCH N_UBATCH N_SEQ_MAX KV_UNIFIED\n", argv[0]);
        return 2;
    }
    llama_log_set(log_all, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == NULL) {
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t) atoi(argv[2]);
    cp.n_batch = (uint32_t) atoi(argv[3]);
    cp.n_ubatch = (uint32_t) atoi(argv[4]);
    cp.n_seq_max = (uint32_t) atoi(argv[5]);
    cp.kv_unified = atoi(argv[6]) != 0;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.swa_full = false;  // as llama-cli and llama-server run (common_params); the library's default is true
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == NULL) {
        return 1;
    }
    llama_free(ctx);  // its destructor logs the compute buffer to 4 decimals
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

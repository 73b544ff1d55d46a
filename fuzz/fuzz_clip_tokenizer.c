/* libFuzzer target: any bytes as a prompt for the CLIP tokenizer
 * (core/io/clip_tokenizer.c), with the fixture folder spec/fixtures/models/clip_tokenizer
 * (or $DIFFRL_TOKENIZER_DIR; fuzz/run.sh runs from the repository root).
 *
 * Properties: invalid UTF-8 is DR_ERR_ARG and valid UTF-8 encodes; ids lie in the
 * vocabulary, bos first, eos last; encoding again (through the word cache) and with
 * a second tokenizer (cold cache) gives the same ids; the padded 77-id form is the
 * whole encoding cut to 76 + eos, then padding; the buffer contract holds (a
 * too-small buffer gets the prefix and the full length).
 * Any violated property traps, which libFuzzer reports as a crash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"
#include "io/json.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

enum { MAX_IDS = 1 << 16, PADDED = 77 };

static dr_clip_tokenizer *warm, *cold;
static int64_t a[MAX_IDS], b[MAX_IDS], padded[PADDED];

static dr_clip_tokenizer *load(void) {
    const char *dir = getenv("DIFFRL_TOKENIZER_DIR");
    dr_clip_tokenizer *t = NULL;
    if (dr_clip_tokenizer_load(dir ? dir : "spec/fixtures/models/clip_tokenizer", &t) != DR_OK) {
        fprintf(stderr, "fuzz_clip_tokenizer: %s\n", dr_last_error());
        abort();
    }
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!warm) warm = load();
    const char *text = (const char *)data;
    int32_t n = MAX_IDS;
    dr_status s = dr_clip_tokenizer_encode(warm, text, size, 0, 0, a, &n);
    if (!dr_utf8_valid(text, size)) {
        REQUIRE(s == DR_ERR_ARG && strstr(dr_last_error(), "not valid UTF-8 at byte"));
        return 0;
    }
    REQUIRE(s == DR_OK);
    REQUIRE(n >= 2 && n <= MAX_IDS);  /* at most a few ids per input byte */
    int32_t bos = dr_clip_tokenizer_bos_id(warm), eos = dr_clip_tokenizer_eos_id(warm);
    int32_t pad = dr_clip_tokenizer_pad_id(warm), vocab = dr_clip_tokenizer_vocab_size(warm);
    REQUIRE(a[0] == bos && a[n - 1] == eos);
    for (int32_t i = 0; i < n; i++) REQUIRE(a[i] >= 0 && a[i] < vocab);

    int32_t m = MAX_IDS;
    REQUIRE(dr_clip_tokenizer_encode(warm, text, size, 0, 0, b, &m) == DR_OK);
    REQUIRE(m == n && memcmp(a, b, (size_t)n * sizeof *a) == 0);
    if (!cold) cold = load();
    if (size % 7 == 0) { /* now and then a fresh tokenizer: a cold cache */
        dr_clip_tokenizer_free(cold);
        cold = load();
    }
    m = MAX_IDS;
    REQUIRE(dr_clip_tokenizer_encode(cold, text, size, 0, 0, b, &m) == DR_OK);
    REQUIRE(m == n && memcmp(a, b, (size_t)n * sizeof *a) == 0);

    m = PADDED;
    REQUIRE(dr_clip_tokenizer_encode(warm, text, size, PADDED, 1, padded, &m) == DR_OK);
    REQUIRE(m == PADDED);
    int32_t body = n - 2 < PADDED - 2 ? n - 2 : PADDED - 2;
    REQUIRE(memcmp(padded, a, (size_t)(body + 1) * sizeof *a) == 0);
    REQUIRE(padded[body + 1] == eos);
    for (int32_t i = body + 2; i < PADDED; i++) REQUIRE(padded[i] == pad);

    m = 1;
    b[1] = -7;
    REQUIRE(dr_clip_tokenizer_encode(warm, text, size, 0, 0, b, &m) == DR_OK);
    REQUIRE(m == n && b[0] == bos && b[1] == -7);
    return 0;
}

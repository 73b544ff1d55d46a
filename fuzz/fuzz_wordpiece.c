/* libFuzzer target: any bytes as a prompt for BERT's WordPiece tokenizer
 * (core/io/wordpiece.c), with the fixture vocabulary spec/fixtures/wordpiece/vocab.txt
 * plus BLIP's [DEC] / [ENC] (or $DIFFRL_WORDPIECE_VOCAB; fuzz/run.sh runs from the
 * repository root).
 *
 * Properties: invalid UTF-8 is DR_ERR_ARG and valid UTF-8 encodes; ids lie in the
 * vocabulary, [CLS] first, [SEP] last; the max_length 12 form is the
 * whole encoding cut to 11 + [SEP]; a too-small buffer gets the prefix and the full
 * length; a second tokenizer gives the same ids. Violations trap. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"
#include "io/unicode.h"

#define REQUIRE(cond) \
    do {              \
        if (!(cond)) __builtin_trap(); \
    } while (0)

enum { MAX_IDS = 1 << 16, SHORT = 12 };

static dr_wordpiece *one, *two;
static int64_t a[MAX_IDS], b[MAX_IDS], cut[SHORT], small[3];

static dr_wordpiece *load(void) {
    const char *path = getenv("DIFFRL_WORDPIECE_VOCAB");
    const char *added[] = {"[DEC]", "[ENC]"};
    dr_wordpiece *w = NULL;
    if (dr_wordpiece_load(path ? path : "spec/fixtures/wordpiece/vocab.txt", 1, added, 2, &w) !=
        DR_OK) {
        fprintf(stderr, "fuzz_wordpiece: %s\n", dr_last_error());
        abort();
    }
    return w;
}

static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = dr_utf8_decode(s + i, n - i, &cp);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!one) one = load(), two = load();
    const char *text = (const char *)data;
    int32_t n = MAX_IDS;
    dr_status s = dr_wordpiece_encode(one, text, size, 0, a, &n);
    if (!valid_utf8(data, size)) {
        REQUIRE(s == DR_ERR_ARG && strstr(dr_last_error(), "invalid UTF-8 at byte"));
        return 0;
    }
    REQUIRE(s == DR_OK && n >= 2 && n <= MAX_IDS);
    int32_t vocab = dr_wordpiece_vocab_size(one);
    int32_t cls = dr_wordpiece_token_id(one, "[CLS]"), sep = dr_wordpiece_token_id(one, "[SEP]");
    REQUIRE(a[0] == cls && a[n - 1] == sep);
    for (int32_t i = 0; i < n; i++) REQUIRE(a[i] >= 0 && a[i] < vocab);
    int32_t m = MAX_IDS;
    REQUIRE(dr_wordpiece_encode(two, text, size, 0, b, &m) == DR_OK && m == n);
    REQUIRE(memcmp(a, b, (size_t)n * sizeof *a) == 0);
    int32_t k = SHORT;
    REQUIRE(dr_wordpiece_encode(one, text, size, SHORT, cut, &k) == DR_OK);
    REQUIRE(k == (n < SHORT ? n : SHORT));
    REQUIRE(memcmp(cut, a, (size_t)(k - 1) * sizeof *a) == 0 && cut[k - 1] == sep);
    int32_t r = 3;
    REQUIRE(dr_wordpiece_encode(one, text, size, 0, small, &r) == DR_OK && r == n);
    REQUIRE(memcmp(small, a, (size_t)(n < 3 ? n : 3) * sizeof *a) == 0);
    return 0;
}

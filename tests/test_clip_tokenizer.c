/* The CLIP tokenizer on a hand-made vocabulary (BPE order, "</w>", unk, special
 * tokens, truncation, padding, the buffer contract), its error paths, and the
 * Unicode pieces under it (lower case, NFC). Parity with transformers on real
 * prompts is spec/tokenizer_spec.lua. */
#define _GNU_SOURCE /* mkdtemp */
#include <stdlib.h>

#include "check.h"
#include "io/unicode.h"

static char tmpdir[64];

static void write_text(const char *name, const char *text) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* a b c, each also with </w>; merges: a b -> ab, b c</w> -> bc</w>, ab c</w> -> abc</w> */
static const char *TINY_VOCAB =
    "{\"a\": 0, \"b\": 1, \"c\": 2, \"a</w>\": 3, \"b</w>\": 4, \"c</w>\": 5, \"ab\": 6,"
    " \"abc</w>\": 7, \"bc</w>\": 8, \"<|startoftext|>\": 9, \"<|endoftext|>\": 10, \"!\": 11}";
static const char *TINY_MERGES = "#version: 0.2\na b\nb c</w>\nab c</w>\n";

static int encode(dr_clip_tokenizer *t, const char *text, int32_t max_length, int32_t pad,
                  int64_t *ids, int32_t cap) {
    int32_t n = cap;
    if (!CHECK_OK(dr_clip_tokenizer_encode(t, text, strlen(text), max_length, pad, ids, &n))) return -1;
    return n;
}

#define CHECK_IDS(tok, text, max_length, pad, ...)                                    \
    do {                                                                             \
        const int64_t want_[] = {__VA_ARGS__};                                       \
        int64_t got_[64];                                                            \
        int n_ = encode(tok, text, max_length, pad, got_, 64);                        \
        int same_ = n_ == (int)(sizeof want_ / sizeof want_[0]);                     \
        for (int i_ = 0; same_ && i_ < n_; i_++) same_ = got_[i_] == want_[i_];      \
        if (!CHECK(same_)) {                                                         \
            fprintf(stderr, "    %s ->", text);                                      \
            for (int i_ = 0; i_ < n_; i_++) fprintf(stderr, " %lld", (long long)got_[i_]); \
            fprintf(stderr, "\n");                                                   \
        }                                                                            \
    } while (0)

static void test_tiny(void) {
    write_text("vocab.json", TINY_VOCAB);
    write_text("merges.txt", TINY_MERGES);
    dr_clip_tokenizer *t = NULL;
    if (!CHECK_OK(dr_clip_tokenizer_load(tmpdir, &t))) return;
    CHECK_EQ_INT(dr_clip_tokenizer_vocab_size(t), 12);
    CHECK_EQ_INT(dr_clip_tokenizer_bos_id(t), 9);
    CHECK_EQ_INT(dr_clip_tokenizer_eos_id(t), 10);
    CHECK_EQ_INT(dr_clip_tokenizer_pad_id(t), 10);
    CHECK_EQ_INT(dr_clip_tokenizer_model_max_length(t), 77);
    CHECK(strcmp(dr_clip_tokenizer_token(t, 7), "abc</w>") == 0);
    CHECK(dr_clip_tokenizer_token(t, 12) == NULL && dr_clip_tokenizer_token(t, -1) == NULL);

    CHECK_IDS(t, "", 0, 0, 9, 10);
    CHECK_IDS(t, "abc", 0, 0, 9, 7, 10);          /* a b first (rank 0), then ab c</w> */
    CHECK_IDS(t, "bc", 0, 0, 9, 8, 10);
    CHECK_IDS(t, "ab", 0, 0, 9, 0, 4, 10);        /* no merge a b</w> */
    CHECK_IDS(t, "  ABC\t\nab ", 0, 0, 9, 7, 0, 4, 10);
    CHECK_IDS(t, "d", 0, 0, 9, 10, 10);           /* unknown symbol: unk = <|endoftext|> */
    CHECK_IDS(t, "a<|endoftext|>b", 0, 0, 9, 3, 10, 4, 10);
    CHECK_IDS(t, "abc bc abc", 3, 1, 9, 7, 10);   /* truncated, eos kept */
    CHECK_IDS(t, "abc bc", 6, 1, 9, 7, 8, 10, 10, 10);
    CHECK_IDS(t, "abc bc", 6, 0, 9, 7, 8, 10);

    /* the buffer contract: *n is the room in, the length out */
    int32_t n = 0;
    CHECK_OK(dr_clip_tokenizer_encode(t, "abc bc", 6, 0, 0, NULL, &n));
    CHECK_EQ_INT(n, 4);
    int64_t two[2] = {-1, -1};
    n = 2;
    CHECK_OK(dr_clip_tokenizer_encode(t, "abc bc", 6, 0, 0, two, &n));
    CHECK(n == 4 && two[0] == 9 && two[1] == 7);

    int64_t ids[8];
    n = 8;
    CHECK_FAILS(dr_clip_tokenizer_encode(t, "ab\xc3(", 4, 0, 0, ids, &n), DR_ERR_ARG,
                "not valid UTF-8 at byte 2");
    n = 8;
    CHECK_FAILS(dr_clip_tokenizer_encode(t, "\xed\xa0\x80", 3, 0, 0, ids, &n), DR_ERR_ARG,
                "at byte 0"); /* a surrogate */
    n = 8;
    CHECK_FAILS(dr_clip_tokenizer_encode(t, "ab", 2, 1, 1, ids, &n), DR_ERR_ARG, "max_length 1");
    n = -1;
    CHECK_FAILS(dr_clip_tokenizer_encode(t, "ab", 2, 0, 0, ids, &n), DR_ERR_ARG, "negative");
    dr_clip_tokenizer_free(t);

    /* SD2's pad "!": a special token, so every "!" in a text is its own id */
    write_text("special_tokens_map.json", "{\"pad_token\": \"!\", \"bos_token\": "
               "{\"content\": \"<|startoftext|>\", \"normalized\": true}}");
    write_text("tokenizer_config.json", "{\"model_max_length\": 8, \"pad_token\": \"<|endoftext|>\"}");
    if (!CHECK_OK(dr_clip_tokenizer_load(tmpdir, &t))) return;
    CHECK_EQ_INT(dr_clip_tokenizer_pad_id(t), 11);
    CHECK_EQ_INT(dr_clip_tokenizer_model_max_length(t), 8);
    CHECK_IDS(t, "ab!!", 5, 1, 9, 0, 4, 11, 10);
    CHECK_IDS(t, "<|STARTOFTEXT|>", 0, 0, 9, 9, 10); /* normalized: matched after lower case */
    dr_clip_tokenizer_free(t);
    char path[128];
    snprintf(path, sizeof path, "%s/special_tokens_map.json", tmpdir);
    remove(path);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", tmpdir);
    remove(path);
}

static void expect_load_error(const char *vocab, const char *merges, const char *needle) {
    write_text("vocab.json", vocab);
    write_text("merges.txt", merges);
    dr_clip_tokenizer *t = (dr_clip_tokenizer *)1;
    CHECK_FAILS(dr_clip_tokenizer_load(tmpdir, &t), DR_ERR_IO, needle);
    CHECK(t == NULL);
}

static void test_errors(void) {
    dr_clip_tokenizer *t;
    CHECK_FAILS(dr_clip_tokenizer_load("/nonexistent/tok", &t), DR_ERR_IO,
                "/nonexistent/tok/vocab.json: cannot open");
    CHECK_FAILS(dr_clip_tokenizer_load(NULL, &t), DR_ERR_ARG, "dir is NULL");
    expect_load_error("[1, 2]", TINY_MERGES, "vocab.json: expected an object of token: id, got array");
    expect_load_error("{\"a\": 1.5}", TINY_MERGES, "token 'a': id must be an integer");
    expect_load_error("{\"a\": -1}", TINY_MERGES, "token 'a': id must be an integer");
    expect_load_error("{\"a\": 0,", TINY_MERGES, "vocab.json: invalid JSON at byte 8");
    expect_load_error(TINY_VOCAB, "#version: 0.2\na b\nabc\n", "merges.txt: line 3: expected two tokens");
    expect_load_error(TINY_VOCAB, "a  b\n", "merges.txt: line 1: expected two tokens");
    expect_load_error(TINY_VOCAB, "a b\n\na b\n", "merges.txt: line 2: expected two tokens");
    expect_load_error(TINY_VOCAB, "a b\nx b\n", "merges.txt: line 2: token 'x' is not in vocab.json");
    expect_load_error(TINY_VOCAB, "a c\n", "merges.txt: line 1: token 'ac' is not in vocab.json");
    write_text("vocab.json", TINY_VOCAB);
    write_text("merges.txt", TINY_MERGES);
    write_text("special_tokens_map.json", "{\"pad_token\": 3}");
    CHECK_FAILS(dr_clip_tokenizer_load(tmpdir, &t), DR_ERR_IO,
                "special_tokens_map.json: pad_token must be a string");
    char path[128];
    snprintf(path, sizeof path, "%s/special_tokens_map.json", tmpdir);
    remove(path);
    /* windows line ends and a merges file without the last newline load fine */
    write_text("merges.txt", "#version: 0.2\r\na b\r\nb c</w>");
    if (CHECK_OK(dr_clip_tokenizer_load(tmpdir, &t))) {
        CHECK_IDS(t, "bc ab", 0, 0, 9, 8, 0, 4, 10);
        dr_clip_tokenizer_free(t);
    }
    dr_clip_tokenizer_free(NULL);
}

static void test_unicode(void) {
    uint32_t lo[2];
    CHECK(dr_uc_to_lower('A', lo) == 1 && lo[0] == 'a');
    CHECK(dr_uc_to_lower(0x3A3, lo) == 1 && lo[0] == 0x3C3);   /* no final-sigma context */
    CHECK(dr_uc_to_lower(0x130, lo) == 2 && lo[0] == 'i' && lo[1] == 0x307);
    CHECK(dr_uc_to_lower(0x100, lo) == 1 && lo[0] == 0x101);   /* a stride-2 run */
    CHECK(dr_uc_to_lower(0x101, lo) == 1 && lo[0] == 0x101);
    CHECK(dr_uc_to_lower(0xFF21, lo) == 1 && lo[0] == 0xFF41); /* full-width A */
    CHECK(dr_uc_is_letter(0x4E00) && dr_uc_is_letter(0xE9) && !dr_uc_is_letter(0x301));
    CHECK(dr_uc_is_number(0x661) && dr_uc_is_number(0xBD) && !dr_uc_is_number('x'));
    CHECK(dr_uc_is_space(0x3000) && dr_uc_is_space(0x85) && !dr_uc_is_space(0x200B));
    struct { uint32_t in[4]; size_t n; uint32_t out[4]; size_t m; } cases[] = {
        {{'e', 0x301}, 2, {0xE9}, 1},
        {{0x1100, 0x1161, 0x11A8}, 3, {0xAC01}, 1},          /* Hangul L V T */
        {{0xAC00, 0x11A8}, 2, {0xAC01}, 1},                  /* LV + T */
        {{'o', 0x308, 0x323}, 3, {0x1ECD, 0x308}, 2},        /* reordered: dot below first */
        {{0x212B}, 1, {0xC5}, 1},                            /* singleton: Angstrom -> A ring */
        {{0x301, 'e'}, 2, {0x301, 'e'}, 2},                  /* a leading mark stays */
        {{0x344}, 1, {0x308, 0x301}, 2},                     /* excluded composite */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dr_uc_buf b = {0};
        if (!CHECK(dr_uc_nfc(cases[i].in, cases[i].n, &b))) continue;
        int same = b.n == cases[i].m;
        for (size_t k = 0; same && k < b.n; k++) same = b.v[k] == cases[i].out[k];
        if (!CHECK(same)) fprintf(stderr, "    NFC case %zu\n", i);
        free(b.v);
    }
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/dr_test_clip_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_tiny();
    test_errors();
    test_unicode();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary("test_clip_tokenizer");
}

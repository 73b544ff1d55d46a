/*
 * BERT's WordPiece tokenizer, as transformers' BertTokenizer runs it through the
 * tokenizers library (tokenizers/src/normalizers/bert.rs, pre_tokenizers/bert.rs,
 * models/wordpiece/mod.rs; the reference is tokenizers 0.23.3):
 *
 *   1. special tokens ([PAD] [UNK] [CLS] [SEP] [MASK] and the added ones) are cut out
 *      of the raw text first, leftmost then longest match, and map to their ids;
 *   2. BertNormalizer on each piece between them: clean_text (drop NUL, U+FFFD and
 *      control characters, whitespace -> ' '), handle_chinese_chars (' ' around CJK
 *      ideographs), then with lowercase: strip_accents (NFD, drop non-spacing marks)
 *      and lower case (full, context-free: Rust's char::to_lowercase);
 *   3. BertPreTokenizer: split on whitespace (dropped) and punctuation (kept, one
 *      character per word);
 *   4. WordPiece per word: more than 100 characters -> [UNK]; else greedy
 *      longest-match-first from the left, pieces after the first prefixed "##"; a
 *      word with a part that matches nothing is one [UNK];
 *   5. [CLS] ids [SEP], ids truncated first when a max_length is given.
 * The character classes (control, space, punctuation, marks) are probed from
 * tokenizers itself: wordpiece_tables.c, by tools/fixtures/gen_wordpiece_tables.py.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_read.h"
#include "unicode.h"
#include "../util/error.h"

extern const dr_uc_range dr_wp_control[], dr_wp_space[], dr_wp_punct[], dr_wp_mark[];
extern const size_t dr_wp_control_len, dr_wp_space_len, dr_wp_punct_len, dr_wp_mark_len;

enum { MAX_WORD_CHARS = 100, MAX_SPECIALS = 64 };

struct dr_wordpiece {
    char *path;
    bool lowercase;
    char **tokens;     /* id -> token (NUL-terminated, in `pool` or malloc'd when added) */
    size_t *lens;
    int32_t count;
    int32_t *slots;    /* open addressing: token id or -1 */
    size_t nslots;
    int32_t specials[MAX_SPECIALS];  /* ids matched in the raw text, longest first */
    int32_t nspecials;
    int32_t unk, cls, sep;
    char *pool;
    char **added_copies;
    int32_t nadded;
    /* scratch */
    dr_uc_buf cps, norm, nfd;
    int64_t *ids;
    int64_t nids, ids_cap;
};


static bool is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B81F) ||
           (c >= 0x2B920 && c <= 0x2CEAF) || (c >= 0xF900 && c <= 0xFAFF) ||
           (c >= 0x2F800 && c <= 0x2FA1F);
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int32_t lookup(const dr_wordpiece *w, const char *s, size_t n) {
    for (size_t i = hash_bytes(s, n) & (w->nslots - 1);; i = (i + 1) & (w->nslots - 1)) {
        int32_t id = w->slots[i];
        if (id < 0) return -1;
        if (w->lens[id] == n && memcmp(w->tokens[id], s, n) == 0) return id;
    }
}

/* Later duplicates win, as a Python dict built line by line. */
static void insert(dr_wordpiece *w, int32_t id) {
    for (size_t i = hash_bytes(w->tokens[id], w->lens[id]) & (w->nslots - 1);;
         i = (i + 1) & (w->nslots - 1)) {
        int32_t old = w->slots[i];
        if (old < 0 || (w->lens[old] == w->lens[id] &&
                        memcmp(w->tokens[old], w->tokens[id], w->lens[id]) == 0)) {
            w->slots[i] = id;
            return;
        }
    }
}

static dr_status oom(const dr_wordpiece *w) {
    return dr_fail(DR_ERR_OOM, "BertTokenizer: %s: out of memory", w->path);
}

static dr_status read_vocab(dr_wordpiece *w, int32_t nadded) {
    uint8_t *buf;
    size_t len;
    DR_TRY(dr_io_read_file("BertTokenizer", w->path, &buf, &len));
    w->pool = (char *)buf;
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    if (len && buf[len - 1] != '\n') lines++;
    if (lines == 0) return dr_fail(DR_ERR_IO, "BertTokenizer: %s: the vocabulary is empty", w->path);
    if (lines + (size_t)nadded > INT32_MAX / 4)
        return dr_fail(DR_ERR_IO, "BertTokenizer: %s: too many lines", w->path);
    size_t cap = lines + (size_t)nadded;
    w->tokens = malloc(cap * sizeof *w->tokens);
    w->lens = malloc(cap * sizeof *w->lens);
    for (w->nslots = 16; w->nslots < 2 * cap; w->nslots *= 2) {}
    w->slots = malloc(w->nslots * sizeof *w->slots);
    if (!w->tokens || !w->lens || !w->slots) return oom(w);
    memset(w->slots, 0xFF, w->nslots * sizeof *w->slots);
    size_t start = 0;
    for (size_t i = 0; i <= len && (size_t)w->count < lines; i++) {
        if (i < len && buf[i] != '\n') continue;
        size_t end = i;
        if (end > start && buf[end - 1] == '\r') end--; /* Python's universal newlines */
        if (memchr(buf + start, '\0', end - start))
            return dr_fail(DR_ERR_IO, "BertTokenizer: %s: line %d contains a NUL byte", w->path,
                           w->count + 1);
        if (i < len) buf[end] = '\0';
        else {
            /* the last line has no newline: copy it to terminate it */
            char *t = malloc(end - start + 1);
            if (!t) return oom(w);
            memcpy(t, buf + start, end - start);
            t[end - start] = '\0';
            w->added_copies[w->nadded++] = t;
            w->tokens[w->count] = t;
            w->lens[w->count] = end - start;
            insert(w, w->count++);
            break;
        }
        w->tokens[w->count] = (char *)buf + start;
        w->lens[w->count] = end - start;
        insert(w, w->count++);
        start = i + 1;
    }
    return DR_OK;
}

dr_status dr_wordpiece_load(const char *vocab_path, int32_t lowercase,
                            const char *const *added, int32_t nadded, dr_wordpiece **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "BertTokenizer: out is NULL");
    *out = NULL;
    if (!vocab_path) return dr_fail(DR_ERR_ARG, "BertTokenizer: vocab_path is NULL");
    if (nadded < 0 || nadded > MAX_SPECIALS - 8 || (nadded && !added))
        return dr_fail(DR_ERR_ARG, "BertTokenizer: %d added tokens (at most %d)", nadded,
                       MAX_SPECIALS - 8);
    dr_wordpiece *w = calloc(1, sizeof *w);
    if (!w || !(w->path = strdup(vocab_path))) {
        free(w);
        return dr_fail(DR_ERR_OOM, "BertTokenizer: out of memory");
    }
    w->lowercase = lowercase != 0;
    w->added_copies = calloc((size_t)nadded + 1, sizeof *w->added_copies);
    dr_status st = w->added_copies ? read_vocab(w, nadded) : oom(w);
    const char *names[] = {"[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"};
    for (int i = 0; st == DR_OK && i < 5; i++) {
        int32_t id = lookup(w, names[i], strlen(names[i]));
        if (id >= 0) w->specials[w->nspecials++] = id;
    }
    for (int32_t i = 0; st == DR_OK && i < nadded; i++) {
        size_t n = added[i] ? strlen(added[i]) : 0;
        if (n == 0) {
            st = dr_fail(DR_ERR_ARG, "BertTokenizer: added token %d is empty", i + 1);
            break;
        }
        int32_t id = lookup(w, added[i], n);
        if (id < 0) {
            char *t = strdup(added[i]);
            if (!t) {
                st = oom(w);
                break;
            }
            w->added_copies[w->nadded++] = t;
            id = w->count;
            w->tokens[id] = t;
            w->lens[id] = n;
            insert(w, w->count++);
        }
        w->specials[w->nspecials++] = id;
    }
    w->unk = st == DR_OK ? lookup(w, "[UNK]", 5) : -1;
    w->cls = st == DR_OK ? lookup(w, "[CLS]", 5) : -1;
    w->sep = st == DR_OK ? lookup(w, "[SEP]", 5) : -1;
    if (st == DR_OK && (w->unk < 0 || w->cls < 0 || w->sep < 0))
        st = dr_fail(DR_ERR_IO, "BertTokenizer: %s has no %s token (a BERT vocab.txt has [UNK], "
                     "[CLS] and [SEP])", w->path, w->unk < 0 ? "[UNK]" : w->cls < 0 ? "[CLS]"
                                                                                  : "[SEP]");
    /* longest first: a leftmost match takes the longest special token there */
    for (int32_t i = 1; st == DR_OK && i < w->nspecials; i++)
        for (int32_t j = i; j > 0 && w->lens[w->specials[j]] > w->lens[w->specials[j - 1]]; j--) {
            int32_t t = w->specials[j];
            w->specials[j] = w->specials[j - 1];
            w->specials[j - 1] = t;
        }
    if (st != DR_OK) {
        dr_wordpiece_free(w);
        return st;
    }
    *out = w;
    return DR_OK;
}

void dr_wordpiece_free(dr_wordpiece *w) {
    if (!w) return;
    for (int32_t i = 0; i < w->nadded; i++) free(w->added_copies[i]);
    free(w->added_copies);
    free(w->tokens);
    free(w->lens);
    free(w->slots);
    free(w->pool);
    free(w->path);
    free(w->cps.v);
    free(w->norm.v);
    free(w->nfd.v);
    free(w->ids);
    free(w);
}

/* ---- encoding ------------------------------------------------------------------------- */

static bool push_id(dr_wordpiece *w, int64_t id) {
    if (w->nids == w->ids_cap) {
        int64_t cap = w->ids_cap ? 2 * w->ids_cap : 64;
        int64_t *n = realloc(w->ids, (size_t)cap * sizeof *n);
        if (!n) return false;
        w->ids = n;
        w->ids_cap = cap;
    }
    w->ids[w->nids++] = id;
    return true;
}

static bool push_cp(dr_uc_buf *b, uint32_t cp) {
    if (!dr_uc_reserve(b, 1)) return false;
    b->v[b->n++] = cp;
    return true;
}

/* BertNormalizer over w->cps into w->norm. */
static bool normalize(dr_wordpiece *w) {
    w->nfd.n = 0;
    for (size_t i = 0; i < w->cps.n; i++) {
        uint32_t c = w->cps.v[i];
        if (dr_uc_in_ranges(dr_wp_control, dr_wp_control_len, c)) continue;
        if (dr_uc_in_ranges(dr_wp_space, dr_wp_space_len, c)) c = ' ';
        bool cjk = is_cjk(c);
        if (cjk && !push_cp(&w->nfd, ' ')) return false;
        if (!(w->lowercase ? dr_uc_decompose(&w->nfd, c) : push_cp(&w->nfd, c))) return false;
        if (cjk && !push_cp(&w->nfd, ' ')) return false;
    }
    uint32_t *d = w->nfd.v;
    size_t m = w->nfd.n;
    w->norm.n = 0;
    if (!w->lowercase) return dr_uc_reserve(&w->norm, m) &&
                              (memcpy(w->norm.v, d, m * sizeof *d), w->norm.n = m, true);
    dr_uc_canonical_order(d, m);
    if (!dr_uc_reserve(&w->norm, 2 * m)) return false;
    for (size_t i = 0; i < m; i++) {
        if (dr_uc_in_ranges(dr_wp_mark, dr_wp_mark_len, d[i])) continue;
        uint32_t low[2];
        int n = dr_uc_to_lower(d[i], low);
        for (int k = 0; k < n; k++) w->norm.v[w->norm.n++] = low[k];
    }
    return true;
}

/* WordPiece of norm[a..b) (one word): its ids, or [UNK]. */
static bool wordpiece(dr_wordpiece *w, size_t a, size_t b) {
    size_t nchars = b - a;
    if (nchars > MAX_WORD_CHARS) return push_id(w, w->unk);
    /* key = "##" + the word's UTF-8; off[i] = byte offset of char i in the word */
    char key[2 + 4 * MAX_WORD_CHARS];
    size_t off[MAX_WORD_CHARS + 1], nb = 0;
    char *word = key + 2;
    for (size_t i = 0; i < nchars; i++) {
        off[i] = nb;
        nb += dr_utf8_encode(w->norm.v[a + i], (unsigned char *)word + nb);
    }
    off[nchars] = nb;
    int64_t mark = w->nids;
    for (size_t start = 0; start < nchars;) {
        int32_t id = -1;
        size_t end = nchars;
        for (; end > start && id < 0; end--) {
            if (start == 0) {
                id = lookup(w, word, off[end]);
            } else {
                char *piece = word + off[start] - 2; /* "##" written just before it */
                char saved[2] = {piece[0], piece[1]};
                piece[0] = piece[1] = '#';
                id = lookup(w, piece, off[end] - off[start] + 2);
                piece[0] = saved[0];
                piece[1] = saved[1];
            }
        }
        if (id < 0) {
            w->nids = mark;
            return push_id(w, w->unk);
        }
        if (!push_id(w, id)) return false;
        start = end + 1;
    }
    return true;
}

/* Normalizes, pre-tokenizes and WordPieces w->cps, appending ids. */
static bool encode_piece(dr_wordpiece *w) {
    if (!normalize(w)) return false;
    const uint32_t *v = w->norm.v;
    size_t n = w->norm.n, start = 0;
    for (size_t i = 0; i <= n; i++) {
        bool space = i < n && (v[i] == ' ' || dr_uc_in_ranges(dr_wp_space, dr_wp_space_len, v[i]));
        bool punct = i < n && !space && dr_uc_in_ranges(dr_wp_punct, dr_wp_punct_len, v[i]);
        if (i < n && !space && !punct) continue;
        if (i > start && !wordpiece(w, start, i)) return false;
        if (punct && !wordpiece(w, i, i + 1)) return false;
        start = i + 1;
    }
    return true;
}

static int32_t special_at(const dr_wordpiece *w, const char *s, size_t left) {
    for (int32_t k = 0; k < w->nspecials; k++) {
        int32_t id = w->specials[k];
        if (w->lens[id] <= left && memcmp(s, w->tokens[id], w->lens[id]) == 0) return id;
    }
    return -1;
}

dr_status dr_wordpiece_encode(dr_wordpiece *w, const char *text, size_t len, int32_t max_length,
                              int64_t *ids, int32_t *n) {
    if (!w || !n || (!text && len) || (*n > 0 && !ids))
        return dr_fail(DR_ERR_ARG, "BertTokenizer: encode: tokenizer, text, ids or n is NULL");
    if (max_length == 1)
        return dr_fail(DR_ERR_ARG, "BertTokenizer: encode: max_length 1 leaves no room for "
                       "[CLS] and [SEP]");
    w->nids = 0;
    if (!push_id(w, w->cls)) return oom(w);
    w->cps.n = 0;
    for (size_t i = 0; i < len;) {
        int32_t sp = special_at(w, text + i, len - i);
        if (sp >= 0) {
            if ((w->cps.n && !encode_piece(w)) || !push_id(w, sp)) return oom(w);
            w->cps.n = 0;
            i += w->lens[sp];
            continue;
        }
        uint32_t cp;
        size_t k = dr_utf8_decode((const unsigned char *)text + i, len - i, &cp);
        if (k == 0)
            return dr_fail(DR_ERR_ARG, "BertTokenizer: encode: invalid UTF-8 at byte %zu",
                           i + 1);
        if (!push_cp(&w->cps, cp)) return oom(w);
        i += k;
    }
    if (w->cps.n && !encode_piece(w)) return oom(w);
    if (max_length >= 2 && w->nids + 1 > max_length) w->nids = max_length - 1;
    if (!push_id(w, w->sep)) return oom(w);
    if (w->nids > INT32_MAX)
        return dr_fail(DR_ERR_ARG, "BertTokenizer: encode: more than 2^31 tokens");
    int32_t room = *n;
    for (int64_t i = 0; i < w->nids && i < room; i++) ids[i] = w->ids[i];
    *n = (int32_t)w->nids;
    return DR_OK;
}

int32_t dr_wordpiece_vocab_size(const dr_wordpiece *w) { return w ? w->count : 0; }

int32_t dr_wordpiece_token_id(const dr_wordpiece *w, const char *token) {
    return w && token ? lookup(w, token, strlen(token)) : -1;
}

const char *dr_wordpiece_token(const dr_wordpiece *w, int64_t id) {
    return w && id >= 0 && id < w->count ? w->tokens[id] : NULL;
}

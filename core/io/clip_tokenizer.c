/*
 * clip_tokenizer.c — CLIP's byte-level BPE tokenizer, token for token what
 * transformers 5.24.0 CLIPTokenizer does (the tokenizers 0.23.3 pipeline it builds in
 * models/clip/tokenization_clip.py):
 *
 *  1. added tokens: the special tokens (bos, eos, unk, pad; "normalized": false) are
 *     cut out of the raw text, leftmost-longest; each becomes its own id.
 *  2. normalizer, on each remaining piece: NFC, every run of \s -> " ", lower case
 *     (per code point: Rust's char::to_lowercase). Special tokens marked
 *     "normalized": true are then cut out of the normalized text.
 *  3. pre-tokenizer: the words are the matches of
 *       <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 *     (leftmost-first; the rest, whitespace, dropped); then ByteLevel splits each
 *     with GPT-2's pattern, which changes only the first two alternatives:
 *     "<|", "startoftext", "|>". Each UTF-8 byte becomes one symbol (GPT-2's
 *     bytes_to_unicode), the last one with "</w>".
 *  4. BPE (tokenizers' models/bpe/word.rs merge_all): a heap of (rank, position)
 *     merges, lowest rank first, leftmost on ties; a symbol missing from the
 *     vocabulary is unk.
 *  5. RobertaProcessing: bos + ids + eos; truncation keeps bos and eos.
 *
 * merges.txt follows tokenizers' convert_merges_to_hashmap: lines starting with
 * "#version" skipped, every other line exactly "a b" (one space), a, b and ab in
 * the vocabulary; a repeated pair takes its last rank.
 */
#define _GNU_SOURCE /* GNU strerror_r */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffrl.h"
#include "json.h"
#include "unicode.h"
#include "../util/error.h"

enum { N_SPECIAL = 4, CACHE_SLOTS = 1 << 15, CACHE_MAX_WORD = 128, DEFAULT_MAX_LENGTH = 77,
       MAX_ID = 1 << 24 };

typedef struct vocab_slot { const char *s; uint32_t len; int32_t id; uint64_t hash; } vocab_slot;
typedef struct merge_slot { uint64_t key; uint32_t rank; int32_t new_id; } merge_slot;
typedef struct cache_slot { uint64_t hash; uint32_t key_off, key_len, ids_off, ids_len; } cache_slot;
typedef struct heap_item { uint32_t rank; int32_t pos, new_id; } heap_item;
typedef struct symbol { int32_t id, prev, next, alive; } symbol;

typedef struct special {
    char *content;
    size_t len;
    uint32_t *cps;  /* content as code points (matching normalized text) */
    size_t ncps;
    int32_t id;
    bool normalized;
} special;

struct dr_clip_tokenizer {
    char *arena;                 /* vocab strings, NUL-terminated */
    const char **id_to_token;    /* [n_ids], NULL for ids no token has */
    int32_t n_ids, vocab_size;
    vocab_slot *vocab;           /* open addressing, vocab_cap slots */
    size_t vocab_cap;
    merge_slot *merges;
    size_t merges_cap;
    int32_t byte_id[256], byte_id_eow[256];
    special specials[N_SPECIAL];
    int n_specials;
    int32_t bos_id, eos_id, unk_id, pad_id, model_max_length;
    /* scratch (why encode is not thread-safe) */
    dr_uc_buf cps, nfc, norm;
    int32_t *ids;
    size_t n_out, cap_out;
    symbol *syms;
    heap_item *heap;
    size_t cap_syms;
    unsigned char *word;
    size_t cap_word;
    /* word cache: UTF-8 word -> ids */
    cache_slot *cache;
    size_t cache_count;
    char *cache_keys;
    int32_t *cache_ids;
    size_t keys_len, keys_cap, cids_len, cids_cap;
};

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int32_t vocab_find(const dr_clip_tokenizer *t, const char *s, size_t n) {
    uint64_t h = hash_bytes(s, n);
    for (size_t i = h & (t->vocab_cap - 1);; i = (i + 1) & (t->vocab_cap - 1)) {
        const vocab_slot *v = &t->vocab[i];
        if (!v->s) return -1;
        if (v->hash == h && v->len == n && memcmp(v->s, s, n) == 0) return v->id;
    }
}

static const merge_slot *merge_find(const dr_clip_tokenizer *t, int32_t a, int32_t b) {
    uint64_t key = ((uint64_t)(uint32_t)a + 1) << 32 | ((uint64_t)(uint32_t)b + 1);
    for (size_t i = hash_u64(key) & (t->merges_cap - 1);; i = (i + 1) & (t->merges_cap - 1)) {
        const merge_slot *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == 0) return NULL;
    }
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

/* ---- files ------------------------------------------------------------------ */

static dr_status read_file(const char *path, bool optional, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (optional && errno == ENOENT) return DR_OK;
        char msg[128];
        return dr_fail(DR_ERR_IO, "clip_tokenizer: %s: cannot open: %s", path,
                       strerror_r(errno, msg, sizeof msg));
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *bigger = realloc(buf, cap * 2);
        if (!bigger) free(buf);
        buf = bigger;
        cap *= 2;
    }
    bool err = buf && ferror(f);
    fclose(f);
    if (!buf) return dr_fail(DR_ERR_OOM, "clip_tokenizer: %s: out of memory reading the file", path);
    if (err) {
        free(buf);
        return dr_fail(DR_ERR_IO, "clip_tokenizer: %s: read failed", path);
    }
    *out = buf;
    *len = n;
    return DR_OK;
}

static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

/* ---- vocab.json ---------------------------------------------------------------- */

static dr_status vocab_insert(dr_clip_tokenizer *t, const char *s, size_t n, int32_t id) {
    uint64_t h = hash_bytes(s, n);
    size_t i = h & (t->vocab_cap - 1);
    while (t->vocab[i].s) i = (i + 1) & (t->vocab_cap - 1);
    t->vocab[i] = (vocab_slot){s, (uint32_t)n, id, h};
    return DR_OK;
}

static dr_status load_vocab(dr_clip_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    DR_TRY(read_file(path, false, &text, &len));
    char ctx[64 + 4096];
    snprintf(ctx, sizeof ctx, "clip_tokenizer: %s", path);
    dr_json_doc *doc;
    dr_status s = dr_json_parse(text, len, NULL, ctx, &doc);
    free(text);
    if (s != DR_OK) return s;
    const dr_json *root = dr_json_root(doc);
    if (root->type != DR_JSON_OBJECT) {
        s = dr_fail(DR_ERR_IO, "clip_tokenizer: %s: expected an object of token: id, got %s", path,
                    dr_json_type_name(root->type));
        goto done;
    }
    if (root->len > (size_t)MAX_ID) {
        s = dr_fail(DR_ERR_IO, "clip_tokenizer: %s: too many tokens", path);
        goto done;
    }
    size_t bytes = 0;
    int64_t max_id = -1;
    char q[80];
    for (size_t i = 0; i < root->len; i++) {
        const dr_json_member *m = &root->u.members[i];
        if (m->value.type != DR_JSON_INT || m->value.u.i < 0 || m->value.u.i >= MAX_ID) {
            s = dr_fail(DR_ERR_IO, "clip_tokenizer: %s: token %s: id must be an integer in [0, 2^24), got %s",
                        path, dr_json_quote_msg(m->key, m->key_len, q, sizeof q),
                        m->value.type == DR_JSON_INT ? "an integer out of range" : dr_json_type_name(m->value.type));
            goto done;
        }
        bytes += m->key_len + 1;
        if (m->value.u.i > max_id) max_id = m->value.u.i;
    }
    t->arena = malloc(bytes ? bytes : 1);
    t->n_ids = (int32_t)(max_id + 1);
    t->id_to_token = calloc((size_t)t->n_ids + N_SPECIAL, sizeof *t->id_to_token);
    t->vocab_cap = pow2_at_least(2 * (root->len + N_SPECIAL));
    t->vocab = calloc(t->vocab_cap, sizeof *t->vocab);
    if (!t->arena || !t->id_to_token || !t->vocab) {
        s = dr_fail(DR_ERR_OOM, "clip_tokenizer: %s: out of memory", path);
        goto done;
    }
    size_t off = 0;
    for (size_t i = 0; i < root->len; i++) {
        const dr_json_member *m = &root->u.members[i];
        char *p = t->arena + off;
        memcpy(p, m->key, m->key_len + 1);
        off += m->key_len + 1;
        int32_t id = (int32_t)m->value.u.i;
        vocab_insert(t, p, m->key_len, id);
        if (!t->id_to_token[id]) t->id_to_token[id] = p;
    }
    t->vocab_size = (int32_t)root->len;
done:
    dr_json_free(doc);
    return s;
}

/* ---- merges.txt ---------------------------------------------------------------- */

static dr_status load_merges(dr_clip_tokenizer *t, const char *path) {
    char *text;
    size_t len;
    DR_TRY(read_file(path, false, &text, &len));
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    t->merges_cap = pow2_at_least(2 * lines);
    t->merges = calloc(t->merges_cap, sizeof *t->merges);
    char *joined = malloc(len + 1);
    dr_status s = DR_OK;
    if (!t->merges || !joined) {
        s = dr_fail(DR_ERR_OOM, "clip_tokenizer: %s: out of memory", path);
        goto done;
    }
    char q[80];
    uint32_t rank = 0;
    size_t lineno = 0;
    for (size_t pos = 0; pos < len;) {
        size_t end = pos;
        while (end < len && text[end] != '\n') end++;
        size_t next = end + 1, n = end - pos;
        const char *line = text + pos;
        lineno++;
        pos = next;
        if (n && line[n - 1] == '\r') n--;
        if (n >= 8 && memcmp(line, "#version", 8) == 0) continue;
        const char *sp = memchr(line, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line))) {
            s = dr_fail(DR_ERR_IO, "clip_tokenizer: %s: line %zu: expected two tokens separated by one space, got %s",
                        path, lineno, dr_json_quote_msg(line, n, q, sizeof q));
            goto done;
        }
        size_t na = (size_t)(sp - line), nb = n - na - 1;
        int32_t a = vocab_find(t, line, na), b = vocab_find(t, sp + 1, nb);
        memcpy(joined, line, na);
        memcpy(joined + na, sp + 1, nb);
        int32_t ab = vocab_find(t, joined, na + nb);
        if (a < 0 || b < 0 || ab < 0) {
            const char *what = a < 0 ? line : b < 0 ? sp + 1 : joined;
            size_t wn = a < 0 ? na : b < 0 ? nb : na + nb;
            s = dr_fail(DR_ERR_IO, "clip_tokenizer: %s: line %zu: token %s is not in vocab.json", path,
                        lineno, dr_json_quote_msg(what, wn, q, sizeof q));
            goto done;
        }
        uint64_t key = ((uint64_t)(uint32_t)a + 1) << 32 | ((uint64_t)(uint32_t)b + 1);
        size_t i = hash_u64(key) & (t->merges_cap - 1);
        while (t->merges[i].key && t->merges[i].key != key) i = (i + 1) & (t->merges_cap - 1);
        t->merges[i] = (merge_slot){key, rank++, ab};
    }
done:
    free(joined);
    free(text);
    return s;
}

/* ---- special tokens -------------------------------------------------------------- */

typedef struct special_spec { const char *content; size_t len; bool normalized, present; } special_spec;

/* tokenizer_config.json, then special_tokens_map.json over it (transformers' order). */
static dr_status read_special_config(const char *path, special_spec spec[N_SPECIAL],
                                     char **keep, int32_t *max_len, dr_json_doc **doc_out) {
    static const char *const keys[N_SPECIAL] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    char *text;
    size_t len;
    *doc_out = NULL;
    DR_TRY(read_file(path, true, &text, &len));
    if (!text) return DR_OK;
    *keep = text;
    char ctx[64 + 4096];
    snprintf(ctx, sizeof ctx, "clip_tokenizer: %s", path);
    DR_TRY(dr_json_parse(text, len, NULL, ctx, doc_out));
    const dr_json *root = dr_json_root(*doc_out);
    if (root->type != DR_JSON_OBJECT)
        return dr_fail(DR_ERR_IO, "clip_tokenizer: %s: expected an object, got %s", path,
                       dr_json_type_name(root->type));
    for (int k = 0; k < N_SPECIAL; k++) {
        const dr_json *v = dr_json_get(root, keys[k]);
        if (!v) continue;
        if (v->type == DR_JSON_NULL) {
            spec[k] = (special_spec){NULL, 0, false, false};
        } else if (v->type == DR_JSON_STRING) {
            spec[k] = (special_spec){v->u.s, v->len, false, true};
        } else if (v->type == DR_JSON_OBJECT && dr_json_get(v, "content") &&
                   dr_json_get(v, "content")->type == DR_JSON_STRING) {
            const dr_json *c = dr_json_get(v, "content"), *nz = dr_json_get(v, "normalized");
            spec[k] = (special_spec){c->u.s, c->len, nz && nz->type == DR_JSON_BOOL && nz->u.b, true};
        } else {
            return dr_fail(DR_ERR_IO, "clip_tokenizer: %s: %s must be a string or an object with "
                           "a string \"content\", got %s", path, keys[k], dr_json_type_name(v->type));
        }
        if (spec[k].present && spec[k].len == 0)
            return dr_fail(DR_ERR_IO, "clip_tokenizer: %s: %s is empty", path, keys[k]);
    }
    const dr_json *m = dr_json_get(root, "model_max_length");
    if (m && (m->type == DR_JSON_INT || m->type == DR_JSON_NUMBER)) {
        double d = dr_json_number(m);
        *max_len = d >= INT32_MAX ? INT32_MAX : d < 2 ? 2 : (int32_t)d;
    }
    return DR_OK;
}

static dr_status load_specials(dr_clip_tokenizer *t, const char *dir) {
    special_spec spec[N_SPECIAL] = {
        {"<|startoftext|>", 15, false, true}, {"<|endoftext|>", 13, false, true},
        {"<|endoftext|>", 13, false, true}, {"<|endoftext|>", 13, false, true}};
    static const char *const files[2] = {"tokenizer_config.json", "special_tokens_map.json"};
    char *texts[2] = {NULL, NULL};
    dr_json_doc *docs[2] = {NULL, NULL};
    t->model_max_length = DEFAULT_MAX_LENGTH;
    dr_status s = DR_OK;
    for (int f = 0; f < 2 && s == DR_OK; f++) {
        char *path = join_path(dir, files[f]);
        if (!path) s = dr_fail(DR_ERR_OOM, "clip_tokenizer: out of memory");
        else s = read_special_config(path, spec, &texts[f], &t->model_max_length, &docs[f]);
        free(path);
    }
    int32_t *ids[N_SPECIAL] = {&t->bos_id, &t->eos_id, &t->unk_id, &t->pad_id};
    for (int k = 0; k < N_SPECIAL && s == DR_OK; k++) {
        *ids[k] = -1;
        if (!spec[k].present) continue;
        int j;
        for (j = 0; j < t->n_specials; j++)
            if (t->specials[j].len == spec[k].len && memcmp(t->specials[j].content, spec[k].content, spec[k].len) == 0)
                break;
        if (j == t->n_specials) { /* a new added token */
            special *sp = &t->specials[t->n_specials];
            sp->content = malloc(spec[k].len + 1);
            sp->cps = malloc(spec[k].len * sizeof *sp->cps);
            if (!sp->content || !sp->cps) {
                free(sp->content);
                free(sp->cps);
                s = dr_fail(DR_ERR_OOM, "clip_tokenizer: out of memory");
                break;
            }
            t->n_specials++;
            memcpy(sp->content, spec[k].content, spec[k].len);
            sp->content[spec[k].len] = 0;
            sp->len = spec[k].len;
            sp->normalized = spec[k].normalized;
            const unsigned char *u = (const unsigned char *)sp->content;
            for (size_t i = 0; i < sp->len;) { /* valid UTF-8: the JSON parser checked */
                size_t l = dr_utf8_decode(u + i, sp->len - i, &sp->cps[sp->ncps]);
                sp->ncps++;
                i += l ? l : 1;
            }
            sp->id = vocab_find(t, sp->content, sp->len);
            if (sp->id < 0) { /* not in the vocabulary: a new id after the last */
                sp->id = t->n_ids++;
                t->id_to_token[sp->id] = sp->content;
                t->vocab_size++;
            }
        }
        *ids[k] = t->specials[j].id;
    }
    for (int f = 0; f < 2; f++) {
        dr_json_free(docs[f]);
        free(texts[f]);
    }
    return s;
}

/* ---- load / free ------------------------------------------------------------------ */

void dr_clip_tokenizer_free(dr_clip_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->n_specials; i++) {
        free(t->specials[i].content);
        free(t->specials[i].cps);
    }
    free(t->arena);
    free(t->id_to_token);
    free(t->vocab);
    free(t->merges);
    free(t->cps.v);
    free(t->nfc.v);
    free(t->norm.v);
    free(t->ids);
    free(t->syms);
    free(t->heap);
    free(t->word);
    free(t->cache);
    free(t->cache_keys);
    free(t->cache_ids);
    free(t);
}

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for
 * U+0100 onwards in byte order. */
static uint32_t byte_char(int b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    uint32_t n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF))) n++;
    return 256 + n;
}

dr_status dr_clip_tokenizer_load(const char *dir, dr_clip_tokenizer **out) {
    if (!out) return dr_fail(DR_ERR_ARG, "clip_tokenizer_load: out is NULL");
    *out = NULL;
    if (!dir) return dr_fail(DR_ERR_ARG, "clip_tokenizer_load: dir is NULL");
    dr_clip_tokenizer *t = calloc(1, sizeof *t);
    char *vpath = join_path(dir, "vocab.json"), *mpath = join_path(dir, "merges.txt");
    dr_status s = DR_OK;
    if (!t || !vpath || !mpath) s = dr_fail(DR_ERR_OOM, "clip_tokenizer: out of memory");
    if (s == DR_OK) s = load_vocab(t, vpath);
    if (s == DR_OK) s = load_merges(t, mpath);
    if (s == DR_OK) s = load_specials(t, dir);
    if (s == DR_OK) {
        for (int b = 0; b < 256; b++) {
            unsigned char u[4 + 4];
            size_t n = dr_utf8_encode(byte_char(b), u);
            t->byte_id[b] = vocab_find(t, (const char *)u, n);
            memcpy(u + n, "</w>", 4);
            t->byte_id_eow[b] = vocab_find(t, (const char *)u, n + 4);
        }
        t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
        if (!t->cache) s = dr_fail(DR_ERR_OOM, "clip_tokenizer: out of memory");
    }
    free(vpath);
    free(mpath);
    if (s != DR_OK) {
        dr_clip_tokenizer_free(t);
        return s;
    }
    *out = t;
    return DR_OK;
}

int32_t dr_clip_tokenizer_vocab_size(const dr_clip_tokenizer *t) { return t ? t->vocab_size : 0; }
int32_t dr_clip_tokenizer_bos_id(const dr_clip_tokenizer *t) { return t ? t->bos_id : -1; }
int32_t dr_clip_tokenizer_eos_id(const dr_clip_tokenizer *t) { return t ? t->eos_id : -1; }
int32_t dr_clip_tokenizer_pad_id(const dr_clip_tokenizer *t) { return t ? t->pad_id : -1; }
int32_t dr_clip_tokenizer_model_max_length(const dr_clip_tokenizer *t) {
    return t ? t->model_max_length : 0;
}
const char *dr_clip_tokenizer_token(const dr_clip_tokenizer *t, int64_t id) {
    if (!t || id < 0 || id >= t->n_ids) return NULL;
    return t->id_to_token[id];
}

/* ---- encode ------------------------------------------------------------------------ */

static bool push_id(dr_clip_tokenizer *t, int32_t id) {
    if (t->n_out == t->cap_out) {
        size_t cap = t->cap_out ? t->cap_out * 2 : 256;
        int32_t *v = realloc(t->ids, cap * sizeof *v);
        if (!v) return false;
        t->ids = v;
        t->cap_out = cap;
    }
    t->ids[t->n_out++] = id;
    return true;
}

static bool heap_less(heap_item a, heap_item b) {
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_item *h, size_t *n, heap_item it) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(it, h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = it;
}

static heap_item heap_pop(heap_item *h, size_t *n) {
    heap_item top = h[0], last = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c])) c++;
        if (!heap_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static void push_pair(const dr_clip_tokenizer *t, heap_item *h, size_t *nh, const symbol *s, int32_t pos) {
    const merge_slot *m = merge_find(t, s[pos].id, s[s[pos].next].id);
    if (m) heap_push(h, nh, (heap_item){m->rank, pos, m->new_id});
}

/* BPE of one word (UTF-8 bytes); appends its ids to t->ids. */
static dr_status bpe_word(dr_clip_tokenizer *t, const unsigned char *w, size_t n) {
    if (n > t->cap_syms) {
        size_t cap = pow2_at_least(n);
        symbol *s = realloc(t->syms, cap * sizeof *s);
        if (s) t->syms = s;
        heap_item *h = realloc(t->heap, cap * sizeof *h);
        if (h) t->heap = h;
        if (!s || !h) return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
        t->cap_syms = cap;
    }
    symbol *s = t->syms;
    for (size_t i = 0; i < n; i++) {
        int32_t id = i + 1 == n ? t->byte_id_eow[w[i]] : t->byte_id[w[i]];
        if (id < 0) {
            if (t->unk_id < 0)
                return dr_fail(DR_ERR_IO, "clip_tokenizer: encode: byte 0x%02X has no token and "
                               "there is no unk token", w[i]);
            id = t->unk_id;
        }
        s[i] = (symbol){id, (int32_t)i - 1, i + 1 == n ? -1 : (int32_t)i + 1, 1};
    }
    heap_item *h = t->heap;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, h, &nh, s, (int32_t)i);
    while (nh) {
        heap_item top = heap_pop(h, &nh);
        symbol *a = &s[top.pos];
        if (!a->alive || a->next < 0) continue;
        const merge_slot *m = merge_find(t, a->id, s[a->next].id);
        if (!m || m->new_id != top.new_id) continue; /* an expired entry */
        int32_t right = a->next;
        a->id = top.new_id;
        a->next = s[right].next;
        s[right].alive = 0;
        if (a->next >= 0) s[a->next].prev = top.pos;
        if (a->prev >= 0) push_pair(t, h, &nh, s, a->prev);
        if (a->next >= 0) push_pair(t, h, &nh, s, top.pos);
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        if (!push_id(t, s[i].id)) return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
    return DR_OK;
}

static void cache_clear(dr_clip_tokenizer *t) {
    memset(t->cache, 0, CACHE_SLOTS * sizeof *t->cache);
    t->cache_count = t->keys_len = t->cids_len = 0;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 4096;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

/* A word through the cache (words up to CACHE_MAX_WORD bytes; cleared when full). */
static dr_status encode_word(dr_clip_tokenizer *t, const unsigned char *w, size_t n) {
    if (n > CACHE_MAX_WORD) return bpe_word(t, w, n);
    uint64_t h = hash_bytes(w, n) | 1;
    size_t i = h & (CACHE_SLOTS - 1);
    for (; t->cache[i].hash; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *c = &t->cache[i];
        if (c->hash == h && c->key_len == n && memcmp(t->cache_keys + c->key_off, w, n) == 0) {
            for (uint32_t k = 0; k < c->ids_len; k++)
                if (!push_id(t, t->cache_ids[c->ids_off + k]))
                    return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
            return DR_OK;
        }
    }
    size_t first = t->n_out;
    DR_TRY(bpe_word(t, w, n));
    size_t nids = t->n_out - first;
    if (t->cache_count >= CACHE_SLOTS / 2) {
        cache_clear(t);
        i = h & (CACHE_SLOTS - 1);
    }
    if (!grow((void **)&t->cache_keys, &t->keys_cap, t->keys_len + n, 1) ||
        !grow((void **)&t->cache_ids, &t->cids_cap, t->cids_len + nids, sizeof(int32_t)))
        return DR_OK; /* no room to remember it: fine */
    memcpy(t->cache_keys + t->keys_len, w, n);
    memcpy(t->cache_ids + t->cids_len, t->ids + first, nids * sizeof(int32_t));
    t->cache[i] = (cache_slot){h, (uint32_t)t->keys_len, (uint32_t)n, (uint32_t)t->cids_len, (uint32_t)nids};
    t->keys_len += n;
    t->cids_len += nids;
    t->cache_count++;
    return DR_OK;
}

/* Encodes code points p[0..n) as one word. */
static dr_status emit_word(dr_clip_tokenizer *t, const uint32_t *p, size_t n) {
    if (!grow((void **)&t->word, &t->cap_word, 4 * n, 1))
        return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += dr_utf8_encode(p[i], t->word + m);
    return encode_word(t, t->word, m);
}

static bool match_cps(const uint32_t *p, size_t n, const char *ascii) {
    size_t k = strlen(ascii);
    if (n < k) return false;
    for (size_t i = 0; i < k; i++)
        if (p[i] != (unsigned char)ascii[i]) return false;
    return true;
}

/* The pre-tokenizer over normalized code points p[0..n) (see the top of the file). */
static dr_status pretokenize(dr_clip_tokenizer *t, const uint32_t *p, size_t n, size_t limit) {
    static const char *const names[2] = {"startoftext", "endoftext"};
    size_t i = 0;
    while (i < n && t->n_out < limit) {
        uint32_t c = p[i];
        size_t j = i + 1;
        if (c == '<') {
            int k;
            for (k = 0; k < 2; k++) {
                char full[32];
                snprintf(full, sizeof full, "<|%s|>", names[k]);
                if (match_cps(p + i, n - i, full)) break;
            }
            if (k < 2) {
                size_t nl = strlen(names[k]);
                DR_TRY(emit_word(t, p + i, 2));
                DR_TRY(emit_word(t, p + i + 2, nl));
                DR_TRY(emit_word(t, p + i + 2 + nl, 2));
                i += nl + 4;
                continue;
            }
        }
        if (c == '\'' && i + 1 < n) {
            uint32_t d = p[i + 1], e = i + 2 < n ? p[i + 2] : 0;
            if (d == 's' || d == 't' || d == 'm' || d == 'd') {
                DR_TRY(emit_word(t, p + i, 2));
                i += 2;
                continue;
            }
            if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) {
                DR_TRY(emit_word(t, p + i, 3));
                i += 3;
                continue;
            }
        }
        if (dr_uc_is_space(c)) {
            i++;
            continue;
        }
        if (dr_uc_is_letter(c)) {
            while (j < n && dr_uc_is_letter(p[j])) j++;
        } else if (!dr_uc_is_number(c)) {
            while (j < n && !dr_uc_is_space(p[j]) && !dr_uc_is_letter(p[j]) && !dr_uc_is_number(p[j])) j++;
        }
        DR_TRY(emit_word(t, p + i, j - i));
        i = j;
    }
    return DR_OK;
}

/* Leftmost-longest match of the added tokens with the given `normalized` flag in
 * bytes s[0..n) (raw) or code points (normalized): the special index, its start
 * and length, or -1. */
static int find_special_bytes(const dr_clip_tokenizer *t, const char *s, size_t n, size_t *at, size_t *len) {
    for (size_t i = 0; i < n; i++) {
        int best = -1;
        for (int k = 0; k < t->n_specials; k++) {
            const special *sp = &t->specials[k];
            if (sp->normalized || sp->len > n - i || (unsigned char)s[i] != (unsigned char)sp->content[0]) continue;
            if (memcmp(s + i, sp->content, sp->len) == 0 && (best < 0 || sp->len > t->specials[best].len)) best = k;
        }
        if (best >= 0) {
            *at = i;
            *len = t->specials[best].len;
            return best;
        }
    }
    return -1;
}

static int find_special_cps(const dr_clip_tokenizer *t, const uint32_t *p, size_t n, size_t *at, size_t *len) {
    for (size_t i = 0; i < n; i++) {
        int best = -1;
        for (int k = 0; k < t->n_specials; k++) {
            const special *sp = &t->specials[k];
            if (!sp->normalized || sp->ncps > n - i || p[i] != sp->cps[0]) continue;
            if (memcmp(p + i, sp->cps, sp->ncps * sizeof *p) == 0 &&
                (best < 0 || sp->ncps > t->specials[best].ncps))
                best = k;
        }
        if (best >= 0) {
            *at = i;
            *len = t->specials[best].ncps;
            return best;
        }
    }
    return -1;
}

/* Normalizes raw bytes s[0..n) (valid UTF-8) and encodes them. */
static dr_status encode_piece(dr_clip_tokenizer *t, const char *s, size_t n, size_t limit) {
    const unsigned char *u = (const unsigned char *)s;
    t->cps.n = t->nfc.n = t->norm.n = 0;
    if (!dr_uc_reserve(&t->cps, n)) return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
    bool simple = true;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        i += dr_utf8_decode(u + i, n - i, &c);
        t->cps.v[t->cps.n++] = c;
        simple &= c < dr_uc_nfc_skip_below;
    }
    const dr_uc_buf *src = &t->cps;
    if (!simple) {
        if (!dr_uc_nfc(t->cps.v, t->cps.n, &t->nfc))
            return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
        src = &t->nfc;
    }
    if (!dr_uc_reserve(&t->norm, 2 * src->n)) return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
    for (size_t i = 0; i < src->n; i++) {
        uint32_t c = src->v[i];
        if (dr_uc_is_space(c)) {
            while (i + 1 < src->n && dr_uc_is_space(src->v[i + 1])) i++;
            t->norm.v[t->norm.n++] = ' ';
        } else {
            t->norm.n += (size_t)dr_uc_to_lower(c, t->norm.v + t->norm.n);
        }
    }
    const uint32_t *p = t->norm.v;
    size_t m = t->norm.n, at, len;
    int k;
    while (t->n_out < limit && (k = find_special_cps(t, p, m, &at, &len)) >= 0) {
        DR_TRY(pretokenize(t, p, at, limit));
        if (t->n_out < limit && !push_id(t, t->specials[k].id))
            return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
        p += at + len;
        m -= at + len;
    }
    return pretokenize(t, p, m, limit);
}

dr_status dr_clip_tokenizer_encode(dr_clip_tokenizer *t, const char *text, size_t len,
                                   int32_t max_length, int32_t pad, int64_t *ids, int32_t *n) {
    if (!t || !n) return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: tokenizer or n is NULL");
    if (!text && len) return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: text is NULL");
    if (*n < 0 || (*n > 0 && !ids))
        return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: ids is NULL or *n (%d) is negative", (int)*n);
    if (max_length > 0 && max_length < 2)
        return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: max_length %d leaves no room for bos and eos",
                       (int)max_length);
    if (t->bos_id < 0 || t->eos_id < 0)
        return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: the tokenizer has no bos or eos token");
    if (max_length > 0 && pad && t->pad_id < 0)
        return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: padding asked for, but the tokenizer has no pad token");
    const unsigned char *u = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        uint32_t c;
        size_t l = dr_utf8_decode(u + i, len - i, &c);
        if (!l) return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: text is not valid UTF-8 at byte %zu", i);
        i += l;
    }
    size_t limit = max_length > 0 ? (size_t)max_length - 2 : SIZE_MAX;
    t->n_out = 0;
    const char *p = text;
    size_t m = len, at, sl;
    int k;
    while (t->n_out < limit && (k = find_special_bytes(t, p, m, &at, &sl)) >= 0) {
        DR_TRY(encode_piece(t, p, at, limit));
        if (t->n_out < limit && !push_id(t, t->specials[k].id))
            return dr_fail(DR_ERR_OOM, "clip_tokenizer: encode: out of memory");
        p += at + sl;
        m -= at + sl;
    }
    if (t->n_out < limit) DR_TRY(encode_piece(t, p, m, limit));
    size_t body = t->n_out < limit ? t->n_out : limit;
    size_t total = body + 2;
    if (max_length > 0 && pad) total = (size_t)max_length;
    if (total > INT32_MAX) return dr_fail(DR_ERR_ARG, "clip_tokenizer_encode: more than 2^31 tokens");
    size_t cap = (size_t)*n;
    for (size_t i = 0; i < total && i < cap; i++) {
        int32_t id = i == 0 ? t->bos_id : i <= body ? t->ids[i - 1] : i == body + 1 ? t->eos_id : t->pad_id;
        ids[i] = id;
    }
    *n = (int32_t)total;
    return DR_OK;
}

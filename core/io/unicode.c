/*
 * unicode.c — lookups in the generated tables (bisection) and NFC, as UAX #15
 * describes it: full canonical decomposition (Hangul syllables algorithmically,
 * section 3.12 of the Unicode standard), canonical ordering (a stable sort of each
 * run of non-starters by combining class), then canonical composition (a character
 * combines with the last starter unless a character between them of class >= its
 * own, or a starter, blocks it).
 */
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

enum {
    S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
    L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT,
    S_COUNT = L_COUNT * N_COUNT
};

bool dr_uc_in_ranges(const dr_uc_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].first) hi = mid;
        else if (cp > r[mid].last) lo = mid + 1;
        else return true;
    }
    return false;
}

bool dr_uc_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return dr_uc_in_ranges(dr_uc_letters, dr_uc_letters_len, cp);
}

bool dr_uc_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return dr_uc_in_ranges(dr_uc_numbers, dr_uc_numbers_len, cp);
}

bool dr_uc_is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 9 && cp <= 13);
    return dr_uc_in_ranges(dr_uc_spaces, dr_uc_spaces_len, cp);
}

int dr_uc_to_lower(uint32_t cp, uint32_t out[2]) {
    if (cp < 0x80) {
        out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
        return 1;
    }
    for (size_t i = 0; i < dr_uc_lower_special_len; i++) {
        if (dr_uc_lower_special[i].cp == cp) {
            out[0] = dr_uc_lower_special[i].lower0;
            out[1] = dr_uc_lower_special[i].lower1;
            return 2;
        }
    }
    size_t lo = 0, hi = dr_uc_lower_len; /* the last run starting at or before cp */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (dr_uc_lower[mid].first <= cp) lo = mid + 1;
        else hi = mid;
    }
    out[0] = cp;
    if (lo > 0) {
        const dr_uc_case_run *r = &dr_uc_lower[lo - 1];
        if (cp <= r->last && (cp - r->first) % r->stride == 0)
            out[0] = (uint32_t)((int64_t)cp + r->delta);
    }
    return 1;
}

uint32_t dr_uc_ccc_of(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = dr_uc_ccc_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < dr_uc_ccc[mid].first) hi = mid;
        else if (cp > dr_uc_ccc[mid].last) lo = mid + 1;
        else return dr_uc_ccc[mid].ccc;
    }
    return 0;
}

static const dr_uc_decomp_entry *find_decomp(uint32_t cp) {
    size_t lo = 0, hi = dr_uc_decomp_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < dr_uc_decomp[mid].cp) hi = mid;
        else if (cp > dr_uc_decomp[mid].cp) lo = mid + 1;
        else return &dr_uc_decomp[mid];
    }
    return NULL;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE &&
        b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    size_t lo = 0, hi = dr_uc_compose_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const dr_uc_pair *p = &dr_uc_compose[mid];
        if (a < p->first || (a == p->first && b < p->second)) hi = mid;
        else if (a > p->first || b > p->second) lo = mid + 1;
        else return p->composite;
    }
    return 0;
}

bool dr_uc_reserve(dr_uc_buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) {
        if (cap > SIZE_MAX / 8) return false;
        cap *= 2;
    }
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return false;
    b->v = v;
    b->cap = cap;
    return true;
}

bool dr_uc_decompose(dr_uc_buf *b, uint32_t cp) {
    if (!dr_uc_reserve(b, 4)) return false;
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        uint32_t s = cp - S_BASE;
        b->v[b->n++] = L_BASE + s / N_COUNT;
        b->v[b->n++] = V_BASE + (s % N_COUNT) / T_COUNT;
        if (s % T_COUNT) b->v[b->n++] = T_BASE + s % T_COUNT;
        return true;
    }
    const dr_uc_decomp_entry *e = cp < 0xC0 ? NULL : find_decomp(cp);
    if (!e) {
        b->v[b->n++] = cp;
        return true;
    }
    memcpy(b->v + b->n, dr_uc_decomp_pool + e->offset, e->len * sizeof *b->v);
    b->n += e->len;
    return true;
}

void dr_uc_canonical_order(uint32_t *d, size_t m) {
    /* insertion sort (stable) inside runs of non-starters */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = d[i], k = dr_uc_ccc_of(c);
        if (k == 0) continue;
        size_t j = i;
        while (j > 0) {
            uint32_t kj = dr_uc_ccc_of(d[j - 1]);
            if (kj == 0 || kj <= k) break;
            d[j] = d[j - 1];
            j--;
        }
        d[j] = c;
    }
}

bool dr_uc_nfc(const uint32_t *in, size_t n, dr_uc_buf *out) {
    size_t start = out->n;
    /* decomposition: a code point becomes at most 4 (U+1F83 and kin; Hangul 3) */
    if (n > SIZE_MAX / 4 || !dr_uc_reserve(out, n * 4)) return false;
    for (size_t i = 0; i < n; i++)
        if (!dr_uc_decompose(out, in[i])) return false; /* never: reserved above */
    uint32_t *d = out->v + start;
    size_t m = out->n - start;
    dr_uc_canonical_order(d, m);
    /* composition (UAX #15 sample code) */
    if (m > 0) {
        size_t starter = 0, w = 1;
        uint32_t starter_ch = d[0], last_class = dr_uc_ccc_of(d[0]);
        if (last_class != 0) last_class = 256; /* a leading non-starter never composes */
        for (size_t i = 1; i < m; i++) {
            uint32_t ch = d[i], cls = dr_uc_ccc_of(ch);
            uint32_t comp = compose(starter_ch, ch);
            if (comp && (last_class < cls || last_class == 0)) {
                d[starter] = comp;
                starter_ch = comp;
                continue;
            }
            if (cls == 0) {
                starter = w;
                starter_ch = ch;
            }
            last_class = cls;
            d[w++] = ch;
        }
        m = w;
    }
    out->n = start + m;
    return true;
}

size_t dr_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) len = 2, v = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, v = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

size_t dr_utf8_encode(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Fused CPU kernels for UniAD training with dropout (float32, contiguous, OpenMP over blocks of rows).
 *
 * Why: on CPU the dropout masks (one Bernoulli draw per element) and the element-wise passes around
 * them (mask add, softmax, mask product, their backwards, residual adds) cost more than the
 * attention's matrix products. Each kernel below does one such group in a single pass over memory
 * that is already in cache, and takes its keep decisions from a counter-based generator, so no mask
 * is stored or passed around:
 *
 *   keep(e) = word(seed, e) >= threshold,   threshold = round(p * 2^32),
 *   word(seed, e) = word (e % 64) / 16 of Philox4x32-10 with key seed at counter (e / 64 * 16 + e % 16),
 *
 * for the flat (row-major) index e of an element. The drop probability is p rounded to a multiple of
 * 2^-32. A mask is a pure function of (seed, index): the same for any thread count or split of the
 * work, and recomputable in a backward pass. Philox4x32-10 is the generator of Salmon et al.,
 * "Parallel random numbers: as easy as 1, 2, 3" (SC 2011), which CUDA dropout also uses.
 *
 * The same rule decides the residual + dropout + LayerNorm kernels at the end of the file.
 *
 * fused_kernels.py builds this for the host CPU (gcc -O3 -march=native -fopenmp -fno-trapping-math
 * -fno-math-errno) and loads it; the AVX2 path and the portable one give the same words.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LANES 16                  /* Philox counters computed side by side (two AVX2 registers) */
#define WORDS_PER_CALL (4 * LANES) /* words per philox_lanes call: 64 consecutive elements */
#define BLOCK_WORDS 4096          /* elements per parallel work item (a multiple of WORDS_PER_CALL) */

/* Philox4x32-10 at counters (c + l, 0, 0, 0) for lanes l < LANES (c a multiple of LANES, 64 bits split
 * into the first two words), key = seed. Word k of lane l goes to out[k * LANES + l]. */
static inline void philox_lanes_scalar(uint64_t c, uint64_t seed, uint32_t *out) {
    for (int l = 0; l < LANES; ++l) {
        uint32_t x0 = (uint32_t)c + (uint32_t)l, x1 = (uint32_t)(c >> 32), x2 = 0, x3 = 0;
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; ++round) {
            uint64_t p0 = (uint64_t)0xD2511F53u * x0, p1 = (uint64_t)0xCD9E8D57u * x2;
            x0 = (uint32_t)(p1 >> 32) ^ x1 ^ k0;
            x2 = (uint32_t)(p0 >> 32) ^ x3 ^ k1;
            x1 = (uint32_t)p1;
            x3 = (uint32_t)p0;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        out[l] = x0;
        out[LANES + l] = x1;
        out[2 * LANES + l] = x2;
        out[3 * LANES + l] = x3;
    }
}

#if defined(__AVX2__)
#include <immintrin.h>

/* (hi, lo) 32-bit halves of the 8 products x * m: even lanes from one vpmuludq, odd ones from another. */
static inline void mulhilo8(__m256i x, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(x, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/* One Philox round on 8 lanes (m0, m1: the multipliers; k0v, k1v: the round keys). */
#define PHILOX_ROUND8(x0, x1, x2, x3)                                                                   \
    do {                                                                                                \
        __m256i hi0, lo0, hi1, lo1;                                                                     \
        mulhilo8(x0, m0, &hi0, &lo0);                                                                   \
        mulhilo8(x2, m1, &hi1, &lo1);                                                                   \
        x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), k0v);                                          \
        x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), k1v);                                          \
        x1 = lo1;                                                                                       \
        x3 = lo0;                                                                                       \
    } while (0)

/* philox_lanes_scalar on two independent 8-lane groups, so one group's multiplies hide the other's latency. */
static inline void philox_lanes_avx2(uint64_t c, uint64_t seed, uint32_t *out) {
    __m256i a0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i b0 = _mm256_add_epi32(a0, _mm256_set1_epi32(8));
    __m256i a1 = _mm256_set1_epi32((int)(uint32_t)(c >> 32)), a2 = _mm256_setzero_si256(), a3 = a2;
    __m256i b1 = a1, b2 = a2, b3 = a3;
    const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        __m256i k0v = _mm256_set1_epi32((int)k0), k1v = _mm256_set1_epi32((int)k1);
        PHILOX_ROUND8(a0, a1, a2, a3);
        PHILOX_ROUND8(b0, b1, b2, b3);
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    __m256i words[8] = {a0, b0, a1, b1, a2, b2, a3, b3};
    for (int i = 0; i < 8; ++i)
        _mm256_storeu_si256((__m256i *)(out + 8 * i), words[i]);
}
#endif

static inline void philox_lanes(uint64_t c, uint64_t seed, uint32_t *out) {
#if defined(__AVX2__)
    philox_lanes_avx2(c, seed, out);
#else
    philox_lanes_scalar(c, seed, out);
#endif
}

/* Words of elements start .. start + len - 1 into buf, from the call that covers `start`; returns the
 * pointer to start's word. buf holds at least len + 2 * WORDS_PER_CALL words. */
static inline const uint32_t *fill_words(uint32_t *buf, int64_t start, int64_t len, uint64_t seed) {
    int64_t first = start / WORDS_PER_CALL, last = (start + len - 1) / WORDS_PER_CALL;
    for (int64_t call = first; call <= last; ++call)
        philox_lanes((uint64_t)call * LANES, seed, buf + (call - first) * WORDS_PER_CALL);
    return buf + (start - first * WORDS_PER_CALL);
}

/* exp(x) for x <= 0 (Cephes single-precision range reduction and polynomial, ~1 ulp); 0 below -87,
 * where float32 exp would be denormal or 0, and for the -inf of masked positions. Branch-free and
 * without library calls (floorf, fmaxf are calls unless -ffast-math), so the row loops vectorise. */
static inline float exp_nonpositive(float x) {
    float xc = x > -87.0f ? x : -87.0f;
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest via 1.5 * 2^23 */
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x >= -87.0f ? y * scale : 0.0f;
}

/* One attention row: P = softmax(s + m) written over s, D = P * keep written to d. */
static inline void softmax_keep_row(float *s, const float *m, float *d, int64_t cols, const uint32_t *words,
                                    uint32_t threshold) {
    if (m) {
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j)
            s[j] += m[j];
    }
    float top = -INFINITY;
#pragma omp simd reduction(max : top)
    for (int64_t j = 0; j < cols; ++j)
        top = s[j] > top ? s[j] : top;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j)
        s[j] = exp_nonpositive(s[j] - top);
    float total = 0.0f; /* a separate loop: with the exponential inside, gcc leaves the sum scalar */
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < cols; ++j)
        total += s[j];
    float inv = 1.0f / total;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
        float prob = s[j] * inv;
        s[j] = prob;
        d[j] = words[j] >= threshold ? prob : 0.0f;
    }
}

/* What the row kernels read and write; each uses some of the fields. Rows have `cols` elements. */
struct row_args {
    int64_t cols;
    float *scores, *dropped;                 /* softmax */
    const float *mask;
    int64_t mask_rows;
    float *out, *xhat, *rstd;                /* layernorm forward */
    const float *residual, *x, *gamma, *beta;
    int64_t residual_rows;
    float eps;
    float *grad_sum, *grad_x, *partial;      /* layernorm backward */
    const float *grad_out;
    float scale;
    uint32_t threshold;
};

/* One group of rows r0 .. r0 + count - 1; words[(r - r0) * cols + j] is the keep word of element (r, j). */
typedef void (*group_op)(const struct row_args *a, int64_t r0, int64_t count, const uint32_t *words);

static inline int64_t rows_per_group(int64_t cols) { return cols < BLOCK_WORDS ? BLOCK_WORDS / cols : 1; }

/* Runs op over consecutive groups of rows_per_group(cols) rows in parallel, with the keep words of the
 * group's elements, whose flat indices are offset + r * cols + j. */
static inline void for_each_row_group(int64_t rows, int64_t offset, uint64_t seed, group_op op,
                                      const struct row_args *a) {
    int64_t cols = a->cols, group = rows_per_group(cols);
#pragma omp parallel
    {
        uint32_t buf[group * cols + 2 * WORDS_PER_CALL];
#pragma omp for schedule(static)
        for (int64_t r0 = 0; r0 < rows; r0 += group) {
            int64_t count = rows - r0 < group ? rows - r0 : group;
            op(a, r0, count, fill_words(buf, offset + r0 * cols, count * cols, seed));
        }
    }
}

static void softmax_keep_group(const struct row_args *a, int64_t r0, int64_t count, const uint32_t *words) {
    const int64_t cols = a->cols;
    for (int64_t r = r0; r < r0 + count; ++r) {
        const float *mask = a->mask ? a->mask + (r % a->mask_rows) * cols : NULL;
        softmax_keep_row(a->scores + r * cols, mask, a->dropped + r * cols, cols, words + (r - r0) * cols,
                         a->threshold);
    }
}

/* scores [rows, cols] -> softmax over cols (in place) and dropped = softmax * keep [rows, cols].
 * The additive mask (or NULL) has mask_rows rows; row r uses mask row r % mask_rows (rows are
 * [images * heads, queries]). Element (r, j) has flat index offset + r * cols + j, so blocks of a
 * larger tensor processed by separate calls draw exactly what one call over all of it would. */
void softmax_dropout_forward(float *scores, const float *mask, float *dropped, int64_t rows, int64_t cols,
                             int64_t mask_rows, int64_t offset, uint64_t seed, uint32_t threshold) {
    struct row_args a = {.cols = cols, .scores = scores, .dropped = dropped, .mask = mask, .mask_rows = mask_rows,
                         .threshold = threshold};
    for_each_row_group(rows, offset, seed, softmax_keep_group, &a);
}

/* In place on grad ([rows, cols], dL/dD): dL/dS = D * dD - P * sum_j(D * dD), with P = softmax(S) and
 * D = P * keep (keep is 0/1, so P * keep * dD = D * dD and the mask itself is not needed). */
void softmax_dropout_backward(float *grad, const float *prob, const float *dropped, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        float *g = grad + r * cols;
        const float *p = prob + r * cols, *d = dropped + r * cols;
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t j = 0; j < cols; ++j) {
            g[j] *= d[j];
            total += g[j];
        }
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j)
            g[j] -= p[j] * total;
    }
}

/* The flat kernels work on blocks of BLOCK_WORDS elements; *len gets the block's length. */
static inline int64_t block_count(int64_t n) { return (n + BLOCK_WORDS - 1) / BLOCK_WORDS; }

static inline const uint32_t *block_words(uint32_t *buf, int64_t b, int64_t n, uint64_t seed, int64_t *len) {
    *len = n - b * BLOCK_WORDS < BLOCK_WORDS ? n - b * BLOCK_WORDS : BLOCK_WORDS;
    return fill_words(buf, b * BLOCK_WORDS, *len, seed);
}

/* What the flat kernels read and write; each uses some of the fields. */
struct flat_args {
    float *out;
    const float *x, *residual;
    int64_t residual_n;
    float scale;
    uint32_t threshold;
    uint8_t *keep;
};

/* One block of a flat kernel: elements start .. start + len - 1, whose keep words are words[0 .. len). */
typedef void (*block_op)(const struct flat_args *a, const uint32_t *words, int64_t start, int64_t len);

static inline void for_each_block(int64_t n, uint64_t seed, block_op op, const struct flat_args *a) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < block_count(n); ++b) {
        uint32_t buf[BLOCK_WORDS + 2 * WORDS_PER_CALL];
        int64_t len;
        const uint32_t *words = block_words(buf, b, n, seed, &len);
        op(a, words, b * BLOCK_WORDS, len);
    }
}

/* The block functions copy the fields they use into locals first: stores through `out` could alias
 * *a as far as the compiler knows, and reloading them every element stops the vectorisation. */
static void relu_keep_block(const struct flat_args *a, const uint32_t *words, int64_t start, int64_t len) {
    float *out = a->out + start;
    const float *x = a->x + start;
    const uint32_t threshold = a->threshold;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j)
        out[j] = (x[j] > 0.0f && words[j] >= threshold) ? x[j] : 0.0f;
}

/* out = x if x > 0 and kept, else 0 (relu and dropout without the 1 / (1 - p) scale). */
void relu_keep_forward(float *out, const float *x, int64_t n, uint64_t seed, uint32_t threshold) {
    struct flat_args a = {.out = out, .x = x, .threshold = threshold};
    for_each_block(n, seed, relu_keep_block, &a);
}

static void dropout_add_block(const struct flat_args *a, const uint32_t *words, int64_t start, int64_t len) {
    float *out = a->out + start;
    const float *x = a->x + start, *residual = a->residual;
    const int64_t residual_n = a->residual_n;
    const float scale = a->scale;
    const uint32_t threshold = a->threshold;
    int64_t at = start % residual_n;
    for (int64_t j = 0; j < len;) { /* segments that do not wrap around the residual */
        int64_t seg = len - j < residual_n - at ? len - j : residual_n - at;
        const float *res = residual + at;
#pragma omp simd
        for (int64_t i = 0; i < seg; ++i)
            out[j + i] = res[i] + (words[j + i] >= threshold ? x[j + i] * scale : 0.0f);
        j += seg;
        at = 0;
    }
}

/* out = residual[e % residual_n] + x * keep * scale (the residual may repeat over a batch). */
void dropout_add_forward(float *out, const float *residual, int64_t residual_n, const float *x, int64_t n,
                         float scale, uint64_t seed, uint32_t threshold) {
    struct flat_args a = {.out = out, .x = x, .residual = residual, .residual_n = residual_n, .scale = scale,
                          .threshold = threshold};
    for_each_block(n, seed, dropout_add_block, &a);
}

static void dropout_scale_block(const struct flat_args *a, const uint32_t *words, int64_t start, int64_t len) {
    float *out = a->out + start;
    const float *x = a->x + start;
    const float scale = a->scale;
    const uint32_t threshold = a->threshold;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j)
        out[j] = words[j] >= threshold ? x[j] * scale : 0.0f;
}

/* out = x * keep * scale: dropout's forward, and its backward with the same seed. */
void dropout_scale(float *out, const float *x, int64_t n, float scale, uint64_t seed, uint32_t threshold) {
    struct flat_args a = {.out = out, .x = x, .scale = scale, .threshold = threshold};
    for_each_block(n, seed, dropout_scale_block, &a);
}

static void keep_block(const struct flat_args *a, const uint32_t *words, int64_t start, int64_t len) {
    uint8_t *keep = a->keep + start;
    const uint32_t threshold = a->threshold;
    for (int64_t j = 0; j < len; ++j)
        keep[j] = words[j] >= threshold;
}

/* keep[e] = 1 or 0, as every kernel above decides it for the same seed and flat index. */
void keep_mask_u8(uint8_t *keep, int64_t n, uint64_t seed, uint32_t threshold) {
    struct flat_args a = {.keep = keep, .threshold = threshold};
    for_each_block(n, seed, keep_block, &a);
}

/* The raw words of elements 0 .. n - 1 (to check the generator against a reference). */
void philox_words(uint32_t *out, int64_t n, uint64_t seed) {
    uint32_t buf[WORDS_PER_CALL];
    for (int64_t call = 0; call * WORDS_PER_CALL < n; ++call) {
        philox_lanes((uint64_t)call * LANES, seed, buf);
        int64_t len = n - call * WORDS_PER_CALL < WORDS_PER_CALL ? n - call * WORDS_PER_CALL : WORDS_PER_CALL;
        memcpy(out + call * WORDS_PER_CALL, buf, (size_t)len * sizeof *out);
    }
}

/* LayerNorm(residual + x * keep * scale) of one row; xhat keeps the normalised sum. */
static void add_norm_row(const struct row_args *a, int64_t r, const uint32_t *w) {
    const int64_t cols = a->cols;
    const float *res = a->residual + (r % a->residual_rows) * cols, *x = a->x + r * cols;
    const float *gamma = a->gamma, *beta = a->beta, scale = a->scale;
    const uint32_t threshold = a->threshold;
    float *h = a->xhat + r * cols, *out = a->out + r * cols;
    float total = 0.0f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < cols; ++j) {
        h[j] = res[j] + (w[j] >= threshold ? x[j] * scale : 0.0f);
        total += h[j];
    }
    float mean = total / (float)cols, squares = 0.0f;
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < cols; ++j)
        squares += (h[j] - mean) * (h[j] - mean);
    float inv = 1.0f / sqrtf(squares / (float)cols + a->eps);
    a->rstd[r] = inv;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
        h[j] = (h[j] - mean) * inv;
        out[j] = h[j] * gamma[j] + beta[j];
    }
}

static void add_norm_group(const struct row_args *a, int64_t r0, int64_t count, const uint32_t *words) {
    for (int64_t r = r0; r < r0 + count; ++r)
        add_norm_row(a, r, words + (r - r0) * a->cols);
}

/* Post-norm residual block: out = LayerNorm(residual + x * keep * scale) * gamma + beta, per row of
 * cols. residual has residual_n elements (a multiple of cols) and repeats over the rows. Saves
 * xhat = (sum - mean) * rstd [rows, cols] and rstd [rows] for the backward. */
void add_dropout_layernorm_forward(float *out, float *xhat, float *rstd, const float *residual, int64_t residual_n,
                                   const float *x, const float *gamma, const float *beta, int64_t rows, int64_t cols,
                                   float eps, float scale, uint64_t seed, uint32_t threshold) {
    struct row_args a = {.cols = cols, .out = out, .xhat = xhat, .rstd = rstd, .residual = residual,
                         .residual_rows = residual_n / cols, .x = x, .gamma = gamma, .beta = beta, .eps = eps,
                         .scale = scale, .threshold = threshold};
    for_each_row_group(rows, 0, seed, add_norm_group, &a);
}

/* The backward of one row; adds its shares of dgamma and dbeta. */
static void add_norm_backward_row(const struct row_args *a, int64_t r, const uint32_t *w, float *dgamma,
                                  float *dbeta) {
    const int64_t cols = a->cols;
    const float *dy = a->grad_out + r * cols, *h = a->xhat + r * cols, *gamma = a->gamma, scale = a->scale;
    const uint32_t threshold = a->threshold;
    float *gs = a->grad_sum + r * cols, *gx = a->grad_x + r * cols;
    float mean_dh = 0.0f, mean_dhh = 0.0f;
#pragma omp simd reduction(+ : mean_dh, mean_dhh)
    for (int64_t j = 0; j < cols; ++j) {
        float dh = dy[j] * gamma[j];
        mean_dh += dh;
        mean_dhh += dh * h[j];
    }
    mean_dh /= (float)cols;
    mean_dhh /= (float)cols;
    float inv = a->rstd[r];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
        float ds = inv * (dy[j] * gamma[j] - mean_dh - h[j] * mean_dhh);
        gs[j] = ds;
        gx[j] = w[j] >= threshold ? ds * scale : 0.0f;
        dgamma[j] += dy[j] * h[j];
        dbeta[j] += dy[j];
    }
}

static void add_norm_backward_group(const struct row_args *a, int64_t r0, int64_t count, const uint32_t *words) {
    const int64_t cols = a->cols;
    float *dgamma = a->partial + (r0 / rows_per_group(cols)) * 2 * cols, *dbeta = dgamma + cols;
    memset(dgamma, 0, 2 * (size_t)cols * sizeof *dgamma);
    for (int64_t r = r0; r < r0 + count; ++r)
        add_norm_backward_row(a, r, words + (r - r0) * cols, dgamma, dbeta);
}

/* Backward of the block above. grad_sum = dL/d(residual + dropped x) [rows, cols], grad_x = grad_sum *
 * keep * scale [rows, cols], and per group of rows_per_group(cols) rows (max(1, 4096 / cols), in row
 * order) partial[group] = (sum_r dy * xhat, sum_r dy) [2, cols], the group's share of dgamma, dbeta. */
void add_dropout_layernorm_backward(float *grad_sum, float *grad_x, float *partial, const float *grad_out,
                                    const float *xhat, const float *rstd, const float *gamma, int64_t rows,
                                    int64_t cols, float scale, uint64_t seed, uint32_t threshold) {
    /* xhat and rstd are only read here (the struct's fields are writable for the forward) */
    struct row_args a = {.cols = cols, .grad_sum = grad_sum, .grad_x = grad_x, .partial = partial,
                         .grad_out = grad_out, .xhat = (float *)xhat, .rstd = (float *)rstd, .gamma = gamma,
                         .scale = scale, .threshold = threshold};
    for_each_row_group(rows, 0, seed, add_norm_backward_group, &a);
}

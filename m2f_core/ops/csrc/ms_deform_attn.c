/* Multi-scale deformable attention, forward and backward, float32, CPU: the sum that
 * ms_deform_attn_core computes with grid_sample (bilinear, zeros outside the map,
 * align_corners=False), in one pass per query.
 *
 * value:     (N, S, M, D)          S = sum over levels of H_l * W_l, levels concatenated
 * shapes:    (L, 2) int64          (H_l, W_l)
 * starts:    (L,) int64            first row of each level in S
 * locations: (N, Lq, M, L, P, 2)   (x, y) in [0, 1]
 * weights:   (N, Lq, M, L, P)      attention weights
 * out:       (N, Lq, M, D)         written for the queries [q0, q1) of the flattened (N, Lq)
 *
 * Built with the system C compiler by m2f_core/ops/native.py and called through ctypes (no Python
 * headers). The *_all entry points at the end split the queries over OpenMP threads; the others
 * take a query range [q0, q1) for a caller that splits them over its own threads.
 *
 * Each entry point runs one body, inlined twice: with D = 32 as a compile-time constant (every
 * official model: 256 channels over 8 heads), where the compiler keeps a query-head's 32
 * accumulators (and, backward, its 32 output gradients) in vector registers for all of its
 * samples, about 2x faster; and with D read at run time for any other head size. Both sum in
 * the same order, so their results are identical.
 */
#include <stdint.h>
#include <string.h>
#include <math.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define FAST_D 32

/* The bilinear corners of one sample: pixel coordinates, the corner fractions and which of the
 * 4 corners lie inside the map; returns 0 when all 4 are outside (or the location is NaN). */
typedef struct {
    int64_t r0;            /* row of the top-left corner in the value table (may be outside) */
    float fx, fy;
    int x0in, x1in, y0in, y1in;
} Corners;

ALWAYS_INLINE int corners(const float *loc, int64_t H, int64_t W, int64_t start, Corners *c) {
    const float x = loc[0] * (float)W - 0.5f;
    const float y = loc[1] * (float)H - 0.5f;
    if (!(x > -1.0f && y > -1.0f && x < (float)W && y < (float)H)) return 0;
    const float xf = floorf(x), yf = floorf(y);
    const int64_t x0 = (int64_t)xf, y0 = (int64_t)yf;
    c->fx = x - xf;
    c->fy = y - yf;
    c->x0in = x0 >= 0;
    c->x1in = x0 + 1 < W;
    c->y0in = y0 >= 0;
    c->y1in = y0 + 1 < H;
    c->r0 = start + y0 * W + x0;
    return 1;
}

ALWAYS_INLINE void axpy(float *restrict y, const float *restrict x, float a, int64_t D) {
    for (int64_t d = 0; d < D; ++d) y[d] += a * x[d];
}

ALWAYS_INLINE float dot(const float *restrict a, const float *restrict b, int64_t D) {
    float s = 0.0f;
    for (int64_t d = 0; d < D; ++d) s += a[d] * b[d];
    return s;
}

ALWAYS_INLINE void forward_body(const float *value, const int64_t *shapes, const int64_t *starts,
                                const float *locations, const float *weights, float *out,
                                int64_t S, int64_t Lq, int64_t M, const int64_t D, int64_t L, int64_t P,
                                int64_t q0, int64_t q1) {
    const int64_t row_stride = M * D;  /* one pixel of one batch item: all heads */
    float acc[D];  /* on the stack: the caller keeps D <= 4096 (native.MAX_HEAD_DIM) */
    for (int64_t nq = q0; nq < q1; ++nq) {
        const int64_t n = nq / Lq;
        for (int64_t m = 0; m < M; ++m) {
            for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
            const float *base = value + n * S * row_stride + m * D;  /* row r of head m: base + r * M * D */
            const float *loc = locations + ((nq * M + m) * L) * P * 2;
            const float *att = weights + ((nq * M + m) * L) * P;
            for (int64_t l = 0; l < L; ++l) {
                const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
                for (int64_t p = 0; p < P; ++p) {
                    Corners c;
                    if (!corners(loc + (l * P + p) * 2, H, W, start, &c)) continue;
                    const float a = att[l * P + p];
                    const float *top = base + c.r0 * row_stride, *bottom = top + W * row_stride;
                    if (c.y0in) {
                        if (c.x0in) axpy(acc, top, a * (1.0f - c.fy) * (1.0f - c.fx), D);
                        if (c.x1in) axpy(acc, top + row_stride, a * (1.0f - c.fy) * c.fx, D);
                    }
                    if (c.y1in) {
                        if (c.x0in) axpy(acc, bottom, a * c.fy * (1.0f - c.fx), D);
                        if (c.x1in) axpy(acc, bottom + row_stride, a * c.fy * c.fx, D);
                    }
                }
            }
            memcpy(out + (nq * M + m) * D, acc, (size_t)D * sizeof(float));
        }
    }
}

void ms_deform_attn_forward(const float *value, const int64_t *shapes, const int64_t *starts,
                            const float *locations, const float *weights, float *out,
                            int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t D, int64_t L, int64_t P,
                            int64_t q0, int64_t q1) {
    (void)N;
    if (D == FAST_D)
        forward_body(value, shapes, starts, locations, weights, out, S, Lq, M, FAST_D, L, P, q0, q1);
    else
        forward_body(value, shapes, starts, locations, weights, out, S, Lq, M, D, L, P, q0, q1);
}

/* Backward of the same sum for the queries [q0, q1): accumulates into grad_value (N, S, M, D), which
 * the caller gives each thread zeroed and sums afterwards, and writes grad_locations and
 * grad_weights (shaped like locations and weights) of those queries. Corners outside the map carry
 * value 0, so they add nothing; the floor is piecewise constant (zero gradient), as in grid_sample. */
ALWAYS_INLINE void backward_body(const float *value, const int64_t *shapes, const int64_t *starts,
                                 const float *locations, const float *weights, const float *grad_out,
                                 float *grad_value, float *grad_locations, float *grad_weights,
                                 int64_t S, int64_t Lq, int64_t M, const int64_t D, int64_t L, int64_t P,
                                 int64_t q0, int64_t q1) {
    const int64_t row_stride = M * D;
    float g[D];
    for (int64_t nq = q0; nq < q1; ++nq) {
        const int64_t n = nq / Lq;
        for (int64_t m = 0; m < M; ++m) {
            memcpy(g, grad_out + (nq * M + m) * D, (size_t)D * sizeof(float));
            const float *base = value + n * S * row_stride + m * D;
            float *gbase = grad_value + n * S * row_stride + m * D;
            const int64_t k0 = (nq * M + m) * L * P;  /* first (level, point) of this query and head */
            for (int64_t l = 0; l < L; ++l) {
                const int64_t H = shapes[2 * l], W = shapes[2 * l + 1], start = starts[l];
                for (int64_t p = 0; p < P; ++p) {
                    const int64_t k = k0 + l * P + p;
                    grad_locations[2 * k] = 0.0f;
                    grad_locations[2 * k + 1] = 0.0f;
                    grad_weights[k] = 0.0f;
                    Corners c;
                    if (!corners(locations + 2 * k, H, W, start, &c)) continue;
                    const float a = weights[k], fx = c.fx, fy = c.fy;
                    /* <value of each corner, grad_out>; 0 outside the map */
                    float v00 = 0.0f, v01 = 0.0f, v10 = 0.0f, v11 = 0.0f;
                    const int64_t r0 = c.r0, r1 = r0 + W;
                    if (c.y0in && c.x0in) { v00 = dot(base + r0 * row_stride, g, D); axpy(gbase + r0 * row_stride, g, a * (1.0f - fy) * (1.0f - fx), D); }
                    if (c.y0in && c.x1in) { v01 = dot(base + (r0 + 1) * row_stride, g, D); axpy(gbase + (r0 + 1) * row_stride, g, a * (1.0f - fy) * fx, D); }
                    if (c.y1in && c.x0in) { v10 = dot(base + r1 * row_stride, g, D); axpy(gbase + r1 * row_stride, g, a * fy * (1.0f - fx), D); }
                    if (c.y1in && c.x1in) { v11 = dot(base + (r1 + 1) * row_stride, g, D); axpy(gbase + (r1 + 1) * row_stride, g, a * fy * fx, D); }
                    grad_weights[k] = (1.0f - fy) * (1.0f - fx) * v00 + (1.0f - fy) * fx * v01
                                      + fy * (1.0f - fx) * v10 + fy * fx * v11;
                    const float dx = (1.0f - fy) * (v01 - v00) + fy * (v11 - v10);  /* d sum / d x */
                    const float dy = (1.0f - fx) * (v10 - v00) + fx * (v11 - v01);  /* d sum / d y */
                    grad_locations[2 * k] = a * dx * (float)W;
                    grad_locations[2 * k + 1] = a * dy * (float)H;
                }
            }
        }
    }
}

void ms_deform_attn_backward(const float *value, const int64_t *shapes, const int64_t *starts,
                             const float *locations, const float *weights, const float *grad_out,
                             float *grad_value, float *grad_locations, float *grad_weights,
                             int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t D, int64_t L, int64_t P,
                             int64_t q0, int64_t q1) {
    (void)N;
    if (D == FAST_D)
        backward_body(value, shapes, starts, locations, weights, grad_out, grad_value, grad_locations,
                      grad_weights, S, Lq, M, FAST_D, L, P, q0, q1);
    else
        backward_body(value, shapes, starts, locations, weights, grad_out, grad_value, grad_locations,
                      grad_weights, S, Lq, M, D, L, P, q0, q1);
}

/* Entry points over all N * Lq queries, split over the threads of the OpenMP runtime PyTorch
 * already runs (built with -fopenmp, the library's libgomp resolves to torch's already loaded copy):
 * torch's threads, which spin for a while after each of its parallel regions, do the work instead
 * of competing for the cores with threads of our own (in the model, about 1.6x faster). Built
 * without OpenMP they run on the calling thread, and the caller splits the queries over Python
 * threads instead (ms_deform_attn_threaded() says which). */
#ifdef _OPENMP
#include <omp.h>
#define THREAD_RANGE(total, q0, q1)                                                    \
    const int64_t nt_ = omp_get_num_threads(), id_ = omp_get_thread_num();             \
    const int64_t q0 = (total) * id_ / nt_, q1 = (total) * (id_ + 1) / nt_
#endif

int64_t ms_deform_attn_threaded(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

void ms_deform_attn_forward_all(const float *value, const int64_t *shapes, const int64_t *starts,
                                const float *locations, const float *weights, float *out,
                                int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t D, int64_t L, int64_t P,
                                int64_t threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        THREAD_RANGE(N * Lq, q0, q1);
        ms_deform_attn_forward(value, shapes, starts, locations, weights, out, N, S, Lq, M, D, L, P, q0, q1);
    }
#else
    (void)threads;
    ms_deform_attn_forward(value, shapes, starts, locations, weights, out, N, S, Lq, M, D, L, P, 0, N * Lq);
#endif
}

/* grad_values: `threads` zeroed (N, S, M, D) buffers, one per thread (rows are shared between
 * queries); the caller sums them. */
void ms_deform_attn_backward_all(const float *value, const int64_t *shapes, const int64_t *starts,
                                 const float *locations, const float *weights, const float *grad_out,
                                 float *grad_values, float *grad_locations, float *grad_weights,
                                 int64_t N, int64_t S, int64_t Lq, int64_t M, int64_t D, int64_t L, int64_t P,
                                 int64_t threads) {
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        THREAD_RANGE(N * Lq, q0, q1);
        ms_deform_attn_backward(value, shapes, starts, locations, weights, grad_out,
                                grad_values + id_ * N * S * M * D, grad_locations, grad_weights,
                                N, S, Lq, M, D, L, P, q0, q1);
    }
#else
    (void)threads;
    ms_deform_attn_backward(value, shapes, starts, locations, weights, grad_out, grad_values, grad_locations,
                            grad_weights, N, S, Lq, M, D, L, P, 0, N * Lq);
#endif
}

/* RoIAlign on the CPU, computing what torchvision.ops.roi_align computes, written for speed.
 *
 * torchvision (and ONNX Runtime's RoiAlign) loop over each RoI, each channel, each output
 * bin and each sampling point, reading four scattered pixels of an NCHW map per point:
 * about 200 million scalar multiply-adds for the 1000 proposals of a Mask R-CNN box head,
 * 100-380 ms on two cores. Here the feature map is channels-last (NHWC, which OpenVINO
 * writes at no extra cost), so each bilinear tap is one multiply-add over a contiguous run
 * of channels: vector code the compiler emits for AVX-512, AVX2 or SSE, chosen at run time.
 *
 * Per RoI: the sampling points' taps along each axis are computed once per output row and
 * column (torchvision's bilinear rule) and merged where two points share a pixel; each bin
 * then sums its taps over blocks of 64 channels held in registers. The result is written
 * channels-last, (bins, C) per RoI, as float32 or quantized to uint8 for a head whose first
 * layer is INT8, or transposed into the (C, bins) float32 layout of the graphs' own RoiAlign
 * output.
 *
 * Loaded with ctypes (engine/roi_align.py), which releases the GIL for the call, so threads
 * that each take a range of RoIs run in parallel.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

typedef struct {
    int64_t index; /* row or column of the feature map */
    float weight;  /* bilinear weight; 0 for a sampling point outside the map */
} tap;

/* The two taps of one sampling coordinate, torchvision's bilinear_interpolate rule along one
 * axis: a point outside [-1, size] contributes nothing, one in [-1, 0] reads pixel 0, one at
 * or past size - 1 reads the last pixel. */
static void axis_taps(float coord, int64_t size, float scale, tap *out) {
    if (coord < -1.0f || coord > (float)size) {
        out[0].index = out[1].index = 0;
        out[0].weight = out[1].weight = 0.0f;
        return;
    }
    if (coord <= 0.0f) coord = 0.0f;
    int64_t low = (int64_t)coord, high;
    if (low >= size - 1) {
        high = low = size - 1;
        coord = (float)low;
    } else {
        high = low + 1;
    }
    float l = coord - (float)low;
    out[0].index = low;
    out[0].weight = (1.0f - l) * scale;
    out[1].index = high;
    out[1].weight = l * scale;
}

/* The taps of one output row or column, merged: equal indices summed (neighbouring sampling
 * points of a small RoI often fall between the same two pixels) and weight-0 taps dropped.
 * Returns how many remain at the front of t. */
static int64_t merge_taps(tap *t, int64_t n) {
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        if (t[i].weight == 0.0f) continue;
        int64_t j = 0;
        while (j < kept && t[j].index != t[i].index) j++;
        if (j < kept)
            t[j].weight += t[i].weight;
        else
            t[kept++] = t[i];
    }
    return kept;
}

typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define BLOCK 64 /* channels per register block: 4 vectors of 16 floats */

/* One bin, every channel: out[c] = sum over taps t of weights[t] * srcs[t][c]. Channels go
 * in blocks of 64 held in registers across all the taps, so a tap costs one load and one
 * multiply-add per 16 channels. */
VECTOR_CLONES
static void bin_channels(const float *const *srcs, const float *weights, int64_t taps, int64_t channels,
                         float *out) {
    int64_t c = 0;
    for (; c + BLOCK <= channels; c += BLOCK) {
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int64_t t = 0; t < taps; t++) {
            const v16 *s = (const v16 *)(srcs[t] + c);
            const float w = weights[t];
            a0 += w * s[0];
            a1 += w * s[1];
            a2 += w * s[2];
            a3 += w * s[3];
        }
        v16 *o = (v16 *)(out + c);
        o[0] = a0;
        o[1] = a1;
        o[2] = a2;
        o[3] = a3;
    }
    for (; c < channels; c++) { /* channel counts that are not a multiple of 64 */
        float a = 0.0f;
        for (int64_t t = 0; t < taps; t++) a += weights[t] * srcs[t][c];
        out[c] = a;
    }
}

/* dst[i] = src[i] quantized to 256 levels over [low, low + 255 / inv] the way OpenVINO's CPU
 * FakeQuantize does it (an INT8 directory's QuantizeLinear): one fused multiply-add
 * x * inv + (-low * inv), clamped to 0..255, rounded to nearest even. The same u8 values
 * but for one in about a million that sits on a rounding boundary (none of the 12.5 million
 * of an R50 box head's input; rounding (x - low) * inv instead differed on 83 of those). */
VECTOR_CLONES
static void quantize_u8(const float *restrict src, int64_t n, float low, float inv, uint8_t *restrict dst) {
    const float shift = -low * inv;
    for (int64_t i = 0; i < n; i++) {
        float q = fmaf(src[i], inv, shift);
        q = q < 0.0f ? 0.0f : (q > 255.0f ? 255.0f : q);
        dst[i] = (uint8_t)nearbyintf(q);
    }
}

enum layout { NCHW_F32 = 0, NHWC_F32 = 1, NHWC_U8 = 2 };

/* feat: (height, width, channels) float32, C-contiguous (one image of an NHWC map).
 * rois: (num_rois, 4) float32, (x1, y1, x2, y2) in image pixels; spatial_scale maps them to
 * feature pixels. out, by layout: NCHW_F32 (num_rois, channels, pooled_h, pooled_w) float32,
 * as the head graphs' RoiAlign gives it; NHWC_F32 (num_rois, pooled_h, pooled_w, channels)
 * float32; NHWC_U8 the same quantized to uint8 (quantize_u8 with q_low, q_inv); only RoIs
 * [n_begin, n_end) are written. sampling_ratio <= 0:
 * torchvision's adaptive grid, ceil(RoI size / pooled size). aligned: torchvision's flag
 * (a half-pixel offset, no 1-pixel minimum size). Returns 0, or -1 where memory ran out. */
int roi_align_nhwc(const float *feat, int64_t height, int64_t width, int64_t channels,
                   const float *rois, float spatial_scale, int64_t pooled_h, int64_t pooled_w,
                   int64_t sampling_ratio, int aligned, int layout, float q_low, float q_inv, int64_t n_begin,
                   int64_t n_end, void *out) {
    const float offset = aligned ? 0.5f : 0.0f;
    const int64_t bins = pooled_h * pooled_w;
    /* (bins, channels) of one RoI, where it is transposed or quantized afterwards */
    float *roi_out = layout == NHWC_F32 ? NULL : malloc((size_t)(channels * bins) * sizeof(float));
    int64_t *ycount = malloc((size_t)pooled_h * sizeof(int64_t)), *xcount = malloc((size_t)pooled_w * sizeof(int64_t));
    tap *ytaps = NULL, *xtaps = NULL;
    const float **srcs = NULL;
    float *weights = NULL;
    int64_t axis_capacity = 0, bin_capacity = 0; /* taps allocated per axis, per bin */
    int status = (roi_out || layout == NHWC_F32) && ycount && xcount ? 0 : -1;
    for (int64_t n = n_begin; n < n_end && status == 0; n++) {
        const float *r = rois + 4 * n;
        float x1 = r[0] * spatial_scale - offset, y1 = r[1] * spatial_scale - offset;
        float w = r[2] * spatial_scale - offset - x1, h = r[3] * spatial_scale - offset - y1;
        if (!aligned) { /* torchvision forces malformed RoIs to 1x1 */
            w = w > 1.0f ? w : 1.0f;
            h = h > 1.0f ? h : 1.0f;
        }
        const float bin_w = w / (float)pooled_w, bin_h = h / (float)pooled_h;
        const int64_t grid_h = sampling_ratio > 0 ? sampling_ratio : (int64_t)ceilf(bin_h);
        const int64_t grid_w = sampling_ratio > 0 ? sampling_ratio : (int64_t)ceilf(bin_w);
        const int64_t count = grid_h * grid_w > 1 ? grid_h * grid_w : 1;
        const int64_t ny = 2 * grid_h, nx = 2 * grid_w; /* taps per output row, column */
        const int64_t axis_need = pooled_h * ny > pooled_w * nx ? pooled_h * ny : pooled_w * nx;
        if (axis_need > axis_capacity) {
            free(ytaps);
            free(xtaps);
            ytaps = malloc((size_t)axis_need * sizeof(tap));
            xtaps = malloc((size_t)axis_need * sizeof(tap));
            axis_capacity = axis_need;
        }
        if (ny * nx > bin_capacity) {
            free(srcs);
            free(weights);
            srcs = malloc((size_t)(ny * nx) * sizeof(*srcs));
            weights = malloc((size_t)(ny * nx) * sizeof(*weights));
            bin_capacity = ny * nx;
        }
        if (!ytaps || !xtaps || !srcs || !weights) {
            status = -1;
            break;
        }
        /* Per output row: the taps of its grid_h sampling rows, weights divided by the count;
         * per output column the same for its grid_w sampling columns. */
        for (int64_t ph = 0; ph < pooled_h; ph++) {
            for (int64_t iy = 0; iy < grid_h; iy++)
                axis_taps(y1 + ph * bin_h + (iy + 0.5f) * bin_h / (float)grid_h, height, 1.0f / (float)count,
                          ytaps + ph * ny + 2 * iy);
            ycount[ph] = merge_taps(ytaps + ph * ny, ny);
        }
        for (int64_t pw = 0; pw < pooled_w; pw++) {
            for (int64_t ix = 0; ix < grid_w; ix++)
                axis_taps(x1 + pw * bin_w + (ix + 0.5f) * bin_w / (float)grid_w, width, 1.0f, xtaps + pw * nx + 2 * ix);
            xcount[pw] = merge_taps(xtaps + pw * nx, nx);
        }
        float *bins_out = layout == NHWC_F32 ? (float *)out + n * bins * channels : roi_out;
        for (int64_t ph = 0; ph < pooled_h; ph++) {
            for (int64_t pw = 0; pw < pooled_w; pw++) {
                int64_t taps = 0;
                for (int64_t a = 0; a < ycount[ph]; a++) {
                    const tap *ya = ytaps + ph * ny + a;
                    const float *row = feat + ya->index * width * channels;
                    for (int64_t b = 0; b < xcount[pw]; b++) {
                        const tap *xb = xtaps + pw * nx + b;
                        srcs[taps] = row + xb->index * channels;
                        weights[taps++] = ya->weight * xb->weight;
                    }
                }
                bin_channels(srcs, weights, taps, channels, bins_out + (ph * pooled_w + pw) * channels);
            }
        }
        /* (bins, channels) -> (channels, bins): contiguous writes, reads from the RoI's
         * buffer while it is in cache (strided stores straight into `out` took longer than
         * the pooling) */
        if (layout == NHWC_U8) quantize_u8(roi_out, bins * channels, q_low, q_inv, (uint8_t *)out + n * bins * channels);
        if (layout != NCHW_F32) continue;
        float *dst = (float *)out + n * channels * bins;
        for (int64_t c = 0; c < channels; c++)
            for (int64_t b = 0; b < bins; b++) dst[c * bins + b] = roi_out[b * channels + c];
    }
    free(roi_out);
    free(ycount);
    free(xcount);
    free(ytaps);
    free(xtaps);
    free(srcs);
    free(weights);
    return status;
}

/* src: (channels, pixels) float32 (one image of an NCHW map, pixels = H * W); dst: (pixels,
 * channels), the same map channels-last. Only pixels [p_begin, p_end) are written. In 16 x 16
 * tiles, so that both the 16 rows read and the 16 rows written stay in L1. */
void nchw_to_nhwc(const float *src, int64_t channels, int64_t pixels, int64_t p_begin, int64_t p_end, float *dst) {
    for (int64_t p0 = p_begin; p0 < p_end; p0 += 16) {
        const int64_t p1 = p0 + 16 < p_end ? p0 + 16 : p_end;
        for (int64_t c0 = 0; c0 < channels; c0 += 16) {
            const int64_t c1 = c0 + 16 < channels ? c0 + 16 : channels;
            for (int64_t p = p0; p < p1; p++)
                for (int64_t c = c0; c < c1; c++) dst[p * channels + c] = src[c * pixels + p];
        }
    }
}

/* torch's CPU results where their exact values decide which boxes survive: the order of
 * torch.topk and of torch.sort (descending) among equal values, and torch.sigmoid's float32
 * rounding.
 *
 * torchvision's RPN takes each level's top-k objectness logits with torch.topk, turns them
 * into probabilities with torch.sigmoid and, past 4000 coordinates, orders the survivors of
 * per-level NMS with torch.sort. Equal scores are common: trained models saturate (a
 * probability of exactly 1.0), and a random model's near-constant logits round to equal
 * probabilities. Among equal values torch's order is neither index order nor any other
 * rule a numpy sort can express; it is whatever libstdc++'s std::nth_element,
 * std::partial_sort and std::sort leave, so this file calls those same algorithms with
 * ATen's comparator on the same (value, index) pairs (ATen's TopKImpl.h and
 * SortingKernel.cpp). The NMS that follows keeps the first of two overlapping boxes of equal
 * score, so a different order keeps a different box: near the image border, where clipped
 * proposals of neighbouring anchors overlap, an edge one stride away.
 *
 * torch.sigmoid on float32 computes 1 / (1 + exp(-x)) with SLEEF's expf (1-ulp, with fused
 * multiply-adds) on whole vector blocks and the C library's expf on the rest; numpy's exp
 * differs in the last bit for about one value in six, which splits or merges ties.
 *
 * Loaded with ctypes by engine/torch_kernels.py. Built with the C++ compiler the platform's
 * torch wheels use (libstdc++ on Linux), optional like the native RoIAlign.
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

namespace {

using Entry = std::pair<float, int64_t>;

/* ATen's "largest first" comparator: NaN before everything, then by value. */
bool larger(const Entry &x, const Entry &y) {
    return (std::isnan(x.first) && !std::isnan(y.first)) || (x.first > y.first);
}

std::vector<Entry> entries(const float *values, int64_t n) {
    std::vector<Entry> queue(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j) queue[j] = Entry(values[j], j);
    return queue;
}

/* SLEEF's xexpf (expf_u10) with its fused multiply-adds, as ATen's AVX2 and AVX-512 vector
 * code runs it. */
float sleef_expf(float d) {
    const float log2e = 1.442695040888963407359924681001892137426645954152985934135449406931f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187045e-06f;
    const float qf = std::nearbyint(d * log2e);
    const int q = static_cast<int>(qf);
    float s = std::fmaf(qf, -ln2_hi, d);
    s = std::fmaf(qf, -ln2_lo, s);
    float u = 0.000198527617612853646278381f;
    u = std::fmaf(u, s, 0.00139304355252534151077271f);
    u = std::fmaf(u, s, 0.00833336077630519866943359f);
    u = std::fmaf(u, s, 0.0416664853692054748535156f);
    u = std::fmaf(u, s, 0.166666671633720397949219f);
    u = std::fmaf(u, s, 0.5f);
    u = 1.0f + std::fmaf(s * s, u, s);
    const int half = q >> 1;  // two steps, as SLEEF's ldexp2k, so no step overflows
    u = u * std::ldexp(1.0f, half) * std::ldexp(1.0f, q - half);
    if (d < -104.0f) u = 0.0f;
    if (d > 100.0f) u = INFINITY;
    return u;
}

}  // namespace

extern "C" {

/* torch.topk(values, k) indices (largest, sorted), ATen's topk_impl_loop. */
void topk_order(const float *values, int64_t n, int64_t k, int64_t *out) {
    if (k <= 0) return;
    std::vector<Entry> queue = entries(values, n);
    if (k * 64 <= n) {
        std::partial_sort(queue.begin(), queue.begin() + k, queue.end(), larger);
    } else {
        std::nth_element(queue.begin(), queue.begin() + k - 1, queue.end(), larger);
        std::sort(queue.begin(), queue.begin() + k - 1, larger);
    }
    for (int64_t j = 0; j < k; ++j) out[j] = queue[j].second;
}

/* torch.sort(values, descending=True) indices (stable=False), ATen's sort_kernel. */
void sort_descending_order(const float *values, int64_t n, int64_t *out) {
    std::vector<Entry> queue = entries(values, n);
    std::sort(queue.begin(), queue.end(), larger);
    for (int64_t j = 0; j < n; ++j) out[j] = queue[j].second;
}

/* torch.sigmoid on a contiguous float32 tensor: ATen's vectorized loop runs SLEEF's expf on
 * each whole block of `block` values (two vector registers) and std::exp on the tail. */
void sigmoid(const float *x, int64_t n, int64_t block, float *out) {
    int64_t i = 0;
    if (block > 0) {
        for (; i + block <= n; i += block)
            for (int64_t j = i; j < i + block; ++j) out[j] = 1.0f / (1.0f + sleef_expf(-x[j]));
    }
    for (; i < n; ++i) out[i] = 1.0f / (1.0f + std::exp(-x[i]));
}

}  // extern "C"

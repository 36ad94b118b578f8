/* cuda backend: the .bbdense network of the blas backend on an NVIDIA GPU,
 * reading the clients' inputs and writing their outputs in place, in their
 * own shared memory. docs/backends/cuda.md. Backend ABI version 2.
 *
 * Params:
 *   weights   path of the .bbdense file (required)
 *   device    CUDA device ordinal (default 0), or auto: instance i of a
 *             model runs on device i mod (number of devices)
 *   graph     on (default) | off: replay the whole fixed path of a batch size
 *             (table copy, gather, GEMMs, activations, scatter) as one CUDA
 *             graph, captured the first time that size runs
 *
 * Data path of a batch of n requests:
 *   1. register_segment() registered each client segment once, on the
 *      broker's registration thread, before the client's first request
 *      (cudaHostRegister, Mapped|Portable): the GPU reaches it over PCIe at
 *      a device address (equal to the host one under unified addressing,
 *      taken from cudaHostGetDevicePointer all the same).
 *   2. The host writes n source and n destination row addresses into a
 *      pinned table (each row found by the segment id the batch gives it);
 *      one copy moves it to the GPU.
 *   3. A gather kernel reads each input row straight from client memory
 *      into a [n][in] matrix; cuBLAS runs one GEMM per layer; a kernel adds
 *      the bias and applies the activation; a scatter kernel writes each
 *      output row straight into the client's output buffer.
 *   4. submit() returns once this is queued on the slot's stream; a stream
 *      callback completes the batch to the broker when the GPU is done.
 * A row of no registered segment (a segment whose registration failed, a
 * deduplicated request's private copy, the bench's in-process baseline) goes
 * through a pinned staging buffer of the slot instead: the same kernels, one
 * host copy each way.
 *
 * Trust: the host checks every length (input exactly in*4 bytes, output cap
 * at least out*4) and that a row lies wholly inside its registered segment
 * before its address goes into the table; the kernels touch exactly those
 * bytes. A client rewriting its input during the gather garbles its own row.
 *
 * In flight: the per-batch resources (tables, staging, activations, stream,
 * cuBLAS handle, graphs) form a Slot, and an instance has two, allocated at
 * init for max_batch_size rows: while the GPU computes one batch the host
 * fills the other's tables and its gather starts behind it. process() (for
 * in-process callers) is the same path, waited for. */
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <atomic>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"
#include "bbdense.h"

namespace {

constexpr int kSlots = 2; /* = max_inflight */
constexpr size_t kCublasWorkspace = 4u << 20;
constexpr uint32_t kMaxGraphs = 512; /* batch sizes with a captured graph */

/* ---- registered client memory, process-wide --------------------------------
 * Every model and instance of this plugin shares it: one segment is
 * registered with the driver once however many instances ask (the driver
 * refuses a second registration of the same range), and unregistered when
 * the last one lets go. Keyed by the broker's segment id, which each row of
 * a batch names. */
struct Region {
    uintptr_t base;
    size_t len;
    char *dev;   /* device address of base */
    int refs;
    bool owned;  /* we registered it (else someone else in the process did) */
};

std::mutex g_regions_mu;
std::unordered_map<uint32_t, Region> g_regions;

/* Device address of [p, p+len) if it lies inside registered segment id,
 * else nullptr. Caller holds g_regions_mu. */
char *mapped(uint32_t id, const void *p, size_t len)
{
    if (!id) return nullptr;
    auto it = g_regions.find(id);
    if (it == g_regions.end()) return nullptr;
    const Region &r = it->second;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a < r.base || a - r.base > r.len || len > r.len - (a - r.base)) return nullptr;
    return r.dev + (a - r.base);
}

/* ---- kernels ---------------------------------------------------------------- */

/* Row r of x = the in floats at src[r], which may sit at any byte address. */
__global__ void gather_rows(const char *const *src, float *x, int in)
{
    const char *s = src[blockIdx.x];
    float *d = x + size_t(blockIdx.x) * in;
    if ((reinterpret_cast<uintptr_t>(s) & 3) == 0) {
        const float *f = reinterpret_cast<const float *>(s);
        for (int k = threadIdx.x; k < in; k += blockDim.x) d[k] = f[k];
    } else {
        const unsigned char *b = reinterpret_cast<const unsigned char *>(s);
        for (int k = threadIdx.x; k < in; k += blockDim.x) {
            uint32_t v = uint32_t(b[4 * k]) | uint32_t(b[4 * k + 1]) << 8 |
                         uint32_t(b[4 * k + 2]) << 16 | uint32_t(b[4 * k + 3]) << 24;
            d[k] = __uint_as_float(v);
        }
    }
}

/* The out floats of row r of y to dst[r], at any byte address. */
__global__ void scatter_rows(const float *y, char *const *dst, int out)
{
    char *o = dst[blockIdx.x];
    const float *s = y + size_t(blockIdx.x) * out;
    if ((reinterpret_cast<uintptr_t>(o) & 3) == 0) {
        float *f = reinterpret_cast<float *>(o);
        for (int k = threadIdx.x; k < out; k += blockDim.x) f[k] = s[k];
    } else {
        unsigned char *b = reinterpret_cast<unsigned char *>(o);
        for (int k = threadIdx.x; k < out; k += blockDim.x) {
            uint32_t v = __float_as_uint(s[k]);
            b[4 * k] = (unsigned char)v;
            b[4 * k + 1] = (unsigned char)(v >> 8);
            b[4 * k + 2] = (unsigned char)(v >> 16);
            b[4 * k + 3] = (unsigned char)(v >> 24);
        }
    }
}

/* y = act(y + bias) elementwise, for every activation but softmax. */
__global__ void bias_act(float *y, const float *bias, int rows, int out, int act)
{
    size_t n = size_t(rows) * out;
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
         i += size_t(gridDim.x) * blockDim.x) {
        float v = y[i] + bias[i % out];
        switch (act) {
        case BBD_ACT_RELU: v = v > 0.0f ? v : 0.0f; break;
        case BBD_ACT_TANH: v = tanhf(v); break;
        case BBD_ACT_SIGMOID: v = 1.0f / (1.0f + expf(-v)); break;
        default: break;
        }
        y[i] = v;
    }
}

/* Softmax of each row after the bias: one block per row, max and sum by
 * block reductions (shifted by the max so that exp cannot overflow). */
__global__ void bias_softmax(float *y, const float *bias, int out)
{
    __shared__ float red[256];
    float *v = y + size_t(blockIdx.x) * out;
    float m = -INFINITY;
    for (int k = threadIdx.x; k < out; k += blockDim.x) {
        v[k] += bias[k];
        m = fmaxf(m, v[k]);
    }
    red[threadIdx.x] = m;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    m = red[0];
    __syncthreads();
    float sum = 0.0f;
    for (int k = threadIdx.x; k < out; k += blockDim.x) {
        v[k] = expf(v[k] - m);
        sum += v[k];
    }
    red[threadIdx.x] = sum;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    sum = red[0];
    for (int k = threadIdx.x; k < out; k += blockDim.x) v[k] /= sum;
}

/* ---- one instance ------------------------------------------------------------ */

struct Layer {
    int in, out, act;
    float *w, *b; /* device */
};

struct Slot {
    cudaStream_t stream = nullptr;
    cublasHandle_t blas = nullptr;
    void *workspace = nullptr;
    uint32_t cap = 0;              /* rows the buffers below hold */
    const char **h_src = nullptr;  /* pinned: row addresses, host side */
    char **h_dst = nullptr;
    const char **d_src = nullptr;  /* device copies the kernels read */
    char **d_dst = nullptr;
    float *x = nullptr;            /* device [cap][in] */
    float *a = nullptr, *b = nullptr; /* device [cap][max_dim] ping-pong */
    char *h_in = nullptr, *h_out = nullptr;  /* pinned, mapped staging */
    char *d_in = nullptr, *d_out = nullptr;  /* their device addresses */
    std::unordered_map<uint32_t, cudaGraphExec_t> graphs;
    /* The batch in flight on this slot: set by submit, read by the stream
     * callback; `busy` hands the slot from the one to the other. */
    struct State *st = nullptr;
    std::atomic<bool> busy{false};
    bb_batch *batch = nullptr;
    uint32_t n = 0;
    std::vector<uint32_t> valid;                           /* requests that run */
    std::vector<std::pair<uint32_t, uint32_t>> staged_out; /* (request, staging row) */
};

struct State {
    int device = 0;
    bool use_graphs = true;
    std::string path;
    bbd_net net{};
    std::vector<Layer> layers;
    Slot slots[kSlots];
    int next_slot = 0;
    std::string err;
    void (*log)(void *, int, const char *) = nullptr;
    void *log_ctx = nullptr;
};

void say(State *st, int level, const std::string &msg)
{
    if (st->log) st->log(st->log_ctx, level, msg.c_str());
}

bool ok(cudaError_t e, State *st, const char *what)
{
    if (e == cudaSuccess) return true;
    st->err = std::string("cuda: ") + what + ": " + cudaGetErrorString(e);
    return false;
}

bool okb(cublasStatus_t e, State *st, const char *what)
{
    if (e == CUBLAS_STATUS_SUCCESS) return true;
    st->err = std::string("cuda: ") + what + ": cuBLAS status " + std::to_string(int(e));
    return false;
}

void free_buffers(Slot &s)
{
    for (auto &g : s.graphs) cudaGraphExecDestroy(g.second);
    s.graphs.clear();
    cudaFreeHost(s.h_src);
    cudaFreeHost(s.h_dst);
    cudaFree(s.d_src);
    cudaFree(s.d_dst);
    cudaFree(s.x);
    cudaFree(s.a);
    cudaFree(s.b);
    cudaFreeHost(s.h_in);
    cudaFreeHost(s.h_out);
    s.h_src = nullptr;
    s.h_dst = nullptr;
    s.d_src = nullptr;
    s.d_dst = nullptr;
    s.x = s.a = s.b = nullptr;
    s.h_in = s.h_out = s.d_in = s.d_out = nullptr;
    s.cap = 0;
}

/* Room for `rows` rows; the captured graphs point at the old buffers, so a
 * growth drops them. */
bool grow(State *st, Slot &s, uint32_t rows)
{
    if (rows <= s.cap) return true;
    uint32_t cap = s.cap ? s.cap : 64;
    while (cap < rows) cap *= 2;
    free_buffers(s);
    size_t in = st->net.in_dim, wide = st->net.max_dim, out = st->net.out_dim;
    unsigned fl = cudaHostAllocMapped | cudaHostAllocPortable;
    if (!ok(cudaHostAlloc(reinterpret_cast<void **>(&s.h_src), cap * sizeof(char *), 0), st, "pinned table") ||
        !ok(cudaHostAlloc(reinterpret_cast<void **>(&s.h_dst), cap * sizeof(char *), 0), st, "pinned table") ||
        !ok(cudaMalloc(reinterpret_cast<void **>(&s.d_src), cap * sizeof(char *)), st, "device table") ||
        !ok(cudaMalloc(reinterpret_cast<void **>(&s.d_dst), cap * sizeof(char *)), st, "device table") ||
        !ok(cudaMalloc(reinterpret_cast<void **>(&s.x), cap * in * sizeof(float)), st, "device matrix") ||
        !ok(cudaMalloc(reinterpret_cast<void **>(&s.a), cap * wide * sizeof(float)), st, "device matrix") ||
        !ok(cudaMalloc(reinterpret_cast<void **>(&s.b), cap * wide * sizeof(float)), st, "device matrix") ||
        !ok(cudaHostAlloc(reinterpret_cast<void **>(&s.h_in), cap * in * sizeof(float), fl), st, "staging") ||
        !ok(cudaHostAlloc(reinterpret_cast<void **>(&s.h_out), cap * out * sizeof(float), fl), st, "staging") ||
        !ok(cudaHostGetDevicePointer(reinterpret_cast<void **>(&s.d_in), s.h_in, 0), st, "staging address") ||
        !ok(cudaHostGetDevicePointer(reinterpret_cast<void **>(&s.d_out), s.h_out, 0), st, "staging address")) {
        free_buffers(s);
        return false;
    }
    s.cap = cap;
    return true;
}

/* The fixed path of n rows, enqueued on the slot's stream: the same calls
 * whether run directly or captured into a graph. */
bool enqueue(State *st, Slot &s, uint32_t n)
{
    if (!ok(cudaMemcpyAsync(s.d_src, s.h_src, n * sizeof(char *), cudaMemcpyHostToDevice, s.stream), st, "table copy") ||
        !ok(cudaMemcpyAsync(s.d_dst, s.h_dst, n * sizeof(char *), cudaMemcpyHostToDevice, s.stream), st, "table copy"))
        return false;
    gather_rows<<<n, 256, 0, s.stream>>>(s.d_src, s.x, int(st->net.in_dim));
    const float one = 1.0f, zero = 0.0f;
    const float *x = s.x;
    float *y = s.a, *spare = s.b;
    for (const Layer &L : st->layers) {
        /* Row-major y[n][out] = x[n][in] w[out][in]^T is, in cuBLAS's
         * column-major terms, y^T (out x n) = w^T' (out x in) * x^T (in x n). */
        if (!okb(cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, L.out, int(n), L.in, &one, L.w,
                             L.in, x, L.in, &zero, y, L.out),
                 st, "cublasSgemm"))
            return false;
        if (L.act == BBD_ACT_SOFTMAX) {
            bias_softmax<<<n, 256, 0, s.stream>>>(y, L.b, L.out);
        } else {
            size_t total = size_t(n) * L.out;
            unsigned blocks = unsigned(std::min<size_t>((total + 255) / 256, 4096));
            bias_act<<<blocks, 256, 0, s.stream>>>(y, L.b, int(n), L.out, L.act);
        }
        x = y;
        y = spare;
        spare = const_cast<float *>(x);
    }
    scatter_rows<<<n, 128, 0, s.stream>>>(x, s.d_dst, int(st->net.out_dim));
    return ok(cudaGetLastError(), st, "kernel launch");
}

bool launch(State *st, Slot &s, uint32_t n)
{
    if (!st->use_graphs) return enqueue(st, s, n);
    auto it = s.graphs.find(n);
    if (it == s.graphs.end()) {
        if (s.graphs.size() >= kMaxGraphs) return enqueue(st, s, n);
        cudaGraph_t g = nullptr;
        cudaGraphExec_t exec = nullptr;
        if (!ok(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal), st, "graph capture"))
            return false;
        bool queued = enqueue(st, s, n);
        cudaError_t e = cudaStreamEndCapture(s.stream, &g);
        if (!queued || !ok(e, st, "graph capture")) {
            if (g) cudaGraphDestroy(g);
            return false;
        }
        e = cudaGraphInstantiate(&exec, g, 0);
        cudaGraphDestroy(g);
        if (!ok(e, st, "graph instantiate")) return false;
        it = s.graphs.emplace(n, exec).first;
    }
    return ok(cudaGraphLaunch(it->second, s.stream), st, "graph launch");
}

/* Start the batch on a slot: fill the tables (client addresses where
 * registered, staging rows otherwise) and launch. */
bool launch_batch(State *st, Slot &s, const bb_batch *batch)
{
    uint32_t n = uint32_t(s.valid.size());
    if (!grow(st, s, n)) return false;
    size_t in_bytes = st->net.in_dim * sizeof(float), out_bytes = st->net.out_dim * sizeof(float);
    s.n = n;
    s.staged_out.clear();
    {
        /* Lookups only under the lock (a registration may be changing the
         * table; the driver calls themselves run outside it). */
        std::lock_guard<std::mutex> lock(g_regions_mu);
        for (uint32_t r = 0; r < n; r++) {
            uint32_t i = s.valid[r], id = batch->segments ? batch->segments[i] : 0;
            s.h_src[r] = mapped(id, batch->inputs[i].ptr, in_bytes);
            s.h_dst[r] = mapped(id, batch->outputs[i].ptr, out_bytes);
        }
    }
    for (uint32_t r = 0; r < n; r++) {
        if (!s.h_src[r]) {
            memcpy(s.h_in + r * in_bytes, batch->inputs[s.valid[r]].ptr, in_bytes);
            s.h_src[r] = s.d_in + r * in_bytes;
        }
        if (!s.h_dst[r]) {
            s.h_dst[r] = s.d_out + r * out_bytes;
            s.staged_out.emplace_back(s.valid[r], r);
        }
    }
    return launch(st, s, n);
}

/* The slot's batch is done on the GPU: copy staged outputs, set lengths.
 * Host memory only (it also runs in a stream callback). */
void finish(State *st, Slot &s, bb_batch *batch)
{
    size_t out_bytes = st->net.out_dim * sizeof(float);
    for (const auto &p : s.staged_out)
        memcpy(batch->outputs[p.first].ptr, s.h_out + p.second * out_bytes, out_bytes);
    for (uint32_t r = 0; r < s.n; r++) batch->outputs[s.valid[r]].len = out_bytes;
}

void destroy(State *st)
{
    if (!st) return;
    cudaSetDevice(st->device);
    for (Slot &s : st->slots) {
        if (s.stream) cudaStreamSynchronize(s.stream); /* callbacks included */
        free_buffers(s);
        if (s.blas) cublasDestroy(s.blas);
        cudaFree(s.workspace);
        if (s.stream) cudaStreamDestroy(s.stream);
    }
    for (Layer &L : st->layers) {
        cudaFree(L.w);
        cudaFree(L.b);
    }
    bbd_free(&st->net);
    delete st;
}

int refuse(State *st, char *err, size_t errlen, int rc)
{
    snprintf(err, errlen, "%s", st->err.c_str());
    destroy(st);
    return rc;
}

int cuda_init2(const bb_init_args *a, void **state, char *err, size_t errlen) noexcept
{
    State *st = new (std::nothrow) State();
    if (!st) {
        snprintf(err, errlen, "cuda: out of memory");
        return BB_ENOMEM;
    }
    st->log = a->log;
    st->log_ctx = a->log_ctx;
    bool auto_device = false;
    for (size_t i = 0; i < a->nparams; i++) {
        const char *k = a->params[i].key, *v = a->params[i].value;
        if (!strcmp(k, "weights")) {
            st->path = v;
        } else if (!strcmp(k, "device") && !strcmp(v, "auto")) {
            auto_device = true;
        } else if (!strcmp(k, "device")) {
            char *end;
            errno = 0;
            long d = strtol(v, &end, 10);
            if (!*v || strspn(v, "0123456789") != strlen(v) || *end || errno || d > 1024) {
                st->err = std::string("cuda: device = \"") + v + "\": expected a device ordinal or auto";
                return refuse(st, err, errlen, BB_EINVAL);
            }
            st->device = int(d);
        } else if (!strcmp(k, "graph")) {
            if (strcmp(v, "on") && strcmp(v, "off")) {
                st->err = std::string("cuda: graph = \"") + v + "\": expected on or off";
                return refuse(st, err, errlen, BB_EINVAL);
            }
            st->use_graphs = !strcmp(v, "on");
        } else {
            st->err = std::string("cuda: unknown param \"") + k + "\" (known: weights, device, graph)";
            return refuse(st, err, errlen, BB_EINVAL);
        }
    }
    if (st->path.empty()) {
        st->err = "cuda: param.weights (a .bbdense file) is required";
        return refuse(st, err, errlen, BB_EINVAL);
    }
    char why[256];
    int rc = bbd_load(st->path.c_str(), &st->net, why, sizeof why);
    if (rc < 0) {
        st->err = std::string("cuda: ") + why;
        return refuse(st, err, errlen, rc);
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        st->err = std::string("cuda: no usable CUDA device: ") +
                  (e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return refuse(st, err, errlen, BB_EINVAL);
    }
    if (auto_device) st->device = int(a->instance % uint32_t(count));
    if (st->device >= count) {
        st->err = "cuda: device = " + std::to_string(st->device) + ", but only " +
                  std::to_string(count) + " CUDA device(s)";
        return refuse(st, err, errlen, BB_EINVAL);
    }
    if (!ok(cudaSetDevice(st->device), st, "cudaSetDevice")) return refuse(st, err, errlen, BB_EINVAL);
    for (uint32_t l = 0; l < st->net.nlayers; l++) {
        const bbd_layer &src = st->net.layers[l];
        Layer L{int(src.in), int(src.out), int(src.act), nullptr, nullptr};
        st->layers.push_back(L);
        Layer &d = st->layers.back();
        size_t wb = size_t(src.in) * src.out * sizeof(float), bb = src.out * sizeof(float);
        if (!ok(cudaMalloc(reinterpret_cast<void **>(&d.w), wb), st, "weights") ||
            !ok(cudaMalloc(reinterpret_cast<void **>(&d.b), bb), st, "weights") ||
            !ok(cudaMemcpy(d.w, src.w, wb, cudaMemcpyHostToDevice), st, "weights") ||
            !ok(cudaMemcpy(d.b, src.b, bb, cudaMemcpyHostToDevice), st, "weights"))
            return refuse(st, err, errlen, BB_ENOMEM);
    }
    for (Slot &s : st->slots) {
        if (!ok(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking), st, "stream") ||
            !okb(cublasCreate(&s.blas), st, "cublasCreate") ||
            !okb(cublasSetStream(s.blas, s.stream), st, "cublasSetStream") ||
            /* Full FP32, no TF32 (the default mode never lowers precision):
             * the blas backend's results within float rounding. */
            !okb(cublasSetMathMode(s.blas, CUBLAS_DEFAULT_MATH), st, "cublasSetMathMode") ||
            /* A workspace of our own: cuBLAS must not allocate while a graph
             * is being captured. */
            !ok(cudaMalloc(&s.workspace, kCublasWorkspace), st, "cuBLAS workspace") ||
            !okb(cublasSetWorkspace(s.blas, s.workspace, kCublasWorkspace), st, "cublasSetWorkspace") ||
            /* Every buffer a batch needs, now: none is allocated on the
             * batch path (the broker never sends more than max_batch_size). */
            !grow(st, s, a->max_batch_size ? a->max_batch_size : 64))
            return refuse(st, err, errlen, BB_ENOMEM);
        s.st = st;
    }
    say(st, BB_BACKEND_LOG_DEBUG,
        "cuda: device " + std::to_string(st->device) + ", " + std::to_string(kSlots) +
            " batches of up to " + std::to_string(st->slots[0].cap) + " rows in flight");
    *state = st;
    return 0;
}

int fail_batch(const std::string &msg, bb_batch *batch)
{
    if (batch->errmsg && batch->errmsg_cap) snprintf(batch->errmsg, batch->errmsg_cap, "%s", msg.c_str());
    for (uint32_t i = 0; i < batch->n; i++) batch->outputs[i].len = 0;
    return BB_EBACKEND;
}

/* The requests that can run (exact input size, room for the output); the
 * others fail alone. */
void check_rows(const State *st, Slot &s, bb_batch *batch)
{
    size_t in_bytes = st->net.in_dim * sizeof(float), out_bytes = st->net.out_dim * sizeof(float);
    s.valid.clear();
    for (uint32_t i = 0; i < batch->n; i++) {
        bb_outbuf &o = batch->outputs[i];
        o.len = 0;
        if (batch->inputs[i].len != in_bytes) o.status = BB_EINVAL;
        else if (o.cap < out_bytes) o.status = BB_ETOOBIG;
        else s.valid.push_back(i);
    }
}

/* A free slot: the broker keeps at most kSlots batches in flight, so one is
 * free whenever it submits. */
Slot *free_slot(State *st)
{
    for (int k = 0; k < kSlots; k++) {
        Slot &s = st->slots[(st->next_slot + k) % kSlots];
        if (!s.busy.load(std::memory_order_acquire)) {
            st->next_slot = (st->next_slot + k + 1) % kSlots;
            return &s;
        }
    }
    return nullptr;
}

int cuda_process(void *state, bb_batch *batch) noexcept
{
    State *st = static_cast<State *>(state);
    try {
        Slot *sp = free_slot(st);
        if (!sp) return fail_batch("cuda: process() while both slots are busy", batch);
        Slot &s = *sp;
        check_rows(st, s, batch);
        if (s.valid.empty()) return 0;
        if (!ok(cudaSetDevice(st->device), st, "cudaSetDevice")) return fail_batch(st->err, batch);
        bool launched = launch_batch(st, s, batch);
        /* Leave the stream idle for the next batch even after a failed
         * launch (a sticky error stays and fails every batch). */
        cudaError_t e = cudaStreamSynchronize(s.stream);
        if (!launched || !ok(e, st, "batch")) return fail_batch(st->err, batch);
        finish(st, s, batch);
        return 0;
    } catch (const std::exception &e) {
        return fail_batch(std::string("cuda: ") + e.what(), batch);
    }
}

/* The stream reached the batch's end (or failed): hand it back. A stream
 * callback (cudaStreamAddCallback, not cudaLaunchHostFunc, which is not
 * called after a device error and would leave the batch in flight forever)
 * must not call CUDA: only host copies here. The slot is free before the
 * broker learns the batch is done, and untouched after. */
void CUDART_CB stream_done(cudaStream_t, cudaError_t status, void *arg)
{
    Slot &s = *static_cast<Slot *>(arg);
    bb_batch *batch = s.batch;
    int rc = 0;
    if (status == cudaSuccess) {
        finish(s.st, s, batch);
    } else {
        rc = fail_batch(std::string("cuda: batch: ") + cudaGetErrorString(status), batch);
    }
    s.batch = nullptr;
    s.busy.store(false, std::memory_order_release);
    batch->complete(batch, rc);
}

int cuda_submit(void *state, bb_batch *batch) noexcept
{
    State *st = static_cast<State *>(state);
    try {
        Slot *sp = free_slot(st);
        if (!sp) return fail_batch("cuda: more batches in flight than max_inflight", batch);
        Slot &s = *sp;
        check_rows(st, s, batch);
        if (s.valid.empty()) {
            batch->complete(batch, 0); /* nothing to run: done at once */
            return 0;
        }
        if (!ok(cudaSetDevice(st->device), st, "cudaSetDevice")) return fail_batch(st->err, batch);
        s.batch = batch;
        s.busy.store(true, std::memory_order_relaxed);
        if (!launch_batch(st, s, batch) ||
            !ok(cudaStreamAddCallback(s.stream, stream_done, &s, 0), st, "stream callback")) {
            /* Nothing of this batch may still run when the broker fails it. */
            cudaStreamSynchronize(s.stream);
            s.batch = nullptr;
            s.busy.store(false, std::memory_order_release);
            return fail_batch(st->err, batch);
        }
        return 0;
    } catch (const std::exception &e) {
        return fail_batch(std::string("cuda: ") + e.what(), batch);
    }
}

void cuda_fini(void *state) noexcept
{
    destroy(static_cast<State *>(state));
}

/* Registration takes milliseconds (4 to 11 ms for 16 MiB on an H100). The
 * broker calls it from its registration thread, never concurrently with
 * another registration, but while batches of other clients run: the driver
 * call runs outside g_regions_mu, which batches take for their lookups, so
 * they never wait for it. A failed registration is reported and leaves the
 * segment's rows to the staging path. */
int cuda_register(void *state, const bb_segment *seg) noexcept
{
    State *st = static_cast<State *>(state);
    try {
        {
            std::lock_guard<std::mutex> lock(g_regions_mu);
            auto it = g_regions.find(seg->id);
            if (it != g_regions.end()) {
                it->second.refs++;
                return 0;
            }
        }
        if (cudaSetDevice(st->device) != cudaSuccess) {
            cudaGetLastError();
            return BB_ESYS;
        }
        bool owned = true;
        cudaError_t e = cudaHostRegister(seg->base, seg->len,
                                         cudaHostRegisterMapped | cudaHostRegisterPortable);
        if (e == cudaErrorHostMemoryAlreadyRegistered) {
            cudaGetLastError(); /* not sticky, but clear it for the next check */
            owned = false;
        } else if (e != cudaSuccess) {
            cudaGetLastError();
            say(st, BB_BACKEND_LOG_WARN,
                std::string("cuda: cudaHostRegister of segment ") + std::to_string(seg->id) +
                    " failed (" + cudaGetErrorString(e) + "): its rows are staged");
            return BB_ESYS;
        }
        void *dev = nullptr;
        if (cudaHostGetDevicePointer(&dev, seg->base, 0) != cudaSuccess) {
            cudaGetLastError();
            if (owned) cudaHostUnregister(seg->base);
            return BB_ESYS;
        }
        std::lock_guard<std::mutex> lock(g_regions_mu);
        g_regions.emplace(seg->id, Region{reinterpret_cast<uintptr_t>(seg->base), seg->len,
                                          static_cast<char *>(dev), 1, owned});
        return 0;
    } catch (...) {
        return BB_ENOMEM;
    }
}

/* The broker calls this once no batch holds a row of the segment. Out of
 * the table first, then (with the last reference) the driver call. */
void cuda_unregister(void *state, const bb_segment *seg) noexcept
{
    State *st = static_cast<State *>(state);
    try {
        bool release = false;
        {
            std::lock_guard<std::mutex> lock(g_regions_mu);
            auto it = g_regions.find(seg->id);
            if (it == g_regions.end()) return; /* its registration failed */
            if (--it->second.refs == 0) {
                release = it->second.owned;
                g_regions.erase(it);
            }
        }
        if (release) {
            cudaSetDevice(st->device);
            cudaHostUnregister(seg->base);
            cudaGetLastError();
        }
    } catch (...) {
    }
}

bb_backend_ops make_ops()
{
    bb_backend_ops ops{};
    ops.abi_version = BB_BACKEND_ABI_VERSION;
    ops.struct_size = sizeof(bb_backend_ops);
    ops.name = "cuda";
    ops.hardware = BB_BACKEND_HW_GPU;
    ops.init2 = cuda_init2;
    ops.process = cuda_process;
    ops.submit = cuda_submit;
    ops.max_inflight = kSlots;
    ops.fini = cuda_fini;
    ops.register_segment = cuda_register;
    ops.unregister_segment = cuda_unregister;
    return ops;
}

const bb_backend_ops cuda_ops = make_ops();

} // namespace

#ifndef BB_CUDA_ALONE_MAIN
extern "C" BB_BACKEND_EXPORT const bb_backend_ops *bb_backend_entry(void)
{
    return &cuda_ops;
}
#else
/* bb-cuda-alone (bench/): the network alone on device-resident inputs, the
 * reference the broker's GPU rows are held against (docs/performance.md):
 * per batch size, the GEMMs and activations only (no gather, no scatter),
 * direct and as a graph, one batch at a time (launch, wait): its time per
 * batch, requests/s, and the percentiles of each batch's launch-to-end.
 *   bb-cuda-alone WEIGHTS [DEVICE] [SECONDS_PER_SIZE] */
#include <chrono>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bb-cuda-alone WEIGHTS.bbdense [DEVICE] [SECONDS]\n");
        return 2;
    }
    double secs = argc > 3 ? atof(argv[3]) : 1.0;
    bb_param p[2] = {{"weights", argv[1]}, {"device", argc > 2 ? argv[2] : "0"}};
    bb_init_args a{};
    a.size = sizeof a;
    a.instances = 1;
    a.numa_node = -1;
    a.max_batch_size = 64;
    a.model = "bb-cuda-alone";
    a.params = p;
    a.nparams = 2;
    a.log = [](void *, int, const char *msg) { fprintf(stderr, "bb-cuda-alone: %s\n", msg); };
    void *vs = nullptr;
    char err[256];
    if (cuda_init2(&a, &vs, err, sizeof err) < 0) {
        fprintf(stderr, "bb-cuda-alone: %s\n", err);
        return 1;
    }
    State *st = static_cast<State *>(vs);
    Slot &s = st->slots[0];
    if (!grow(st, s, 64)) {
        fprintf(stderr, "bb-cuda-alone: %s\n", st->err.c_str());
        return 1;
    }
    std::vector<float> host(size_t(64) * st->net.in_dim);
    for (size_t i = 0; i < host.size(); i++) host[i] = float(i % 255) / 255.0f;
    cudaMemcpy(s.x, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
    printf("batch,graph,us_per_batch,requests_per_s,p50_us,p99_us\n");
    for (uint32_t n : {1u, 8u, 16u, 32u, 64u}) {
        for (int graph = 0; graph < 2; graph++) {
            /* Layers only: the device-resident matrix s.x is the input. */
            auto layers = [&](void) {
                const float one = 1.0f, zero = 0.0f;
                const float *x = s.x;
                float *y = s.a, *spare = s.b;
                for (const Layer &L : st->layers) {
                    cublasSgemm(s.blas, CUBLAS_OP_T, CUBLAS_OP_N, L.out, int(n), L.in, &one, L.w, L.in, x,
                                L.in, &zero, y, L.out);
                    if (L.act == BBD_ACT_SOFTMAX)
                        bias_softmax<<<n, 256, 0, s.stream>>>(y, L.b, L.out);
                    else
                        bias_act<<<unsigned((size_t(n) * L.out + 255) / 256), 256, 0, s.stream>>>(
                            y, L.b, int(n), L.out, L.act);
                    x = y;
                    y = spare;
                    spare = const_cast<float *>(x);
                }
            };
            cudaGraphExec_t exec = nullptr;
            if (graph) {
                cudaGraph_t g;
                cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal);
                layers();
                cudaStreamEndCapture(s.stream, &g);
                cudaGraphInstantiate(&exec, g, 0);
                cudaGraphDestroy(g);
            }
            uint64_t iters = 0;
            std::vector<float> lat; /* each batch's launch to its end, us */
            auto t0 = std::chrono::steady_clock::now();
            double el = 0;
            do {
                for (int k = 0; k < 100; k++) {
                    auto b0 = std::chrono::steady_clock::now();
                    if (graph) cudaGraphLaunch(exec, s.stream);
                    else layers();
                    cudaStreamSynchronize(s.stream);
                    auto b1 = std::chrono::steady_clock::now();
                    lat.push_back(std::chrono::duration<float, std::micro>(b1 - b0).count());
                }
                iters += 100;
                el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            } while (el < secs);
            std::sort(lat.begin(), lat.end());
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess) {
                fprintf(stderr, "bb-cuda-alone: %s\n", cudaGetErrorString(e));
                return 1;
            }
            printf("%u,%s,%.1f,%.0f,%.1f,%.1f\n", n, graph ? "on" : "off", el / double(iters) * 1e6,
                   double(iters) * n / el, double(lat[lat.size() / 2]), double(lat[lat.size() * 99 / 100]));
            if (exec) cudaGraphExecDestroy(exec);
        }
    }
    cuda_fini(st);
    return 0;
}
#endif

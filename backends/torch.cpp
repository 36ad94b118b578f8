/* torch backend: any TorchScript module on libtorch, one forward() per batch,
 * behind the C ABI of include/batchbroker/backend.h. docs/backends/torch.md.
 *
 * Params:
 *   model          path of the TorchScript file (required)
 *   input_shape    one request's input, e.g. 1,28,28 (required); the batch
 *                  tensor is [n, input_shape...]
 *   output_shape   one request's output, e.g. 10 (required); forward() must
 *                  return a tensor of [n, output_shape...]
 *   dtype          element type of the inputs: float32 (default), float64,
 *                  float16, bfloat16, int64, int32, int16, int8, uint8, bool
 *   output_dtype   element type written to the clients (default float32)
 *   threads        ATen intra-op threads of this instance (default 1)
 *   interop_threads  libtorch's process-wide inter-op pool, set once
 *   device         cpu (default) or cuda:N (needs a libtorch built with CUDA)
 *
 * Zero copy: when the requests' inputs lie at equal distances (the requests
 * of one client allocated in a row), the batch tensor is a strided view of
 * the clients' memory (from_blob with that distance as the batch stride);
 * otherwise the rows are gathered once into a tensor this instance keeps.
 * Integer inputs are always gathered: a model may index with them, and a
 * client that rewrote an index between the bounds check and its use could
 * make libtorch read out of bounds. Inputs are gathered, too, for a model
 * that writes its input (probed at init): the views are read-only client
 * memory. The output tensor's rows are copied straight into the clients'
 * output buffers.
 *
 * Every exception (c10::Error and anything else) is caught: at init it is a
 * refusal with the message. In process(), a batch whose forward() throws is
 * run again in halves, split until the rows that throw are found (isolate(),
 * within a budget of extra calls; one client's rows are not split): those
 * fail with BB_EBACKEND, the others are answered, so that one client's input
 * that makes the model raise fails no other client's request; where every
 * row fails, the batch fails with the message in batch->errmsg. Init also runs the model on a zero input of one and of
 * two requests and checks the output shape, so that a model that does not
 * fit its params is refused when the broker starts (--check), not at the
 * first request. */
#include <dlfcn.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include "batchbroker/backend.h"
#include "batchbroker/client.h"

namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxElems = int64_t(1) << 28;

struct DtypeName {
    const char *name;
    at::ScalarType type;
};

const DtypeName kDtypes[] = {
    {"float32", at::kFloat}, {"float64", at::kDouble}, {"float16", at::kHalf},
    {"bfloat16", at::kBFloat16}, {"int64", at::kLong}, {"int32", at::kInt},
    {"int16", at::kShort}, {"int8", at::kChar}, {"uint8", at::kByte}, {"bool", at::kBool},
};

struct State {
    torch::jit::Module module;
    std::string path;
    std::vector<int64_t> in_shape, out_shape;
    int64_t in_numel = 1, out_numel = 1;
    at::ScalarType in_type = at::kFloat, out_type = at::kFloat;
    size_t in_bytes = 0, out_bytes = 0;
    int threads = 1;
    torch::Device device{torch::kCPU};
    at::Tensor gather;             /* [cap, in_numel], grown on demand */
    bool copy_inputs = false;      /* forward() writes its input: never pass client memory */
    std::vector<uint32_t> valid;   /* indices of the batch's rows that forward() runs now */
    /* The broker's log, for requests failed alone (isolate()): at most a line
     * a second, with how many since the last. */
    void (*log)(void *, int, const char *) = nullptr;
    void *log_ctx = nullptr;
    uint64_t isolated_failures = 0, last_log_ns = 0;
};

void copy_msg(char *dst, size_t cap, const std::string &msg)
{
    if (dst && cap) snprintf(dst, cap, "%s", msg.c_str());
}

/* c10::Error messages run to many lines (a C++ backtrace; for an error inside
 * TorchScript, a traceback of the model's code with the error itself on the
 * last line). One line says what failed and fits the broker's 256-byte
 * message: the last non-empty one after a TorchScript traceback, else the
 * first. */
std::string one_line(const char *what)
{
    std::string s(what ? what : "unknown error");
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    if (s.rfind("The following operation failed in the TorchScript interpreter", 0) == 0) {
        size_t nl = s.rfind('\n');
        if (nl != std::string::npos) s.erase(0, nl + 1);
    } else {
        size_t nl = s.find('\n');
        if (nl != std::string::npos) s.resize(nl);
    }
    return s;
}

std::string error_text(const std::exception &e)
{
    if (auto *ce = dynamic_cast<const c10::Error *>(&e)) return one_line(ce->what_without_backtrace());
    return one_line(e.what());
}

std::string shape_text(at::IntArrayRef s)
{
    std::ostringstream o;
    o << '[';
    for (size_t i = 0; i < s.size(); i++) o << (i ? "," : "") << s[i];
    o << ']';
    return o.str();
}

bool parse_shape(const char *s, std::vector<int64_t> &out, int64_t &numel)
{
    out.clear();
    numel = 1;
    const char *p = s;
    while (*p) {
        if (*p < '0' || *p > '9') return false;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (errno || v <= 0 || v > kMaxElems || out.size() == 8) return false;
        out.push_back(v);
        numel *= v;
        if (numel > kMaxElems) return false;
        p = end;
        if (*p == ',') {
            p++;
            if (!*p) return false;
        } else if (*p) {
            return false;
        }
    }
    return !out.empty();
}

bool parse_dtype(const char *s, at::ScalarType &t)
{
    for (const auto &d : kDtypes)
        if (!strcmp(s, d.name)) {
            t = d.type;
            return true;
        }
    return false;
}

bool parse_int(const char *s, int min, int max, int &out)
{
    if (!*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 6) return false;
    long v = strtol(s, nullptr, 10);
    if (v < min || v > max) return false;
    out = static_cast<int>(v);
    return true;
}

/* OpenBLAS keeps one thread count for the whole process, in libopenblas.so.0
 * (the libblas.so.3 libtorch links is an interface over it). Left alone it
 * runs a pool as wide as the machine under every instance's GEMMs; set to 1
 * like the blas backend does, each instance's threads are its own. */
void openblas_single_thread()
{
    void *h = dlopen("libopenblas.so.0", RTLD_LAZY | RTLD_NOLOAD);
    if (!h) return; /* libtorch on another BLAS */
    if (void *sym = dlsym(h, "openblas_set_num_threads")) {
        void (*set)(int);
        memcpy(&set, &sym, sizeof set);
        set(1);
    }
    dlclose(h);
}

/* ATen's intra-op thread count is a per-thread OpenMP setting, which the
 * executor thread (not the thread that ran init) must make for itself.
 * at::get_num_threads() first lets libtorch do its own lazy per-thread
 * initialisation, which would otherwise reset ours later. */
void ensure_threads(const State &st)
{
    if (at::get_num_threads() != st.threads) at::set_num_threads(st.threads);
}

std::string dtype_name(at::ScalarType t)
{
    for (const auto &d : kDtypes)
        if (d.type == t) return d.name;
    return "?";
}

/* Run forward on [n, in_shape...] and check the result's shape; the tensor
 * on the CPU, contiguous, of out_type. Throws std::runtime_error with a
 * message on a bad output. */
at::Tensor run(State &st, const at::Tensor &input, int64_t n)
{
    std::vector<torch::jit::IValue> args{st.device.is_cpu() ? input : input.to(st.device)};
    torch::jit::IValue r = st.module.forward(args);
    if (!r.isTensor())
        throw std::runtime_error("forward() returned a " + r.tagKind() + ", not a tensor");
    at::Tensor y = r.toTensor();
    std::vector<int64_t> want{n};
    want.insert(want.end(), st.out_shape.begin(), st.out_shape.end());
    if (y.sizes() != at::IntArrayRef(want))
        throw std::runtime_error("forward() returned " + shape_text(y.sizes()) + " for input " +
                                 shape_text(input.sizes()) + ", expected " + shape_text(want) +
                                 " (param.output_shape)");
    return y.to(torch::kCPU, st.out_type).contiguous();
}

void destroy(State *st)
{
    delete st;
}

/* Whether forward() writes into its input (x.mul_(2), x.sub_(m).div_(s),
 * ReLU(inplace=True) on it): the input views are read-only client memory,
 * which a zero-copy batch tensor would hand it. Probed on an ordinary tensor
 * of one request and of two, outside InferenceMode (whose tensors keep no
 * version counter): an in-place op bumps the counter; a write that bypasses
 * it (through .data) still changes the values. Throws what forward()
 * throws. */
bool writes_input(State &st)
{
    at::NoGradGuard no_grad;
    for (int64_t n = 1; n <= 2; n++) {
        std::vector<int64_t> shape{n};
        shape.insert(shape.end(), st.in_shape.begin(), st.in_shape.end());
        at::Tensor x = at::full(shape, 0.5, at::TensorOptions().dtype(st.in_type));
        const at::Tensor before = x.clone();
        const auto version = x._version();
        run(st, x, n);
        if (x._version() != version || !x.equal(before)) return true;
    }
    return false;
}

int torch_init2(const bb_init_args *a, void **state, char *err, size_t errlen) noexcept
{
    State *st = nullptr;
    try {
        st = new State();
        const char *in_shape = nullptr, *out_shape = nullptr, *device = "cpu";
        int interop = 0;
        for (size_t i = 0; i < a->nparams; i++) {
            const char *k = a->params[i].key, *v = a->params[i].value;
            bool ok = true;
            if (!strcmp(k, "model")) st->path = v;
            else if (!strcmp(k, "input_shape")) in_shape = v;
            else if (!strcmp(k, "output_shape")) out_shape = v;
            else if (!strcmp(k, "dtype")) ok = parse_dtype(v, st->in_type);
            else if (!strcmp(k, "output_dtype")) ok = parse_dtype(v, st->out_type);
            else if (!strcmp(k, "threads")) ok = parse_int(v, 1, kMaxThreads, st->threads);
            else if (!strcmp(k, "interop_threads")) ok = parse_int(v, 1, kMaxThreads, interop);
            else if (!strcmp(k, "device")) device = v;
            else {
                copy_msg(err, errlen,
                         std::string("torch: unknown param \"") + k +
                             "\" (known: model, input_shape, output_shape, dtype, output_dtype, "
                             "threads, interop_threads, device)");
                destroy(st);
                return BB_EINVAL;
            }
            if (!ok) {
                std::string what = !strcmp(k, "dtype") || !strcmp(k, "output_dtype")
                                       ? "float32, float64, float16, bfloat16, int64, int32, "
                                         "int16, int8, uint8 or bool"
                                       : "an integer, 1 to 256";
                copy_msg(err, errlen, std::string("torch: ") + k + " = \"" + v + "\": expected " + what);
                destroy(st);
                return BB_EINVAL;
            }
        }
        if (st->path.empty() || !in_shape || !out_shape) {
            copy_msg(err, errlen,
                     "torch: param.model, param.input_shape and param.output_shape are required");
            destroy(st);
            return BB_EINVAL;
        }
        if (!parse_shape(in_shape, st->in_shape, st->in_numel) ||
            !parse_shape(out_shape, st->out_shape, st->out_numel)) {
            copy_msg(err, errlen,
                     std::string("torch: input_shape = \"") + in_shape + "\", output_shape = \"" +
                         out_shape + "\": expected up to 8 positive dimensions like 1,28,28");
            destroy(st);
            return BB_EINVAL;
        }
        st->in_bytes = size_t(st->in_numel) * c10::elementSize(st->in_type);
        st->out_bytes = size_t(st->out_numel) * c10::elementSize(st->out_type);

        try {
            st->device = torch::Device(device);
        } catch (const std::exception &e) {
            copy_msg(err, errlen, std::string("torch: device = \"") + device +
                                      "\": expected cpu or cuda:N (" + error_text(e) + ")");
            destroy(st);
            return BB_EINVAL;
        }
        if (st->device.is_cuda()) {
            if (!torch::cuda::is_available()) {
                copy_msg(err, errlen,
                         std::string("torch: device = ") + device +
                             ", but this libtorch has no CUDA (it was built without it, as "
                             "Debian's libtorch is, or no GPU is visible)");
                destroy(st);
                return BB_EINVAL;
            }
            int64_t count = int64_t(torch::cuda::device_count());
            if (st->device.has_index() && st->device.index() >= count) {
                copy_msg(err, errlen, std::string("torch: device = ") + device + ", but only " +
                                          std::to_string(count) + " CUDA device(s)");
                destroy(st);
                return BB_EINVAL;
            }
        } else if (!st->device.is_cpu()) {
            copy_msg(err, errlen, std::string("torch: device = \"") + device +
                                      "\": expected cpu or cuda:N");
            destroy(st);
            return BB_EINVAL;
        }

        if (access(st->path.c_str(), R_OK) != 0) {
            copy_msg(err, errlen, "torch: " + st->path + ": " + strerror(errno));
            destroy(st);
            return BB_EINVAL;
        }
        /* libtorch's open of a FIFO would wait for a writer forever (and
         * through SIGTERM): only a regular file is read. */
        struct stat sb;
        if (stat(st->path.c_str(), &sb) != 0 || !S_ISREG(sb.st_mode)) {
            copy_msg(err, errlen, "torch: " + st->path + ": not a regular file");
            destroy(st);
            return BB_EINVAL;
        }
        if (interop) {
            /* Process-wide, and throws once the pool has started or when set
             * twice: the first instance that asks sets it. */
            static std::once_flag once;
            std::call_once(once, [interop, a] {
                try {
                    at::set_num_interop_threads(interop);
                } catch (const std::exception &e) {
                    a->log(a->log_ctx, BB_BACKEND_LOG_WARN,
                           ("torch: interop_threads = " + std::to_string(interop) +
                            " not applied (libtorch's inter-op pool had started): " + error_text(e))
                               .c_str());
                }
            });
        }
        openblas_single_thread();
        st->log = a->log;
        st->log_ctx = a->log_ctx;
        try {
            st->module = torch::jit::load(st->path, st->device);
            st->module.eval();
        } catch (const std::exception &e) {
            copy_msg(err, errlen, "torch: cannot load TorchScript file " + st->path + ": " +
                                      error_text(e));
            destroy(st);
            return BB_EINVAL;
        }
        /* The model must take [n, input_shape...] of dtype and give
         * [n, output_shape...], for one request and for two. */
        int64_t n = 1; /* the batch size that failed, for the message */
        try {
            c10::InferenceMode guard;
            ensure_threads(*st);
            for (; n <= 2; n++) {
                std::vector<int64_t> shape{n};
                shape.insert(shape.end(), st->in_shape.begin(), st->in_shape.end());
                run(*st, at::zeros(shape, at::TensorOptions().dtype(st->in_type)), n);
            }
        } catch (const std::exception &e) {
            std::vector<int64_t> shape{n};
            shape.insert(shape.end(), st->in_shape.begin(), st->in_shape.end());
            copy_msg(err, errlen, "torch: " + st->path + " does not fit input " +
                                      shape_text(shape) + " " + dtype_name(st->in_type) +
                                      ", output_shape " + out_shape + ": " + error_text(e));
            destroy(st);
            return BB_EINVAL;
        }
        /* Only float inputs on the CPU are ever passed in place (integers are
         * gathered, a GPU gets a copy). A model that throws on this input but
         * not on zeros cannot be told apart: copied too. */
        if (at::isFloatingType(st->in_type) && st->device.is_cpu()) {
            std::string why;
            try {
                st->copy_inputs = writes_input(*st);
                if (st->copy_inputs) why = "the model writes its input";
            } catch (const std::exception &e) {
                st->copy_inputs = true;
                why = "the write probe failed (" + error_text(e) + ")";
            }
            if (st->copy_inputs)
                a->log(a->log_ctx, BB_BACKEND_LOG_INFO,
                       ("torch: " + st->path + ": " + why + ": inputs are copied").c_str());
        }
        a->log(a->log_ctx, BB_BACKEND_LOG_INFO,
               ("torch: " + st->path + " on " + st->device.str() + ", " +
                std::to_string(st->threads) + " intra-op thread(s)")
                   .c_str());
        *state = st;
        return 0;
    } catch (const std::bad_alloc &) {
        copy_msg(err, errlen, "torch: out of memory");
        destroy(st);
        return BB_ENOMEM;
    } catch (const std::exception &e) {
        copy_msg(err, errlen, "torch: " + error_text(e));
        destroy(st);
        return BB_EINVAL;
    } catch (...) {
        copy_msg(err, errlen, "torch: unknown exception during init");
        destroy(st);
        return BB_EINVAL;
    }
}

/* The batch's valid inputs as one [m, in_shape...] tensor: a strided view of
 * the clients' memory when they are equally spaced, else a gathered copy. */
at::Tensor input_tensor(State &st, const bb_batch *batch)
{
    const int64_t m = int64_t(st.valid.size());
    const size_t esize = c10::elementSize(st.in_type);
    std::vector<int64_t> sizes{m};
    sizes.insert(sizes.end(), st.in_shape.begin(), st.in_shape.end());
    auto opts = at::TensorOptions().dtype(st.in_type);

    /* Addresses as integers: the rows may lie in different clients' segments. */
    auto addr = [&](int64_t i) { return uintptr_t(batch->inputs[st.valid[size_t(i)]].ptr); };
    const uintptr_t first = addr(0);
    bool inplace = !st.copy_inputs && at::isFloatingType(st.in_type) && first % esize == 0;
    uintptr_t stride = st.in_bytes;
    if (inplace && m > 1) {
        inplace = addr(1) > first;
        stride = addr(1) - first;
        inplace = inplace && stride >= st.in_bytes && stride % esize == 0 &&
                  stride <= uintptr_t(INT64_MAX);
        for (int64_t i = 2; inplace && i < m; i++) inplace = addr(i) == first + uintptr_t(i) * stride;
    }
    if (inplace) {
        std::vector<int64_t> strides(sizes.size());
        int64_t s = 1;
        for (size_t d = sizes.size() - 1; d > 0; d--) {
            strides[d] = s;
            s *= sizes[d];
        }
        strides[0] = int64_t(stride) / int64_t(esize);
        /* from_blob never frees, nor writes (a model that writes its input
         * never gets here: copy_inputs): the cast from the const view only
         * satisfies its signature. */
        return torch::from_blob(reinterpret_cast<void *>(first), sizes, strides, opts);
    }
    if (!st.gather.defined() || st.gather.size(0) < m) {
        int64_t cap = 16;
        while (cap < m) cap *= 2;
        st.gather = at::empty({cap, st.in_numel}, opts);
    }
    auto *dst = static_cast<char *>(st.gather.data_ptr());
    for (int64_t i = 0; i < m; i++)
        memcpy(dst + size_t(i) * st.in_bytes, batch->inputs[st.valid[size_t(i)]].ptr, st.in_bytes);
    return st.gather.narrow(0, 0, m).view(sizes);
}

/* One forward over the batch's rows `rows`, their outputs written. */
void run_rows(State &st, bb_batch *batch, const std::vector<uint32_t> &rows)
{
    st.valid = rows;
    const int64_t m = int64_t(rows.size());
    at::Tensor y = run(st, input_tensor(st, batch), m);
    const auto *src = static_cast<const char *>(y.data_ptr());
    for (int64_t r = 0; r < m; r++) {
        bb_outbuf *o = &batch->outputs[rows[size_t(r)]];
        memcpy(o->ptr, src + size_t(r) * st.out_bytes, st.out_bytes);
        o->len = st.out_bytes;
    }
}

/* Whether rows all belong to one client: one segment, not the broker's own
 * memory (segment 0: a deduplicated request's private copy, anyone's). */
bool one_client(const bb_batch *batch, const std::vector<uint32_t> &rows)
{
    if (!batch->segments || batch->segments[rows[0]] == 0) return false;
    for (uint32_t i : rows)
        if (batch->segments[i] != batch->segments[rows[0]]) return false;
    return true;
}

void fail_rows(bb_batch *batch, const std::vector<uint32_t> &rows)
{
    for (uint32_t i : rows) {
        batch->outputs[i].status = BB_EBACKEND;
        batch->outputs[i].len = 0;
    }
}

/* One forward over rows, as run_rows; false, with the first message kept in
 * err, where forward() threw. Out of memory is thrown on: not retried. */
bool try_rows(State &st, bb_batch *batch, const std::vector<uint32_t> &rows, std::string &err)
{
    try {
        run_rows(st, batch, rows);
        return true;
    } catch (const std::bad_alloc &) {
        throw;
    } catch (const c10::OutOfMemoryError &) {
        throw;
    } catch (const std::exception &e) {
        if (err.empty()) err = error_text(e);
        return false;
    }
}

/* Run rows; where forward() throws, find the rows that make it throw: a
 * model that raises on some inputs (an assertion on their values, say) must
 * fail only the requests that carry them, not the other clients' requests
 * batched with them. Each half is run again, and a half that throws is split
 * in turn, except where all its rows are one client's (they fail together:
 * that client's inputs cost the others nothing more). Each run of a half
 * spends one of *budget; once it is spent, a half not yet run fails whole,
 * unrun. A failed row gets BB_EBACKEND. Returns how many rows failed. */
size_t settle(State &st, bb_batch *batch, const std::vector<uint32_t> &rows, std::string &err,
              unsigned *budget)
{
    if (try_rows(st, batch, rows, err)) return 0;
    if (rows.size() == 1 || one_client(batch, rows)) {
        fail_rows(batch, rows);
        return rows.size();
    }
    /* Copies, made before anything runs again: run_rows rewrites st.valid,
     * which rows may be. */
    const size_t mid = rows.size() / 2;
    const std::vector<uint32_t> halves[2] = {
        std::vector<uint32_t>(rows.begin(), rows.begin() + long(mid)),
        std::vector<uint32_t>(rows.begin() + long(mid), rows.end())};
    size_t failed = 0;
    for (const auto &part : halves) {
        if (*budget == 0) {
            fail_rows(batch, part);
            failed += part.size();
        } else {
            --*budget;
            failed += settle(st, batch, part, err, budget);
        }
    }
    return failed;
}

uint64_t mono_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
}

int torch_process(void *state, bb_batch *batch) noexcept
{
    auto *st = static_cast<State *>(state);
    std::string err;
    try {
        st->valid.clear(); /* its capacity serves every batch */
        for (uint32_t i = 0; i < batch->n; i++) {
            bb_outbuf *o = &batch->outputs[i];
            o->len = 0;
            if (batch->inputs[i].len != st->in_bytes) o->status = BB_EINVAL;
            else if (o->cap < st->out_bytes) o->status = BB_ETOOBIG;
            else st->valid.push_back(i);
        }
        if (st->valid.empty()) return 0;
        ensure_threads(*st);
        c10::InferenceMode guard;
        /* Extra forward calls: enough to find two bad rows among the batch
         * (each costs two calls a level), and no more, whatever the inputs. */
        const size_t n = st->valid.size();
        unsigned levels = 0;
        while ((size_t(1) << levels) < n) levels++;
        unsigned budget = 4 * levels;
        size_t failed = settle(*st, batch, st->valid, err, &budget);
        if (failed == 0) return 0;
        /* A batch failure gives every request BB_EBACKEND: only where no
         * request failed alone (a wrong size) with its own code. */
        if (failed == n && n == batch->n) {
            copy_msg(batch->errmsg, batch->errmsg_cap, "torch: " + err);
            for (uint32_t i = 0; i < batch->n; i++) batch->outputs[i].len = 0;
            return BB_EBACKEND;
        }
        st->isolated_failures += failed;
        uint64_t now = mono_ns();
        if (st->log && now - st->last_log_ns >= 1000000000ull) {
            st->log(st->log_ctx, BB_BACKEND_LOG_WARN,
                    ("torch: forward() failed on " + std::to_string(st->isolated_failures) +
                     " request(s) run apart from their batches since the last such line, the "
                     "others answered; e.g. " + err)
                        .c_str());
            st->isolated_failures = 0;
            st->last_log_ns = now;
        }
        return 0;
    } catch (const std::bad_alloc &) {
        copy_msg(batch->errmsg, batch->errmsg_cap, "torch: out of memory");
    } catch (const std::exception &e) {
        copy_msg(batch->errmsg, batch->errmsg_cap, "torch: " + error_text(e));
    } catch (...) {
        copy_msg(batch->errmsg, batch->errmsg_cap, "torch: unknown exception in forward()");
    }
    for (uint32_t i = 0; i < batch->n; i++) batch->outputs[i].len = 0;
    return BB_EBACKEND;
}

void torch_fini(void *state) noexcept
{
    try {
        destroy(static_cast<State *>(state));
    } catch (...) {
    }
}

bb_backend_ops make_ops()
{
    bb_backend_ops ops{};
    ops.abi_version = BB_BACKEND_ABI_VERSION;
    ops.struct_size = sizeof(bb_backend_ops);
    ops.name = "torch";
    ops.hardware = BB_BACKEND_HW_CPU;
    ops.init2 = torch_init2;
    ops.process = torch_process;
    ops.fini = torch_fini;
    return ops;
}

const bb_backend_ops torch_ops = make_ops();

} // namespace

extern "C" BB_BACKEND_EXPORT const bb_backend_ops *bb_backend_entry(void)
{
    return &torch_ops;
}

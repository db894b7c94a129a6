/*
 * The sparse response's product kernels, compiled when the package is installed.
 *
 * They are the numba kernels of sparse.py (_gather, _scatter, _scatter_rows) in C: loading this
 * module costs about a millisecond, where the first numba kernel of a process costs about 0.3 s
 * (numba loads its typing and target registries even for a kernel from its cache). Each call
 * checks the arrays' dtypes, shapes and row bounds, then runs with the GIL released, so the
 * callers run one row range per thread.
 *
 * On x86-64 with GCC the loops are compiled for x86-64-v4 (AVX-512), v3 (AVX2) and the baseline,
 * and the loader picks the best the CPU has (target_clones).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

#if defined(_OPENMP) || defined(__GNUC__)
#define SIMD_SUM _Pragma("omp simd reduction(+:a)")
#else
#define SIMD_SUM
#endif

enum kind { K_BAD, K_U16, K_I32, K_I64, K_F32, K_F64 };

static enum kind buffer_kind(const Py_buffer *b)
{
    const char *f = b->format ? b->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') {
#if PY_LITTLE_ENDIAN
        f++;
#else
        if (*f == '<') return K_BAD;
        f++;
#endif
    }
    if (f[0] == '\0' || f[1] != '\0') return K_BAD;
    switch (f[0]) {
    case 'H': return b->itemsize == 2 ? K_U16 : K_BAD;
    case 'i': case 'l': case 'q':
        return b->itemsize == 4 ? K_I32 : b->itemsize == 8 ? K_I64 : K_BAD;
    case 'f': return b->itemsize == 4 ? K_F32 : K_BAD;
    case 'd': return b->itemsize == 8 ? K_F64 : K_BAD;
    default: return K_BAD;
    }
}

static const char *kind_name(enum kind k)
{
    static const char *names[] = {"other", "uint16", "int32", "int64", "float32", "float64"};
    return names[k];
}

/* A 2-D int64 array of row bounds, any strides (a view of ptr[:, :-1] or ptr[:, 1:]). */
typedef struct { const char *base; Py_ssize_t n0, n1, s0, s1; } bounds2d;

static inline int64_t bound_at(const bounds2d *b, Py_ssize_t i, Py_ssize_t j)
{
    return *(const int64_t *)(b->base + i * b->s0 + j * b->s1);
}

/* ---- gather: out[k, r] += Σ_n val[n] · vec[k·stride + idx[n]] over n in start[k, r]:end[k, r] */

#define GATHER(NAME, IT, VT)                                                                     \
CLONES static int NAME(const bounds2d *st, const bounds2d *en, const IT *idx, const VT *val,    \
                       const VT *vec, Py_ssize_t stride, Py_ssize_t q0, Py_ssize_t q1,          \
                       int64_t nnz, VT *out)                                                    \
{                                                                                               \
    const Py_ssize_t n_rows = st->n1;                                                           \
    int bad = 0;                                                                                \
    if (q1 <= q0) return 0;                                                                     \
    for (Py_ssize_t k = q0 / n_rows; k <= (q1 - 1) / n_rows; k++) {                             \
        const VT *v = vec + k * stride;                                                         \
        Py_ssize_t r0 = q0 - k * n_rows, r1 = q1 - k * n_rows;                                  \
        if (r0 < 0) r0 = 0;                                                                     \
        if (r1 > n_rows) r1 = n_rows;                                                           \
        for (Py_ssize_t r = r0; r < r1; r++) {                                                  \
            const int64_t s = bound_at(st, k, r), m = bound_at(en, k, r) - s;                   \
            if (s < 0 || m < 0 || s + m > nnz) { bad = 1; continue; }                           \
            const IT *ii = idx + s;                                                             \
            const VT *vv = val + s;                                                             \
            VT a = out[k * n_rows + r];                                                         \
            SIMD_SUM                                                                            \
            for (int64_t n = 0; n < m; n++) a += vv[n] * v[ii[n]];                              \
            out[k * n_rows + r] = a;                                                            \
        }                                                                                       \
    }                                                                                           \
    return bad;                                                                                 \
}

GATHER(gather_u16_f32, uint16_t, float)
GATHER(gather_u16_f64, uint16_t, double)
GATHER(gather_i32_f32, int32_t, float)
GATHER(gather_i32_f64, int32_t, double)

/* ---- scatter: out[idx[n]] += val[n] · vec[q] over n in start[q]:end[q], q0 ≤ q < q1, vec[q] ≠ 0 */

#define SCATTER(NAME, IT, VT)                                                                    \
CLONES static int NAME(const bounds2d *st, const bounds2d *en, const IT *idx, const VT *val,    \
                       const VT *vec, Py_ssize_t q0, Py_ssize_t q1, int64_t nnz, double *out)   \
{                                                                                               \
    const Py_ssize_t w = st->n1;                                                                \
    int bad = 0;                                                                                \
    for (Py_ssize_t q = q0; q < q1; q++) {                                                      \
        const double c = (double)vec[q];                                                        \
        if (c == 0) continue;                                                                   \
        const Py_ssize_t k = q / w, t = q - k * w;                                              \
        const int64_t s = bound_at(st, k, t), e = bound_at(en, k, t);                           \
        if (s < 0 || e < s || e > nnz) { bad = 1; continue; }                                   \
        for (int64_t n = s; n < e; n++) out[idx[n]] += (double)val[n] * c;                      \
    }                                                                                           \
    return bad;                                                                                 \
}

SCATTER(scatter_u16_f32, uint16_t, float)
SCATTER(scatter_u16_f64, uint16_t, double)
SCATTER(scatter_i32_f32, int32_t, float)
SCATTER(scatter_i32_f64, int32_t, double)

/* ---- scatter_rows: out[k, idx[n]] += val[n] · coef[t] over n in ptr[k, rows[t]]:ptr[k, rows[t]+1] */

#define SCATTER_ROWS(NAME, IT, VT)                                                               \
static void NAME(const bounds2d *ptr, const IT *idx, const VT *val, const int64_t *rows,        \
                 const double *coef, Py_ssize_t n_t, Py_ssize_t width, double *out)             \
{                                                                                               \
    for (Py_ssize_t t = 0; t < n_t; t++) {                                                      \
        const int64_t j = rows[t];                                                              \
        const double c = coef[t];                                                               \
        for (Py_ssize_t k = 0; k < ptr->n0; k++) {                                              \
            const int64_t s = bound_at(ptr, k, j), e = bound_at(ptr, k, j + 1);                 \
            double *o = out + k * width;                                                        \
            for (int64_t n = s; n < e; n++) o[idx[n]] += (double)val[n] * c;                    \
        }                                                                                       \
    }                                                                                           \
}

SCATTER_ROWS(scatter_rows_u16_f32, uint16_t, float)
SCATTER_ROWS(scatter_rows_u16_f64, uint16_t, double)
SCATTER_ROWS(scatter_rows_i32_f32, int32_t, float)
SCATTER_ROWS(scatter_rows_i32_f64, int32_t, double)

/* ---- argument handling ------------------------------------------------------------------ */

#define N_BUF 6

typedef struct { Py_buffer b[N_BUF]; int n; } buffers;

static void release(buffers *bs)
{
    for (int i = 0; i < bs->n; i++) PyBuffer_Release(&bs->b[i]);
    bs->n = 0;
}

/* Get a buffer of `obj` (flags as PyObject_GetBuffer); NULL with an exception set on failure. */
static Py_buffer *get(buffers *bs, PyObject *obj, int flags, const char *what, int ndim,
                      enum kind want1, enum kind want2)
{
    Py_buffer *b = &bs->b[bs->n];
    if (PyObject_GetBuffer(obj, b, flags | PyBUF_FORMAT) < 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected a%s array%s", what,
                     (flags & PyBUF_WRITABLE) ? " writable" : "",
                     (flags & PyBUF_C_CONTIGUOUS) == PyBUF_C_CONTIGUOUS ? ", C-contiguous" : "");
        return NULL;
    }
    bs->n++;
    if (b->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, found %d", what, ndim,
                     b->ndim);
        return NULL;
    }
    enum kind k = buffer_kind(b);
    if (k == K_BAD || (k != want1 && k != want2)) {
        PyErr_Format(PyExc_TypeError, "%s: expected %s%s%s, found %s (format '%s')", what,
                     kind_name(want1), want2 != K_BAD ? " or " : "",
                     want2 != K_BAD ? kind_name(want2) : "", kind_name(k),
                     b->format ? b->format : "B");
        return NULL;
    }
    return b;
}

static bounds2d as_bounds(const Py_buffer *b)
{
    bounds2d r = {(const char *)b->buf, b->shape[0], b->shape[1], b->strides[0], b->strides[1]};
    return r;
}

static int same_kind(Py_buffer *a, Py_buffer *b, const char *what_a, const char *what_b)
{
    if (buffer_kind(a) != buffer_kind(b)) {
        PyErr_Format(PyExc_TypeError, "%s is %s but %s is %s", what_a,
                     kind_name(buffer_kind(a)), what_b, kind_name(buffer_kind(b)));
        return 0;
    }
    return 1;
}

static int check_range(Py_ssize_t q0, Py_ssize_t q1, Py_ssize_t n)
{
    if (q0 < 0 || q1 > n || q0 > q1) {
        PyErr_Format(PyExc_ValueError, "row range %zd:%zd outside 0:%zd", q0, q1, n);
        return 0;
    }
    return 1;
}

#define RO_STRIDED PyBUF_STRIDES
#define RO_CONTIG PyBUF_C_CONTIGUOUS
#define RW_CONTIG (PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)

PyDoc_STRVAR(gather_doc,
"gather(start, end, idx, val, vec, stride, n_vec, q0, q1, out)\n--\n\n"
"out[k, r] += sum of val[n] * vec[k*stride + idx[n]] over n in start[k, r]:end[k, r], for the\n"
"rows q0 <= q < q1 of the flattened (k, r) grid (q = k * n_rows + r). start, end: int64\n"
"(n_seg, n_rows), any strides; idx: uint16 or int32, val and vec: float32 or float64, all\n"
"contiguous; out: (n_seg, n_rows), C-contiguous, the dtype of val. Runs without the GIL.");

static PyObject *py_gather(PyObject *self, PyObject *args)
{
    PyObject *o_st, *o_en, *o_idx, *o_val, *o_vec, *o_out;
    Py_ssize_t stride, n_vec, q0, q1;
    buffers bs = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOOOnnnnO:gather", &o_st, &o_en, &o_idx, &o_val, &o_vec,
                          &stride, &n_vec, &q0, &q1, &o_out))
        return NULL;
    Py_buffer *st = get(&bs, o_st, RO_STRIDED, "start", 2, K_I64, K_BAD);
    Py_buffer *en = st ? get(&bs, o_en, RO_STRIDED, "end", 2, K_I64, K_BAD) : NULL;
    Py_buffer *idx = en ? get(&bs, o_idx, RO_CONTIG, "idx", 1, K_U16, K_I32) : NULL;
    Py_buffer *val = idx ? get(&bs, o_val, RO_CONTIG, "val", 1, K_F32, K_F64) : NULL;
    Py_buffer *vec = val ? get(&bs, o_vec, RO_CONTIG, "vec", 1, K_F32, K_F64) : NULL;
    Py_buffer *out = vec ? get(&bs, o_out, RW_CONTIG, "out", 2, K_F32, K_F64) : NULL;
    if (!out) goto fail;
    if (!same_kind(val, vec, "val", "vec") || !same_kind(val, out, "val", "out")) goto fail;
    if (st->shape[0] != en->shape[0] || st->shape[1] != en->shape[1]
            || out->shape[0] != st->shape[0] || out->shape[1] != st->shape[1]) {
        PyErr_Format(PyExc_ValueError, "start (%zd, %zd), end (%zd, %zd) and out (%zd, %zd) "
                     "differ in shape", st->shape[0], st->shape[1], en->shape[0], en->shape[1],
                     out->shape[0], out->shape[1]);
        goto fail;
    }
    if (idx->shape[0] != val->shape[0]) {
        PyErr_Format(PyExc_ValueError, "idx has %zd elements, val %zd", idx->shape[0],
                     val->shape[0]);
        goto fail;
    }
    const Py_ssize_t n_seg = st->shape[0], n_rows = st->shape[1];
    if (!check_range(q0, q1, n_seg * n_rows)) goto fail;
    if (stride < 0 || n_vec < 0 || (q1 > q0 && n_rows > 0
            && (q1 - 1) / n_rows * stride + n_vec > vec->shape[0])) {
        PyErr_Format(PyExc_ValueError, "vec has %zd elements, segments of %zd at stride %zd "
                     "need more", vec->shape[0], n_vec, stride);
        goto fail;
    }
    bounds2d b_st = as_bounds(st), b_en = as_bounds(en);
    int bad;
    const int64_t nnz = idx->shape[0];
    const enum kind ki = buffer_kind(idx), kv = buffer_kind(val);
    Py_BEGIN_ALLOW_THREADS
    if (ki == K_U16 && kv == K_F32)
        bad = gather_u16_f32(&b_st, &b_en, idx->buf, val->buf, vec->buf, stride, q0, q1, nnz,
                             out->buf);
    else if (ki == K_U16)
        bad = gather_u16_f64(&b_st, &b_en, idx->buf, val->buf, vec->buf, stride, q0, q1, nnz,
                             out->buf);
    else if (kv == K_F32)
        bad = gather_i32_f32(&b_st, &b_en, idx->buf, val->buf, vec->buf, stride, q0, q1, nnz,
                             out->buf);
    else
        bad = gather_i32_f64(&b_st, &b_en, idx->buf, val->buf, vec->buf, stride, q0, q1, nnz,
                             out->buf);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_Format(PyExc_ValueError, "row bounds outside 0:%zd (the number of stored "
                     "elements) or decreasing", idx->shape[0]);
        goto fail;
    }
    release(&bs);
    Py_RETURN_NONE;
fail:
    release(&bs);
    return NULL;
}

PyDoc_STRVAR(scatter_doc,
"scatter(start, end, idx, val, vec, q0, q1, out)\n--\n\n"
"out[idx[n]] += val[n] * vec[q] over n in start[q]:end[q], for the rows q0 <= q < q1 of the\n"
"flattened (n_seg, w) grid of start and end, skipping vec[q] == 0. vec: (n_seg * w,), the\n"
"dtype of val; out: float64 (n_cols,), the caller's own. Runs without the GIL.");

static PyObject *py_scatter(PyObject *self, PyObject *args)
{
    PyObject *o_st, *o_en, *o_idx, *o_val, *o_vec, *o_out;
    Py_ssize_t q0, q1;
    buffers bs = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOOOnnO:scatter", &o_st, &o_en, &o_idx, &o_val, &o_vec, &q0,
                          &q1, &o_out))
        return NULL;
    Py_buffer *st = get(&bs, o_st, RO_STRIDED, "start", 2, K_I64, K_BAD);
    Py_buffer *en = st ? get(&bs, o_en, RO_STRIDED, "end", 2, K_I64, K_BAD) : NULL;
    Py_buffer *idx = en ? get(&bs, o_idx, RO_CONTIG, "idx", 1, K_U16, K_I32) : NULL;
    Py_buffer *val = idx ? get(&bs, o_val, RO_CONTIG, "val", 1, K_F32, K_F64) : NULL;
    Py_buffer *vec = val ? get(&bs, o_vec, RO_CONTIG, "vec", 1, K_F32, K_F64) : NULL;
    Py_buffer *out = vec ? get(&bs, o_out, RW_CONTIG, "out", 1, K_F64, K_BAD) : NULL;
    if (!out) goto fail;
    if (!same_kind(val, vec, "val", "vec")) goto fail;
    if (st->shape[0] != en->shape[0] || st->shape[1] != en->shape[1]
            || vec->shape[0] != st->shape[0] * st->shape[1]) {
        PyErr_Format(PyExc_ValueError, "start (%zd, %zd), end (%zd, %zd) and vec (%zd,) do not "
                     "match", st->shape[0], st->shape[1], en->shape[0], en->shape[1],
                     vec->shape[0]);
        goto fail;
    }
    if (idx->shape[0] != val->shape[0]) {
        PyErr_Format(PyExc_ValueError, "idx has %zd elements, val %zd", idx->shape[0],
                     val->shape[0]);
        goto fail;
    }
    if (!check_range(q0, q1, vec->shape[0])) goto fail;
    bounds2d b_st = as_bounds(st), b_en = as_bounds(en);
    int bad;
    const int64_t nnz = idx->shape[0];
    const enum kind ki = buffer_kind(idx), kv = buffer_kind(val);
    Py_BEGIN_ALLOW_THREADS
    if (ki == K_U16 && kv == K_F32)
        bad = scatter_u16_f32(&b_st, &b_en, idx->buf, val->buf, vec->buf, q0, q1, nnz, out->buf);
    else if (ki == K_U16)
        bad = scatter_u16_f64(&b_st, &b_en, idx->buf, val->buf, vec->buf, q0, q1, nnz, out->buf);
    else if (kv == K_F32)
        bad = scatter_i32_f32(&b_st, &b_en, idx->buf, val->buf, vec->buf, q0, q1, nnz, out->buf);
    else
        bad = scatter_i32_f64(&b_st, &b_en, idx->buf, val->buf, vec->buf, q0, q1, nnz, out->buf);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_Format(PyExc_ValueError, "row bounds outside 0:%zd (the number of stored "
                     "elements) or decreasing", idx->shape[0]);
        goto fail;
    }
    release(&bs);
    Py_RETURN_NONE;
fail:
    release(&bs);
    return NULL;
}

PyDoc_STRVAR(scatter_rows_doc,
"scatter_rows(ptr, idx, val, rows, coef, out)\n--\n\n"
"out[k, idx[n]] += val[n] * coef[t] over n in ptr[k, rows[t]]:ptr[k, rows[t] + 1], every k.\n"
"ptr: int64 (n_seg, n_rows + 1); rows: int64, coef: float64 (m,); out: float64 (n_seg, width).");

static PyObject *py_scatter_rows(PyObject *self, PyObject *args)
{
    PyObject *o_ptr, *o_idx, *o_val, *o_rows, *o_coef, *o_out;
    buffers bs = {.n = 0};
    if (!PyArg_ParseTuple(args, "OOOOOO:scatter_rows", &o_ptr, &o_idx, &o_val, &o_rows,
                          &o_coef, &o_out))
        return NULL;
    Py_buffer *ptr = get(&bs, o_ptr, RO_STRIDED, "ptr", 2, K_I64, K_BAD);
    Py_buffer *idx = ptr ? get(&bs, o_idx, RO_CONTIG, "idx", 1, K_U16, K_I32) : NULL;
    Py_buffer *val = idx ? get(&bs, o_val, RO_CONTIG, "val", 1, K_F32, K_F64) : NULL;
    Py_buffer *rows = val ? get(&bs, o_rows, RO_CONTIG, "rows", 1, K_I64, K_BAD) : NULL;
    Py_buffer *coef = rows ? get(&bs, o_coef, RO_CONTIG, "coef", 1, K_F64, K_BAD) : NULL;
    Py_buffer *out = coef ? get(&bs, o_out, RW_CONTIG, "out", 2, K_F64, K_BAD) : NULL;
    if (!out) goto fail;
    if (idx->shape[0] != val->shape[0] || rows->shape[0] != coef->shape[0]
            || out->shape[0] != ptr->shape[0] || ptr->shape[1] < 1) {
        PyErr_Format(PyExc_ValueError, "ptr (%zd, %zd), idx (%zd,), val (%zd,), rows (%zd,), "
                     "coef (%zd,) and out (%zd, %zd) do not match", ptr->shape[0],
                     ptr->shape[1], idx->shape[0], val->shape[0], rows->shape[0],
                     coef->shape[0], out->shape[0], out->shape[1]);
        goto fail;
    }
    bounds2d b_ptr = as_bounds(ptr);
    const int64_t *r = rows->buf;
    const Py_ssize_t n_rows = ptr->shape[1] - 1;
    for (Py_ssize_t t = 0; t < rows->shape[0]; t++) {
        if (r[t] < 0 || r[t] >= n_rows) {
            PyErr_Format(PyExc_ValueError, "row %lld outside 0:%zd", (long long)r[t], n_rows);
            goto fail;
        }
        for (Py_ssize_t k = 0; k < ptr->shape[0]; k++) {
            const int64_t s = bound_at(&b_ptr, k, r[t]), e = bound_at(&b_ptr, k, r[t] + 1);
            if (s < 0 || e < s || e > idx->shape[0]) {
                PyErr_Format(PyExc_ValueError, "row bounds outside 0:%zd (the number of stored "
                             "elements) or decreasing", idx->shape[0]);
                goto fail;
            }
        }
    }
    const enum kind ki = buffer_kind(idx), kv = buffer_kind(val);
    const Py_ssize_t n_t = rows->shape[0], width = out->shape[1];
    Py_BEGIN_ALLOW_THREADS
    if (ki == K_U16 && kv == K_F32)
        scatter_rows_u16_f32(&b_ptr, idx->buf, val->buf, r, coef->buf, n_t, width, out->buf);
    else if (ki == K_U16)
        scatter_rows_u16_f64(&b_ptr, idx->buf, val->buf, r, coef->buf, n_t, width, out->buf);
    else if (kv == K_F32)
        scatter_rows_i32_f32(&b_ptr, idx->buf, val->buf, r, coef->buf, n_t, width, out->buf);
    else
        scatter_rows_i32_f64(&b_ptr, idx->buf, val->buf, r, coef->buf, n_t, width, out->buf);
    Py_END_ALLOW_THREADS
    release(&bs);
    Py_RETURN_NONE;
fail:
    release(&bs);
    return NULL;
}

static PyMethodDef methods[] = {
    {"gather", py_gather, METH_VARARGS, gather_doc},
    {"scatter", py_scatter, METH_VARARGS, scatter_doc},
    {"scatter_rows", py_scatter_rows, METH_VARARGS, scatter_rows_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sparse_kernels",
    "The sparse response's product kernels in C (see comptonsky.response.sparse).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sparse_kernels(void)
{
    return PyModule_Create(&module);
}

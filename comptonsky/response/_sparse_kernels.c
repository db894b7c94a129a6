/*
 * The sparse response's product kernels, compiled when the package is installed.
 *
 * They are the numba kernels of sparse.py (_gather, _scatter, _scatter_rows) in C: loading this
 * module costs about a millisecond, where the first numba kernel of a process costs about 0.3 s
 * (numba loads its typing and target registries even for a kernel from its cache). Each call
 * checks the arrays' dtypes, shapes and row bounds, then runs with the GIL released.
 *
 * gather and scatter split their rows into the ranges the caller gives and run them on a pool
 * of worker threads of this module (POSIX threads; the calling thread takes ranges too). A
 * worker spins for a moment after each product before it sleeps, so the next product, which in
 * OSEM follows a few tens of microseconds of vector work, starts within a microsecond or two;
 * handing a range to a Python thread pool costs 30-70 us a time, about a quarter of an OSEM
 * subset's product on two cores.
 *
 * On x86-64 with GCC the loops are compiled for x86-64-v4 (AVX-512), v3 (AVX2) and the baseline,
 * and the loader picks the best the CPU has (target_clones).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#if !defined(_WIN32)
#define HAVE_POOL 1
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#endif

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
CLONES static int NAME(const bounds2d *st, const bounds2d *en, const void *idx_,                \
                       const void *val_, const void *vec_, Py_ssize_t stride, Py_ssize_t q0,    \
                       Py_ssize_t q1, int64_t nnz, void *out_)                                  \
{                                                                                               \
    const IT *idx = idx_;                                                                       \
    const VT *val = val_, *vec = vec_;                                                          \
    VT *out = out_;                                                                             \
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

/* [index is int32][values are float64] */
typedef int (*gather_fn)(const bounds2d *, const bounds2d *, const void *, const void *,
                         const void *, Py_ssize_t, Py_ssize_t, Py_ssize_t, int64_t, void *);
static const gather_fn GATHERS[2][2] = {
    {gather_u16_f32, gather_u16_f64},
    {gather_i32_f32, gather_i32_f64},
};

/* ---- scatter: out[idx[n]] += val[n] · vec[q] over n in start[q]:end[q], q0 ≤ q < q1, vec[q] ≠ 0 */

#define SCATTER(NAME, IT, VT)                                                                    \
CLONES static int NAME(const bounds2d *st, const bounds2d *en, const void *idx_,                \
                       const void *val_, const void *vec_, Py_ssize_t q0, Py_ssize_t q1,        \
                       int64_t nnz, double *out)                                                \
{                                                                                               \
    const IT *idx = idx_;                                                                       \
    const VT *val = val_, *vec = vec_;                                                          \
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

typedef int (*scatter_fn)(const bounds2d *, const bounds2d *, const void *, const void *,
                          const void *, Py_ssize_t, Py_ssize_t, int64_t, double *);
static const scatter_fn SCATTERS[2][2] = {
    {scatter_u16_f32, scatter_u16_f64},
    {scatter_i32_f32, scatter_i32_f64},
};

/* ---- scatter_rows: out[k, idx[n]] += val[n] · coef[t] over n in ptr[k, rows[t]]:ptr[k, rows[t]+1] */

#define SCATTER_ROWS(NAME, IT, VT)                                                               \
static void NAME(const bounds2d *ptr, const void *idx_, const void *val_, const int64_t *rows,   \
                 const double *coef, Py_ssize_t n_t, Py_ssize_t width, double *out)             \
{                                                                                               \
    const IT *idx = idx_;                                                                       \
    const VT *val = val_;                                                                       \
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

typedef void (*scatter_rows_fn)(const bounds2d *, const void *, const void *, const int64_t *,
                                const double *, Py_ssize_t, Py_ssize_t, double *);
static const scatter_rows_fn SCATTER_ROWS_FNS[2][2] = {
    {scatter_rows_u16_f32, scatter_rows_u16_f64},
    {scatter_rows_i32_f32, scatter_rows_i32_f64},
};

/* ---- the worker pool -------------------------------------------------------------------- */

/* A task: n_parts ranges, part p run by run_part(job, p) (nonzero: bad row bounds). */
typedef int (*part_fn)(const void *job, Py_ssize_t part);

static int run_serially(part_fn run_part, const void *job, Py_ssize_t n_parts)
{
    int bad = 0;
    for (Py_ssize_t p = 0; p < n_parts; p++) bad |= run_part(job, p);
    return bad;
}

#ifdef HAVE_POOL

typedef struct {
    part_fn run_part;
    const void *job;
    Py_ssize_t n_parts;
    atomic_long next;        /* next part to claim */
    atomic_long done;        /* parts finished */
    atomic_int bad;
    atomic_int users;        /* workers inside run_parts for this task */
} task;

#define MAX_WORKERS 255
#define SPIN_SECONDS 300e-6  /* a worker's wait for the next task before it sleeps */

static struct {
    pthread_mutex_t lock;    /* guards current, the sleeping workers and users++ */
    pthread_cond_t wake;
    pthread_mutex_t busy;    /* one task at a time; another caller runs its parts serially */
    atomic_ulong generation; /* bumped for every task */
    task *current;
    int n_workers;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 0, NULL,
          0};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void run_parts(task *t)
{
    long p;
    while ((p = atomic_fetch_add(&t->next, 1)) < t->n_parts) {
        if (t->run_part(t->job, p)) atomic_store(&t->bad, 1);
        atomic_fetch_add(&t->done, 1);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    unsigned long seen = atomic_load(&pool.generation);
    for (;;) {
        unsigned long g;
        const double t0 = seconds();
        unsigned spins = 0;
        while ((g = atomic_load(&pool.generation)) == seen) {
            if ((++spins & 63) == 0 && seconds() - t0 > SPIN_SECONDS) {
                pthread_mutex_lock(&pool.lock);
                while ((g = atomic_load(&pool.generation)) == seen)
                    pthread_cond_wait(&pool.wake, &pool.lock);
                pthread_mutex_unlock(&pool.lock);
                break;
            }
            cpu_relax();
        }
        seen = g;
        pthread_mutex_lock(&pool.lock);
        task *t = pool.current;
        if (t) atomic_fetch_add(&t->users, 1);
        pthread_mutex_unlock(&pool.lock);
        if (t) {
            run_parts(t);
            atomic_fetch_sub(&t->users, 1);
        }
    }
    return NULL;
}

/* Start workers up to n (under pool.busy); the number running. */
static int grow(int n)
{
    /* more ranges than threads are claimed in turn: no more workers than twice the CPUs */
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus > 0 && n > 2 * cpus) n = (int)(2 * cpus);
    if (n > MAX_WORKERS) n = MAX_WORKERS;
    while (pool.n_workers < n) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&th, &attr, worker, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.n_workers++;
    }
    return pool.n_workers;
}

static void after_fork_in_child(void)
{
    /* the workers did not survive the fork: start afresh */
    pthread_mutex_init(&pool.lock, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_mutex_init(&pool.busy, NULL);
    pool.current = NULL;
    pool.n_workers = 0;
}

/* Run parts 0..n_parts-1 of job on the pool and this thread; nonzero if any part was bad.
   Called without the GIL. */
static int run_task(part_fn run_part, const void *job, Py_ssize_t n_parts)
{
    task t = {.run_part = run_part, .job = job, .n_parts = n_parts};
    atomic_init(&t.next, 0);
    atomic_init(&t.done, 0);
    atomic_init(&t.bad, 0);
    atomic_init(&t.users, 0);
    int serial = n_parts <= 1 || pthread_mutex_trylock(&pool.busy) != 0;  /* busy: serially */
    if (!serial && grow((int)n_parts - 1) == 0) {
        pthread_mutex_unlock(&pool.busy);
        serial = 1;
    }
    if (serial) return run_serially(run_part, job, n_parts);
    pthread_mutex_lock(&pool.lock);
    pool.current = &t;
    atomic_fetch_add(&pool.generation, 1);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    run_parts(&t);
    for (unsigned spins = 0; atomic_load(&t.done) < n_parts; spins++) {
        if (spins > 4096) sched_yield(); else cpu_relax();
    }
    pthread_mutex_lock(&pool.lock);
    pool.current = NULL;
    pthread_mutex_unlock(&pool.lock);
    while (atomic_load(&t.users) > 0) cpu_relax();  /* they have no part left to claim */
    pthread_mutex_unlock(&pool.busy);
    return atomic_load(&t.bad);
}

#else  /* no POSIX threads: the parts run one after another */

static int run_task(part_fn run_part, const void *job, Py_ssize_t n_parts)
{
    return run_serially(run_part, job, n_parts);
}

#endif

/* ---- the tasks' parts ------------------------------------------------------------------- */

typedef struct {
    bounds2d st, en;
    const void *idx, *val, *vec;
    void *out;
    Py_ssize_t stride;
    const int64_t *splits;
    int64_t nnz;
    enum kind ki, kv;
    Py_ssize_t out_stride;   /* scatter: elements between the parts' output rows */
    Py_ssize_t n_vec_elements;
} rows_job;

static int gather_part(const void *arg, Py_ssize_t p)
{
    const rows_job *j = arg;
    return GATHERS[j->ki == K_I32][j->kv == K_F64](&j->st, &j->en, j->idx, j->val, j->vec,
                                                  j->stride, j->splits[p], j->splits[p + 1],
                                                  j->nnz, j->out);
}

static int scatter_part(const void *arg, Py_ssize_t p)
{
    const rows_job *j = arg;
    return SCATTERS[j->ki == K_I32][j->kv == K_F64](&j->st, &j->en, j->idx, j->val, j->vec,
                                                   j->splits[p], j->splits[p + 1], j->nnz,
                                                   (double *)j->out + p * j->out_stride);
}

/* ---- argument handling ------------------------------------------------------------------ */

#define N_BUF 8

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
    if (bs->n >= N_BUF) {
        PyErr_SetString(PyExc_RuntimeError, "_sparse_kernels: too many array arguments");
        return NULL;
    }
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

/* splits: int64 (n_parts + 1,), n_parts >= 1, 0 <= splits[0] <= ... <= splits[-1] <= n. */
static int check_splits(Py_buffer *b, Py_ssize_t n)
{
    const int64_t *sp = b->buf;
    const Py_ssize_t m = b->shape[0];
    if (m < 2) {
        PyErr_Format(PyExc_ValueError, "splits: expected at least 2 boundaries, found %zd", m);
        return 0;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        if (sp[i] < 0 || sp[i] > n || (i > 0 && sp[i] < sp[i - 1])) {
            PyErr_Format(PyExc_ValueError, "splits: expected non-decreasing row boundaries in "
                         "0:%zd, found %lld at position %zd", n, (long long)sp[i], i);
            return 0;
        }
    }
    return 1;
}

#define RO_STRIDED PyBUF_STRIDES
#define RO_CONTIG PyBUF_C_CONTIGUOUS
#define RW_CONTIG (PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)

PyDoc_STRVAR(gather_doc,
"gather(start, end, idx, val, vec, stride, n_vec, splits, out)\n--\n\n"
"out[k, r] += sum of val[n] * vec[k*stride + idx[n]] over n in start[k, r]:end[k, r], for the\n"
"rows splits[0] <= q < splits[-1] of the flattened (k, r) grid (q = k * n_rows + r), the\n"
"ranges splits[i]:splits[i+1] on the module's threads and the calling one. start, end: int64\n"
"(n_seg, n_rows), any strides; idx: uint16 or int32, val and vec: float32 or float64, splits:\n"
"int64, all contiguous; out: (n_seg, n_rows), C-contiguous, the dtype of val. Runs without\n"
"the GIL.");

/* The arrays gather and scatter share: start, end (int64, 2-D, same shape), idx (uint16 or
   int32) and val (float32 or float64) of one length, vec (val's dtype), splits (int64); checked,
   into job (all but out and its stride). Returns the splits buffer, NULL with an exception set. */
static Py_buffer *rows_arguments(buffers *bs, PyObject *o_st, PyObject *o_en, PyObject *o_idx,
                                 PyObject *o_val, PyObject *o_vec, PyObject *o_sp, rows_job *job)
{
    Py_buffer *st = get(bs, o_st, RO_STRIDED, "start", 2, K_I64, K_BAD);
    Py_buffer *en = st ? get(bs, o_en, RO_STRIDED, "end", 2, K_I64, K_BAD) : NULL;
    Py_buffer *idx = en ? get(bs, o_idx, RO_CONTIG, "idx", 1, K_U16, K_I32) : NULL;
    Py_buffer *val = idx ? get(bs, o_val, RO_CONTIG, "val", 1, K_F32, K_F64) : NULL;
    Py_buffer *vec = val ? get(bs, o_vec, RO_CONTIG, "vec", 1, K_F32, K_F64) : NULL;
    Py_buffer *sp = vec ? get(bs, o_sp, RO_CONTIG, "splits", 1, K_I64, K_BAD) : NULL;
    if (!sp || !same_kind(val, vec, "val", "vec")) return NULL;
    if (st->shape[0] != en->shape[0] || st->shape[1] != en->shape[1]) {
        PyErr_Format(PyExc_ValueError, "start (%zd, %zd) and end (%zd, %zd) differ in shape",
                     st->shape[0], st->shape[1], en->shape[0], en->shape[1]);
        return NULL;
    }
    if (idx->shape[0] != val->shape[0]) {
        PyErr_Format(PyExc_ValueError, "idx has %zd elements, val %zd", idx->shape[0],
                     val->shape[0]);
        return NULL;
    }
    if (!check_splits(sp, st->shape[0] * st->shape[1])) return NULL;
    *job = (rows_job){as_bounds(st), as_bounds(en), idx->buf, val->buf, vec->buf, NULL, 0,
                      sp->buf, idx->shape[0], buffer_kind(idx), buffer_kind(val), 0,
                      vec->shape[0]};
    return sp;
}

/* Run job's ranges (splits sp) with part; release the buffers; None, or NULL with an error. */
static PyObject *run_rows(buffers *bs, part_fn part, rows_job *job, Py_buffer *sp)
{
    int bad;
    Py_BEGIN_ALLOW_THREADS
    bad = run_task(part, job, sp->shape[0] - 1);
    Py_END_ALLOW_THREADS
    if (bad) {
        PyErr_Format(PyExc_ValueError, "row bounds outside 0:%lld (the number of stored "
                     "elements) or decreasing", (long long)job->nnz);
        release(bs);
        return NULL;
    }
    release(bs);
    Py_RETURN_NONE;
}

static PyObject *py_gather(PyObject *self, PyObject *args)
{
    PyObject *o_st, *o_en, *o_idx, *o_val, *o_vec, *o_sp, *o_out;
    Py_ssize_t stride, n_vec;
    buffers bs = {.n = 0};
    rows_job job;
    if (!PyArg_ParseTuple(args, "OOOOOnnOO:gather", &o_st, &o_en, &o_idx, &o_val, &o_vec,
                          &stride, &n_vec, &o_sp, &o_out))
        return NULL;
    Py_buffer *sp = rows_arguments(&bs, o_st, o_en, o_idx, o_val, o_vec, o_sp, &job);
    Py_buffer *out = sp ? get(&bs, o_out, RW_CONTIG, "out", 2, K_F32, K_F64) : NULL;
    if (!out) goto fail;
    if (buffer_kind(out) != job.kv) {
        PyErr_Format(PyExc_TypeError, "val is %s but out is %s", kind_name(job.kv),
                     kind_name(buffer_kind(out)));
        goto fail;
    }
    const Py_ssize_t n_seg = job.st.n0, n_rows = job.st.n1;
    if (out->shape[0] != n_seg || out->shape[1] != n_rows) {
        PyErr_Format(PyExc_ValueError, "start (%zd, %zd) and out (%zd, %zd) differ in shape",
                     n_seg, n_rows, out->shape[0], out->shape[1]);
        goto fail;
    }
    const int64_t *splits = sp->buf;
    const Py_ssize_t q0 = splits[0], q1 = splits[sp->shape[0] - 1];
    if (stride < 0 || n_vec < 0 || (q1 > q0 && n_rows > 0
            && (q1 - 1) / n_rows * stride + n_vec > job.n_vec_elements)) {
        PyErr_Format(PyExc_ValueError, "vec has %zd elements, segments of %zd at stride %zd "
                     "need more", job.n_vec_elements, n_vec, stride);
        goto fail;
    }
    job.out = out->buf;
    job.stride = stride;
    return run_rows(&bs, gather_part, &job, sp);
fail:
    release(&bs);
    return NULL;
}

PyDoc_STRVAR(scatter_doc,
"scatter(start, end, idx, val, vec, splits, out)\n--\n\n"
"out[i, idx[n]] += val[n] * vec[q] over n in start[q]:end[q], for the rows\n"
"splits[i] <= q < splits[i+1] of the flattened (n_seg, w) grid of start and end (range i on\n"
"one of the module's threads or the calling one), skipping vec[q] == 0. vec: (n_seg * w,), the\n"
"dtype of val; out: float64 (n_parts, n_cols), C-contiguous. Runs without the GIL.");

static PyObject *py_scatter(PyObject *self, PyObject *args)
{
    PyObject *o_st, *o_en, *o_idx, *o_val, *o_vec, *o_sp, *o_out;
    buffers bs = {.n = 0};
    rows_job job;
    if (!PyArg_ParseTuple(args, "OOOOOOO:scatter", &o_st, &o_en, &o_idx, &o_val, &o_vec, &o_sp,
                          &o_out))
        return NULL;
    Py_buffer *sp = rows_arguments(&bs, o_st, o_en, o_idx, o_val, o_vec, o_sp, &job);
    Py_buffer *out = sp ? get(&bs, o_out, RW_CONTIG, "out", 2, K_F64, K_BAD) : NULL;
    if (!out) goto fail;
    if (job.n_vec_elements != job.st.n0 * job.st.n1) {
        PyErr_Format(PyExc_ValueError, "vec has %zd elements, expected one per row (%zd)",
                     job.n_vec_elements, job.st.n0 * job.st.n1);
        goto fail;
    }
    if (out->shape[0] != sp->shape[0] - 1) {
        PyErr_Format(PyExc_ValueError, "out has %zd rows, expected one per range (%zd)",
                     out->shape[0], sp->shape[0] - 1);
        goto fail;
    }
    job.out = out->buf;
    job.out_stride = out->shape[1];
    return run_rows(&bs, scatter_part, &job, sp);
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
    const scatter_rows_fn fn =
        SCATTER_ROWS_FNS[buffer_kind(idx) == K_I32][buffer_kind(val) == K_F64];
    const Py_ssize_t n_t = rows->shape[0], width = out->shape[1];
    Py_BEGIN_ALLOW_THREADS
    fn(&b_ptr, idx->buf, val->buf, r, coef->buf, n_t, width, out->buf);
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
#ifdef HAVE_POOL
    static int registered = 0;
    if (!registered) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            PyErr_SetString(PyExc_OSError, "_sparse_kernels: pthread_atfork failed");
            return NULL;
        }
        registered = 1;
    }
#endif
    return PyModule_Create(&module);
}

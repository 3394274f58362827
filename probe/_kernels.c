/* probe._kernels: the inner loops that numpy cannot do in a single pass over the values:
 * two of scoring a recording (probe/detectors.py), and two of recording one
 * (probe/record.py: the cell state's recurrence; the chunk checksum, probe/h5format.py).
 *
 * histogram(codes, pattern, lut, hist, bins) adds, for every row t and unit u,
 *     hist[u, pattern[t] * bins + lut[codes[t, u]]] += 1
 * where codes are float16 bit patterns [n, U] (a chunk of one recorded stream), pattern
 * is each row's 0/1 pattern of the binary features, and lut maps a bit pattern to its
 * histogram bin. These per-unit histograms give every unit's ROC AUC for every binary
 * feature (probe/detectors.py). The numpy version there is the reference; tests compare.
 *
 * Units are counted a few at a time into 32-bit counts that stay in cache, then added
 * to the 64-bit totals. The GIL is released while counting, so threads scan streams in
 * parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef BLOCK
#define BLOCK 8 /* units counted together */
#endif

static int get(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize, int ndim,
               const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->itemsize != itemsize || view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: need a C-contiguous %d-d array of %zd-byte items",
                     name, ndim, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *histogram(PyObject *self, PyObject *args)
{
    PyObject *o_codes, *o_pat, *o_lut, *o_hist;
    Py_ssize_t bins;
    Py_buffer codes, pat, lut, hist;
    if (!PyArg_ParseTuple(args, "OOOOn", &o_codes, &o_pat, &o_lut, &o_hist, &bins))
        return NULL;
    if (get(o_codes, &codes, 0, 2, 2, "codes") < 0)
        return NULL;
    if (get(o_pat, &pat, 0, 4, 1, "pattern") < 0)
        goto fail_codes;
    if (get(o_lut, &lut, 0, 4, 1, "lut") < 0)
        goto fail_pat;
    if (get(o_hist, &hist, 1, 8, 2, "hist") < 0)
        goto fail_lut;

    const Py_ssize_t n = codes.shape[0], U = codes.shape[1], width = hist.shape[1];
    const int32_t *lutv = (const int32_t *)lut.buf, *patv = (const int32_t *)pat.buf;
    if (pat.shape[0] != n || lut.shape[0] != 65536 || hist.shape[0] != U || bins < 1 ||
        width % bins != 0 || n >= ((Py_ssize_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "histogram: shapes do not match "
                        "(codes [n, U], pattern [n], lut [65536], hist [U, patterns * bins])");
        goto fail;
    }
    const Py_ssize_t patterns = width / bins;
    for (Py_ssize_t k = 0; k < 65536; k++)
        if (lutv[k] < 0 || lutv[k] >= bins) {
            PyErr_SetString(PyExc_ValueError, "histogram: lut holds a bin outside [0, bins)");
            goto fail;
        }
    for (Py_ssize_t t = 0; t < n; t++)
        if (patv[t] < 0 || patv[t] >= patterns) {
            PyErr_SetString(PyExc_ValueError, "histogram: pattern outside [0, patterns)");
            goto fail;
        }
    uint32_t *counts = calloc((size_t)BLOCK * (size_t)width, sizeof(uint32_t));
    if (counts == NULL) {
        PyErr_NoMemory();
        goto fail;
    }

    const uint16_t *cv = (const uint16_t *)codes.buf;
    int64_t *hv = (int64_t *)hist.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t u0 = 0; u0 < U; u0 += BLOCK) {
        const Py_ssize_t ub = U - u0 < BLOCK ? U - u0 : BLOCK;
        memset(counts, 0, (size_t)BLOCK * (size_t)width * sizeof(uint32_t));
        for (Py_ssize_t t = 0; t < n; t++) {
            const uint16_t *row = cv + t * U + u0;
            uint32_t *c = counts + (Py_ssize_t)patv[t] * bins;
            for (Py_ssize_t j = 0; j < ub; j++)
                c[j * width + lutv[row[j]]]++;
        }
        for (Py_ssize_t j = 0; j < ub; j++) {
            int64_t *h = hv + (u0 + j) * width;
            const uint32_t *c = counts + j * width;
            for (Py_ssize_t k = 0; k < width; k++)
                h[k] += c[k];
        }
    }
    Py_END_ALLOW_THREADS
    free(counts);
    PyBuffer_Release(&hist);
    PyBuffer_Release(&lut);
    PyBuffer_Release(&pat);
    PyBuffer_Release(&codes);
    Py_RETURN_NONE;

fail:
    PyBuffer_Release(&hist);
fail_lut:
    PyBuffer_Release(&lut);
fail_pat:
    PyBuffer_Release(&pat);
fail_codes:
    PyBuffer_Release(&codes);
    return NULL;
}

/* shifted(codes, table, shift, out, sumsq):
 *     out[t, u] = table[codes[t, u]] - shift[u];  sumsq[u] += out[t, u]**2 (in float64)
 * the float32 values of a float16 chunk (table: float32 value of each bit pattern),
 * shifted by a per-unit constant so that running sums of squares do not cancel. */
static PyObject *shifted(PyObject *self, PyObject *args)
{
    PyObject *o_codes, *o_table, *o_shift, *o_out, *o_sumsq, *o_raw = Py_None;
    Py_buffer codes, table, shift, out, sumsq, raw;
    raw.buf = NULL;
    if (!PyArg_ParseTuple(args, "OOOOO|O", &o_codes, &o_table, &o_shift, &o_out, &o_sumsq, &o_raw))
        return NULL;
    if (get(o_codes, &codes, 0, 2, 2, "codes") < 0)
        return NULL;
    if (get(o_table, &table, 0, 4, 1, "table") < 0)
        goto fail_codes;
    if (get(o_shift, &shift, 0, 4, 1, "shift") < 0)
        goto fail_table;
    if (get(o_out, &out, 1, 4, 2, "out") < 0)
        goto fail_shift;
    if (get(o_sumsq, &sumsq, 1, 8, 1, "sumsq") < 0)
        goto fail_out;
    if (o_raw != Py_None && get(o_raw, &raw, 1, 4, 2, "raw") < 0)
        goto fail;
    const Py_ssize_t n = codes.shape[0], U = codes.shape[1];
    if (table.shape[0] != 65536 || shift.shape[0] != U || out.shape[0] != n || out.shape[1] != U ||
        sumsq.shape[0] != U || (raw.buf != NULL && (raw.shape[0] != n || raw.shape[1] != U))) {
        PyErr_SetString(PyExc_ValueError, "shifted: shapes do not match "
                        "(codes [n, U], table [65536], shift [U], out [n, U], sumsq [U], raw [n, U])");
        if (raw.buf != NULL)
            PyBuffer_Release(&raw);
        goto fail;
    }
    const uint16_t *cv = (const uint16_t *)codes.buf;
    const float *tv = (const float *)table.buf, *sv = (const float *)shift.buf;
    float *ov = (float *)out.buf, *rv = (float *)raw.buf;
    double *qv = (double *)sumsq.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < n; t++) {
        const uint16_t *row = cv + t * U;
        float *o = ov + t * U;
        for (Py_ssize_t u = 0; u < U; u++) {
            const float v = tv[row[u]] - sv[u];
            o[u] = v;
            qv[u] += (double)v * (double)v;
        }
        if (rv != NULL) {
            float *r = rv + t * U;
            for (Py_ssize_t u = 0; u < U; u++)
                r[u] = tv[row[u]];
        }
    }
    Py_END_ALLOW_THREADS
    if (raw.buf != NULL)
        PyBuffer_Release(&raw);
    PyBuffer_Release(&sumsq);
    PyBuffer_Release(&out);
    PyBuffer_Release(&shift);
    PyBuffer_Release(&table);
    PyBuffer_Release(&codes);
    Py_RETURN_NONE;

fail:
    PyBuffer_Release(&sumsq);
fail_out:
    PyBuffer_Release(&out);
fail_shift:
    PyBuffer_Release(&shift);
fail_table:
    PyBuffer_Release(&table);
fail_codes:
    PyBuffer_Release(&codes);
    return NULL;
}

/* fletcher32(data) -> int: the Fletcher-32 checksum HDF5 stores after a filtered chunk,
 * as probe/h5format.py's numpy version defines it: 16-bit big-endian words w_0..w_{M-1}
 * (an odd last byte is a word of its own high byte), s1 = sum of w_i and
 * s2 = sum of (M - i) w_i, each folded to 1..65535 (0 only when every word is 0); the
 * result is s2 << 16 | s1. Blocks of 256 words sum w and j * w in 32 bits with no
 * dependency from one word to the next (so the compiler vectorises them), then modulo 65535. */
static PyObject *fletcher32(PyObject *self, PyObject *args)
{
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    const uint8_t *p = (const uint8_t *)b.buf;
    const Py_ssize_t m = b.len / 2, M = m + (b.len % 2);
    uint64_t s1 = 0, s2 = 0, any = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i0 = 0; i0 < m; i0 += 256) {
        const Py_ssize_t n = m - i0 < 256 ? m - i0 : 256;
        const uint8_t *q = p + 2 * i0;
        uint32_t sum = 0, weighted = 0, bits = 0; /* < 2^24 per word, < 2^32 per block */
        for (Py_ssize_t j = 0; j < n; j++) {
            const uint32_t w = ((uint32_t)q[2 * j] << 8) | q[2 * j + 1];
            sum += w;
            weighted += (uint32_t)j * w;
            bits |= w;
        }
        /* word i0 + j has weight (M - i0) - j */
        any |= bits;
        s1 = (s1 + sum) % 65535;
        s2 = (s2 + ((uint64_t)(M - i0) % 65535) * (sum % 65535) + 65535 - weighted % 65535) % 65535;
    }
    if (b.len % 2) { /* the last word, weight 1 */
        const uint64_t w = (uint64_t)p[b.len - 1] << 8;
        any |= w;
        s1 = (s1 + w) % 65535;
        s2 = (s2 + w) % 65535;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b);
    if (any) { /* a positive sum folds to 1..65535 */
        if (s1 == 0) s1 = 65535;
        if (s2 == 0) s2 = 65535;
    }
    return PyLong_FromUnsignedLong((unsigned long)((s2 << 16) | s1));
}

/* recurrence(f, c, c0): the LSTM cell state over L steps, in place: c holds i * g on entry
 * and, row by row, c[t] = f[t] * c[t - 1] + c[t] on exit (c[-1] = c0); f and c are
 * [L, N] float32, c0 [N]. A product then a sum, each rounded to float32 (built with
 * -ffp-contract=off, no fused multiply-add), exactly as numpy computes it. */
static PyObject *recurrence(PyObject *self, PyObject *args)
{
    PyObject *o_f, *o_c, *o_c0;
    Py_buffer f, c, c0;
    if (!PyArg_ParseTuple(args, "OOO", &o_f, &o_c, &o_c0))
        return NULL;
    if (get(o_f, &f, 0, 4, 2, "f") < 0)
        return NULL;
    if (get(o_c, &c, 1, 4, 2, "c") < 0) {
        PyBuffer_Release(&f);
        return NULL;
    }
    if (get(o_c0, &c0, 0, 4, 1, "c0") < 0) {
        PyBuffer_Release(&c);
        PyBuffer_Release(&f);
        return NULL;
    }
    const Py_ssize_t L = f.shape[0], N = f.shape[1];
    if (c.shape[0] != L || c.shape[1] != N || c0.shape[0] != N) {
        PyErr_SetString(PyExc_ValueError, "recurrence: shapes do not match (f [L, N], c [L, N], c0 [N])");
        PyBuffer_Release(&c0);
        PyBuffer_Release(&c);
        PyBuffer_Release(&f);
        return NULL;
    }
    const float *fv = (const float *)f.buf, *prev = (const float *)c0.buf;
    float *cv = (float *)c.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t t = 0; t < L; t++) {
        float *row = cv + t * N;
        const float *ft = fv + t * N;
        for (Py_ssize_t u = 0; u < N; u++) {
            const float product = ft[u] * prev[u];
            row[u] = row[u] + product;
        }
        prev = row;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&c0);
    PyBuffer_Release(&c);
    PyBuffer_Release(&f);
    Py_RETURN_NONE;
}

/* Insert v with position p into a list [K] (values highest first, -inf padded; positions,
 * -1 padded) after every value >= v; return the list's new last value. */
static float insert(float *lv, int64_t *lp, Py_ssize_t K, float v, int64_t p)
{
    Py_ssize_t j = K - 1;
    while (j > 0 && lv[j - 1] < v)
        j--;
    memmove(lv + j + 1, lv + j, sizeof(float) * (K - 1 - j));
    memmove(lp + j + 1, lp + j, sizeof(int64_t) * (K - 1 - j));
    lv[j] = v;
    lp[j] = p;
    return lv[K - 1];
}

/* topk(x, row0, cuts, bmax, bmin, top_v, top_p, bottom_v, bottom_p): running top-K and
 * bottom-K per unit (probe/summaries.py). x [n, U] (float32) comes in blocks of rows
 * [cuts[b], cuts[b + 1]) whose per-unit maximum and minimum are bmax and bmin [m, U]. In
 * position order, x[t, u] enters unit u's top list (top_v [U, K] float32, highest first,
 * -inf padded; top_p int64 positions, -1 padded) with position row0 + t if it is finite
 * and greater than the list's last value, and -x[t, u] its bottom list the same way: ties
 * keep the earlier position. A block is read for a unit only if its maximum (minimum) can
 * enter, or is NaN (which may hide values that can): after the first few blocks, almost
 * none is. The numpy version (summaries._candidates with _merge_best) is the reference. */
static PyObject *topk(PyObject *self, PyObject *args)
{
    PyObject *o_x, *o_cuts, *o_bmax, *o_bmin, *o_tv, *o_tp, *o_bv, *o_bp;
    long long row0;
    Py_buffer x, cuts, bmax, bmin, tv, tp, bv, bp;
    if (!PyArg_ParseTuple(args, "OLOOOOOOO", &o_x, &row0, &o_cuts, &o_bmax, &o_bmin, &o_tv, &o_tp, &o_bv,
                          &o_bp))
        return NULL;
    PyObject *objs[8] = {o_x, o_cuts, o_bmax, o_bmin, o_tv, o_tp, o_bv, o_bp};
    Py_buffer *views[8] = {&x, &cuts, &bmax, &bmin, &tv, &tp, &bv, &bp};
    const int writable[8] = {0, 0, 0, 0, 1, 1, 1, 1}, items[8] = {4, 8, 4, 4, 4, 8, 4, 8},
              dims[8] = {2, 1, 2, 2, 2, 2, 2, 2};
    const char *names[8] = {"x", "cuts", "bmax", "bmin", "top_v", "top_p", "bottom_v", "bottom_p"};
    int got = 0;
    for (; got < 8; got++)
        if (get(objs[got], views[got], writable[got], items[got], dims[got], names[got]) < 0)
            break;
    float *last = NULL;
    if (got < 8)
        goto done;
    const Py_ssize_t n = x.shape[0], U = x.shape[1], K = tv.shape[1], m = bmax.shape[0];
    const int64_t *cv = (const int64_t *)cuts.buf;
    if (K < 1 || cuts.shape[0] != m + 1 || bmax.shape[1] != U || bmin.shape[0] != m || bmin.shape[1] != U ||
        tv.shape[0] != U || tp.shape[0] != U || tp.shape[1] != K || bv.shape[0] != U || bv.shape[1] != K ||
        bp.shape[0] != U || bp.shape[1] != K || cv[0] != 0 || cv[m] != n) {
        PyErr_SetString(PyExc_ValueError, "topk: shapes do not match (x [n, U], cuts [m + 1] from 0 to n, "
                        "bmax and bmin [m, U], the four lists [U, K])");
        goto done;
    }
    last = (float *)malloc(sizeof(float) * 2 * (U > 0 ? U : 1)); /* each list's K-th value */
    if (last == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    const float *xv = (const float *)x.buf, *hi = (const float *)bmax.buf, *lo = (const float *)bmin.buf;
    float *tvv = (float *)tv.buf, *bvv = (float *)bv.buf;
    int64_t *tpv = (int64_t *)tp.buf, *bpv = (int64_t *)bp.buf;
    Py_BEGIN_ALLOW_THREADS
    float *ltop = last, *lbot = last + U;
    for (Py_ssize_t u = 0; u < U; u++) {
        ltop[u] = tvv[u * K + K - 1];
        lbot[u] = bvv[u * K + K - 1];
    }
    for (Py_ssize_t b = 0; b < m; b++) {
        const float *bh = hi + b * U, *bl = lo + b * U;
        for (Py_ssize_t u = 0; u < U; u++) {
            const int top = !(bh[u] <= ltop[u]), bottom = !(-bl[u] <= lbot[u]);
            if (!top && !bottom)
                continue;
            for (int64_t t = cv[b]; t < cv[b + 1]; t++) {
                const float v = xv[t * U + u];
                if (top && v > ltop[u] && v != INFINITY) /* NaN and ±inf never enter */
                    ltop[u] = insert(tvv + u * K, tpv + u * K, K, v, row0 + t);
                if (bottom && -v > lbot[u] && v != -INFINITY)
                    lbot[u] = insert(bvv + u * K, bpv + u * K, K, -v, row0 + t);
            }
        }
    }
    Py_END_ALLOW_THREADS
done:
    free(last);
    for (int j = 0; j < got; j++)
        PyBuffer_Release(views[j]);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"shifted", shifted, METH_VARARGS,
     "shifted(codes, table, shift, out, sumsq[, raw]): out = table[codes] - shift; sumsq += out**2; "
     "raw = table[codes]"},
    {"histogram", histogram, METH_VARARGS,
     "histogram(codes, pattern, lut, hist, bins): hist[u, pattern[t]*bins + lut[codes[t, u]]] += 1"},
    {"fletcher32", fletcher32, METH_VARARGS, "fletcher32(data): HDF5's Fletcher-32 checksum of a chunk"},
    {"recurrence", recurrence, METH_VARARGS, "recurrence(f, c, c0): c[t] = f[t] * c[t-1] + c[t], in place"},
    {"topk", topk, METH_VARARGS,
     "topk(x, row0, cuts, bmax, bmin, top_v, top_p, bottom_v, bottom_p): running top-K and bottom-K per "
     "unit, in place, reading only the blocks that can enter"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "probe's compiled inner loops (float16 values, AUC histograms, recurrence, checksum, top-k)", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }

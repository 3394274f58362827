/* probe._kernels: the two inner loops of scoring a recording (probe/detectors.py) that
 * numpy cannot do in a single pass over the values.
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
    PyObject *o_codes, *o_table, *o_shift, *o_out, *o_sumsq;
    Py_buffer codes, table, shift, out, sumsq;
    if (!PyArg_ParseTuple(args, "OOOOO", &o_codes, &o_table, &o_shift, &o_out, &o_sumsq))
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
    const Py_ssize_t n = codes.shape[0], U = codes.shape[1];
    if (table.shape[0] != 65536 || shift.shape[0] != U || out.shape[0] != n || out.shape[1] != U ||
        sumsq.shape[0] != U) {
        PyErr_SetString(PyExc_ValueError, "shifted: shapes do not match "
                        "(codes [n, U], table [65536], shift [U], out [n, U], sumsq [U])");
        goto fail;
    }
    const uint16_t *cv = (const uint16_t *)codes.buf;
    const float *tv = (const float *)table.buf, *sv = (const float *)shift.buf;
    float *ov = (float *)out.buf;
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
    }
    Py_END_ALLOW_THREADS
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

static PyMethodDef methods[] = {
    {"shifted", shifted, METH_VARARGS,
     "shifted(codes, table, shift, out, sumsq): out = table[codes] - shift; sumsq += out**2"},
    {"histogram", histogram, METH_VARARGS,
     "histogram(codes, pattern, lut, hist, bins): hist[u, pattern[t]*bins + lut[codes[t, u]]] += 1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels",
                                    "probe's compiled inner loops (float16 values, AUC histograms)", -1, methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }

/*
 * Decode a serialized RocksDB WriteBatch straight into put/delete/delete_range calls.
 *
 * The C twin of hacluster.wal.batch._replay_batch_py, for the replica's apply path: the
 * pure-Python decoder costs about as much per op as RocksDB's own write, and rocksdict holds
 * the GIL while writing, so decoding cannot overlap with it in another thread.
 *
 * It accepts exactly what the Python decoder accepts. On any malformed or unsupported input
 * it returns None without raising, and the Python wrapper re-decodes with the Python version
 * to raise the precise WalCorruption/WalUnsupported. Exceptions raised by the callbacks or by
 * the handle lookup propagate unchanged. Every read is bounds-checked against the payload
 * length; nothing here keeps a reference past the call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

enum { PARSE_OK = 0, PARSE_BAD = 1, PARSE_RAISED = 2 };

static int
read_varint32(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, uint32_t *out)
{
    uint64_t result = 0;
    for (int shift = 0; shift <= 28; shift += 7) {
        if (*i >= n)
            return PARSE_BAD;
        unsigned char b = p[(*i)++];
        result |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            if (result > 0xFFFFFFFFull)
                return PARSE_BAD;
            *out = (uint32_t)result;
            return PARSE_OK;
        }
    }
    return PARSE_BAD;
}

/* A varint32-length-prefixed slice starting at *i; sets *start and *len. */
static int
read_slice(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, Py_ssize_t *start,
           Py_ssize_t *len)
{
    uint32_t l;
    if (read_varint32(p, n, i, &l) != PARSE_OK)
        return PARSE_BAD;
    if ((Py_ssize_t)l > n - *i)
        return PARSE_BAD;
    *start = *i;
    *len = (Py_ssize_t)l;
    *i += (Py_ssize_t)l;
    return PARSE_OK;
}

typedef struct {
    PyObject *handles;
    long cached_cf;
    PyObject *cached_handle; /* strong reference, released by replay() */
} HandleCache;

static PyObject *
lookup_handle(HandleCache *cache, uint32_t cf)
{
    if ((long)cf == cache->cached_cf)
        return cache->cached_handle;
    PyObject *key = PyLong_FromUnsignedLong(cf);
    if (key == NULL)
        return NULL;
    PyObject *handle = PyObject_GetItem(cache->handles, key); /* new ref; KeyError if absent */
    Py_DECREF(key);
    if (handle == NULL)
        return NULL;
    Py_XDECREF(cache->cached_handle);
    cache->cached_cf = (long)cf;
    cache->cached_handle = handle;
    return handle;
}

static int
call3(PyObject *fn, PyObject *a, PyObject *b, PyObject *c)
{
    PyObject *args[3] = {a, b, c};
    PyObject *r = PyObject_Vectorcall(fn, args, c == NULL ? 2 : 3, NULL);
    if (r == NULL)
        return PARSE_RAISED;
    Py_DECREF(r);
    return PARSE_OK;
}

static int
emit(PyObject *fn, const unsigned char *p, Py_ssize_t s1, Py_ssize_t l1, Py_ssize_t s2,
     Py_ssize_t l2, PyObject *handle)
{
    PyObject *a = PyBytes_FromStringAndSize((const char *)p + s1, l1);
    if (a == NULL)
        return PARSE_RAISED;
    int rc;
    if (s2 < 0) {
        rc = call3(fn, a, handle, NULL);
    } else {
        PyObject *b = PyBytes_FromStringAndSize((const char *)p + s2, l2);
        if (b == NULL) {
            Py_DECREF(a);
            return PARSE_RAISED;
        }
        rc = call3(fn, a, b, handle);
        Py_DECREF(b);
    }
    Py_DECREF(a);
    return rc;
}

static int
replay_entries(const unsigned char *p, Py_ssize_t n, PyObject *put, PyObject *del,
               PyObject *del_range, HandleCache *cache, uint32_t count)
{
    Py_ssize_t i = 12;
    uint32_t done = 0;
    while (i < n) {
        unsigned char tag = p[i++];
        uint32_t cf = 0;
        Py_ssize_t s1, l1, s2, l2;
        PyObject *handle;
        int rc;
        switch (tag) {
        case 0x5: case 0x4: case 0x8: case 0xE:
            if (read_varint32(p, n, &i, &cf) != PARSE_OK)
                return PARSE_BAD;
            break;
        case 0x1: case 0x0: case 0x7: case 0xF: case 0x3:
            break;
        default:
            return PARSE_BAD; /* unsupported: the Python decoder names the tag */
        }
        if (tag == 0x3) { /* LogData: no sequence number, nothing to apply */
            if (read_slice(p, n, &i, &s1, &l1) != PARSE_OK)
                return PARSE_BAD;
            continue;
        }
        if (read_slice(p, n, &i, &s1, &l1) != PARSE_OK)
            return PARSE_BAD;
        if (tag == 0x1 || tag == 0x5 || tag == 0xE || tag == 0xF) {
            if (read_slice(p, n, &i, &s2, &l2) != PARSE_OK)
                return PARSE_BAD;
        } else {
            s2 = -1;
            l2 = 0;
        }
        if (tag == 0xE || tag == 0xF) {
            /* A range whose end sorts before its begin: RocksDB would log it, then fail the
             * memtable insert half-way. Bytewise, like the Python decoder. */
            Py_ssize_t common = l1 < l2 ? l1 : l2;
            int c = common > 0 ? memcmp(p + s1, p + s2, (size_t)common) : 0;
            if (c > 0 || (c == 0 && l1 > l2))
                return PARSE_BAD;
        }
        done++;
        if (put == NULL) /* validate(): parse only */
            continue;
        handle = lookup_handle(cache, cf);
        if (handle == NULL)
            return PARSE_RAISED;
        if (tag == 0x1 || tag == 0x5)
            rc = emit(put, p, s1, l1, s2, l2, handle);
        else if (tag == 0xE || tag == 0xF)
            rc = emit(del_range, p, s1, l1, s2, l2, handle);
        else
            rc = emit(del, p, s1, l1, -1, 0, handle);
        if (rc != PARSE_OK)
            return rc;
    }
    return done == count ? PARSE_OK : PARSE_BAD;
}

static PyObject *run(Py_buffer view, PyObject *put, PyObject *del, PyObject *del_range,
                     PyObject *handles);

static PyObject *
replay(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    PyObject *put, *del, *del_range, *handles;
    if (!PyArg_ParseTuple(args, "y*OOOO:replay", &view, &put, &del, &del_range, &handles))
        return NULL;
    return run(view, put, del, del_range, handles);
}

static PyObject *
validate(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_buffer view;
    if (!PyArg_ParseTuple(args, "y*:validate", &view))
        return NULL;
    return run(view, NULL, NULL, NULL, NULL);
}

/* Parses and (unless put is NULL) replays; releases the buffer. */
static PyObject *
run(Py_buffer view, PyObject *put, PyObject *del, PyObject *del_range, PyObject *handles)
{
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len;
    if (n < 12) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    uint64_t seq = 0;
    uint32_t count = 0;
    for (int k = 7; k >= 0; k--) /* fixed64 and fixed32, little-endian on every host */
        seq = (seq << 8) | p[k];
    for (int k = 11; k >= 8; k--)
        count = (count << 8) | p[k];
    HandleCache cache = {handles, -1, NULL};
    int rc = replay_entries(p, n, put, del, del_range, &cache, count);
    Py_XDECREF(cache.cached_handle);
    PyBuffer_Release(&view);
    if (rc == PARSE_RAISED)
        return NULL;
    if (rc == PARSE_BAD)
        Py_RETURN_NONE;
    return Py_BuildValue("(KI)", (unsigned long long)seq, (unsigned int)count);
}

static PyMethodDef methods[] = {
    {"replay", replay, METH_VARARGS,
     "replay(payload, put, delete, delete_range, handles) -> (seq, count), or None if the "
     "payload is malformed or holds an unsupported entry."},
    {"validate", validate, METH_VARARGS,
     "validate(payload) -> (seq, count), or None: the same checks as replay, no calls."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_replay",
    .m_doc = "C WriteBatch replay (see hacluster.wal.batch.replay_batch).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__replay(void)
{
    return PyModule_Create(&module);
}

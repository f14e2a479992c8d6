/* The per-record and per-tensor loops of the torch.save zip reader (`_zipdir.py`,
 * `_fast_torch_zip.py`) in C: an optional extension, built with the package where a compiler is
 * (setup.py), imported by `_torchzip_speedups.py`.
 *
 * Every function here reads only the common case, and says None for anything else: the Python
 * code it stands in for then runs from the start and decides (and words any refusal). So this
 * module never accepts what the Python path would refuse, never refuses on its own, and where it
 * answers, its answer is the Python path's, value for value (tests/test_torchzip_speedups.py holds
 * the two to that on real and on damaged files). What it saves is the interpreter's work per
 * record: on a checkpoint of 8.4k tensors, a Python call or column operation per tensor costs
 * more than reading the tensor's bytes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MEMBER_SIZE 46
#define LOCAL_HEADER_SIZE 30
#define MAX32 0xFFFFFFFFu
#define TORCH_FLAGS (0x0008u | 0x0800u)

static uint32_t le16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* ---- Packer: a pickle's rebuild call, its arguments kept ------------------------------------ */

/* Called with exactly `nargs` positional arguments, it returns an instance of the tuple subclass
 * `cls` holding them, padded with None to `width` items: what `_rebuild_tensor_v2`'s Python stub
 * returns (a `Rebuilt`), without a Python frame per tensor. It has no attributes a pickle could
 * set (BUILD on it fails). */
typedef struct {
    PyObject_HEAD PyTypeObject *cls;
    Py_ssize_t nargs;
    Py_ssize_t width;
} Packer;

static void packer_dealloc(Packer *self) {
    Py_XDECREF(self->cls);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *packer_call(Packer *self, PyObject *args, PyObject *kwargs) {
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0) {
        PyErr_SetString(PyExc_TypeError, "takes no keyword arguments");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n != self->nargs) {
        PyErr_Format(PyExc_TypeError, "takes %zd positional arguments but %zd were given",
                     self->nargs, n);
        return NULL;
    }
    PyObject *out = self->cls->tp_alloc(self->cls, self->width);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < self->width; i++) {
        PyObject *item = i < n ? PyTuple_GET_ITEM(args, i) : Py_None;
        Py_INCREF(item);
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

static PyTypeObject PackerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "normscope.sources._torchzip.Packer",
    .tp_basicsize = sizeof(Packer),
    .tp_dealloc = (destructor)packer_dealloc,
    .tp_call = (ternaryfunc)packer_call,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "packer(cls, nargs, width): a call that returns its arguments as a `cls` tuple",
};

static PyObject *make_packer(PyObject *module, PyObject *args) {
    PyObject *cls;
    Py_ssize_t nargs, width;
    if (!PyArg_ParseTuple(args, "O!nn", &PyType_Type, &cls, &nargs, &width)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)cls, &PyTuple_Type) || nargs < 0 || width < nargs) {
        PyErr_SetString(PyExc_ValueError, "a tuple subclass, and 0 <= nargs <= width");
        return NULL;
    }
    Packer *packer = PyObject_New(Packer, &PackerType);
    if (packer == NULL) {
        return NULL;
    }
    Py_INCREF(cls);
    packer->cls = (PyTypeObject *)cls;
    packer->nargs = nargs;
    packer->width = width;
    return (PyObject *)packer;
}

/* persistent_load for a pickle whose ids are checked afterwards, all at once: the id itself. */
static PyObject *identity(PyObject *module, PyObject *value) {
    Py_INCREF(value);
    return value;
}

/* ---- Buffers ------------------------------------------------------------------------------ */

/* A contiguous int64 buffer of exactly `count` items (numpy's int64 columns), or an error. */
static int int64_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t count, int writable) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) {
        return -1;
    }
    if (view->itemsize != 8 || view->len != count * 8) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "an int64 column of the expected length");
        return -1;
    }
    return 0;
}

/* ---- The central directory (`_zipdir._members`) ------------------------------------------- */

/* members(directory, count, archive_size, crcs, sizes, offsets) -> names | None
 *
 * Walks the chain of `count` central directory headers from the first byte to the last, as
 * `_members` checks it, and fills the three int64 columns. None (the Python code decides) for
 * a zip64 field, a flag, method or disk torch does not write, a compressed member, a record past
 * the archive's end, a name that is not ASCII, a chain that breaks, or a member signature
 * anywhere but at the chain's links. */
static PyObject *members(PyObject *module, PyObject *args) {
    Py_buffer data, crcs, sizes, offsets;
    Py_ssize_t count;
    long long archive_size;
    PyObject *obj_crcs, *obj_sizes, *obj_offsets;
    if (!PyArg_ParseTuple(args, "y*nLOOO", &data, &count, &archive_size, &obj_crcs, &obj_sizes,
                          &obj_offsets)) {
        return NULL;
    }
    PyObject *result = NULL, *names = NULL;
    int have_crcs = 0, have_sizes = 0, have_offsets = 0;
    if (count <= 0) {
        goto decline;
    }
    if (int64_buffer(obj_crcs, &crcs, count, 1) < 0) goto done;
    have_crcs = 1;
    if (int64_buffer(obj_sizes, &sizes, count, 1) < 0) goto done;
    have_sizes = 1;
    if (int64_buffer(obj_offsets, &offsets, count, 1) < 0) goto done;
    have_offsets = 1;

    const uint8_t *raw = data.buf;
    Py_ssize_t len = data.len;
    int64_t *crc_out = crcs.buf, *size_out = sizes.buf, *offset_out = offsets.buf;
    names = PyList_New(count);
    if (names == NULL) goto done;
    Py_ssize_t pos = 0, i = 0;
    while (pos < len) {
        if (i >= count || len - pos < MEMBER_SIZE || memcmp(raw + pos, "PK\x01\x02", 4) != 0) {
            goto decline;
        }
        const uint8_t *h = raw + pos;
        uint32_t flags = le16(h + 8), method = le16(h + 10), crc = le32(h + 16);
        uint32_t csize = le32(h + 20), usize = le32(h + 24), name_len = le16(h + 28);
        uint32_t extra_len = le16(h + 30), comment_len = le16(h + 32), disk = le16(h + 34);
        uint32_t offset = le32(h + 42);
        Py_ssize_t next = pos + MEMBER_SIZE + (Py_ssize_t)name_len + extra_len + comment_len;
        if (next > len || usize == MAX32 || csize == MAX32 || offset == MAX32 ||
            (flags & ~TORCH_FLAGS) != 0 || method != 0 || disk != 0 || csize != usize ||
            (long long)offset + LOCAL_HEADER_SIZE + usize > archive_size) {
            goto decline;
        }
        const uint8_t *name = h + MEMBER_SIZE;
        for (uint32_t k = 0; k < name_len; k++) {
            if (name[k] >= 0x80) goto decline;
        }
        PyObject *text = PyUnicode_DecodeASCII((const char *)name, name_len, NULL);
        if (text == NULL) goto done;
        PyList_SET_ITEM(names, i, text);
        crc_out[i] = crc;
        size_out[i] = usize;
        offset_out[i] = offset;
        i++;
        pos = next;
    }
    if (i != count) goto decline;
    /* no member signature but the chain's own (`_members` finds members by their signatures) */
    Py_ssize_t found = 0;
    for (Py_ssize_t p = 0; p + 4 <= len;) {
        const uint8_t *at = memchr(raw + p, 'P', (size_t)(len - 3 - p));
        if (at == NULL) break;
        if (memcmp(at, "PK\x01\x02", 4) == 0) found++;
        p = (at - raw) + 1;
    }
    if (found != count) goto decline;
    result = names;
    names = NULL;
    goto done;
decline:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(names);
    if (have_crcs) PyBuffer_Release(&crcs);
    if (have_sizes) PyBuffer_Release(&sizes);
    if (have_offsets) PyBuffer_Release(&offsets);
    PyBuffer_Release(&data);
    return result;
}

/* data_starts(file, header_offsets, sizes, out) -> None
 *
 * `Records._data_starts`: where each record's bytes begin, after its local header, name and
 * extra field; -1 where the header is not one or the bytes run past the end of `file`. */
static PyObject *data_starts(PyObject *module, PyObject *args) {
    Py_buffer file, offsets, sizes, out;
    PyObject *obj_offsets, *obj_sizes, *obj_out;
    if (!PyArg_ParseTuple(args, "y*OOO", &file, &obj_offsets, &obj_sizes, &obj_out)) {
        return NULL;
    }
    if (PyObject_GetBuffer(obj_offsets, &offsets, PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&file);
        return NULL;
    }
    Py_ssize_t count = offsets.len / 8;
    if (offsets.itemsize != 8 || int64_buffer(obj_sizes, &sizes, count, 0) < 0) {
        if (offsets.itemsize != 8) PyErr_SetString(PyExc_ValueError, "int64 header offsets");
        PyBuffer_Release(&offsets);
        PyBuffer_Release(&file);
        return NULL;
    }
    if (int64_buffer(obj_out, &out, count, 1) < 0) {
        PyBuffer_Release(&sizes);
        PyBuffer_Release(&offsets);
        PyBuffer_Release(&file);
        return NULL;
    }
    const uint8_t *raw = file.buf;
    const int64_t size = file.len, *at = offsets.buf, *bytes = sizes.buf;
    int64_t *start = out.buf;
    /* Reading the headers maps the file's pages into the process (a fault per 64 KiB or so, the
     * bulk of this loop's time): the caller may run it beside other work, without the GIL. */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t offset = at[i], begin = -1;
        if (offset >= 0 && offset <= size - LOCAL_HEADER_SIZE && memcmp(raw + offset, "PK\x03\x04", 4) == 0) {
            const uint8_t *h = raw + offset;
            begin = offset + LOCAL_HEADER_SIZE + le16(h + 26) + le16(h + 28);
            if (bytes[i] < 0 || begin > size - bytes[i]) begin = -1;
        }
        start[i] = begin;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&file);
    Py_RETURN_NONE;
}

/* ---- The tensors' refs (`_fast_torch_zip._resolve` with refs) ------------------------------ */

/* A non-negative exact int that fits in int64, or -1. */
static long long small_index(PyObject *value) {
    if (!PyLong_CheckExact(value)) return -1;
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || n < 0) {
        PyErr_Clear();
        return -1;
    }
    return n;
}

/* The record a storage key names among `count`: its canonical decimal spelling only ("0" … str(
 * count - 1), as `_zipdir.record_numbers`); -1 for any other. */
static long long record_of(PyObject *key, Py_ssize_t count) {
    if (!PyUnicode_IS_ASCII(key)) return -1;
    Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    const char *digits = (const char *)PyUnicode_1BYTE_DATA(key);
    if (n == 0 || n > 18 || (digits[0] == '0' && n > 1)) return -1;
    long long value = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (digits[k] < '0' || digits[k] > '9') return -1;
        value = value * 10 + (digits[k] - '0');
    }
    return value < count ? value : -1;
}

typedef struct {
    PyObject *kind;  /* borrowed: the first storage type the key was named with */
    long long numel;
    long long row;
} StorageFacts;

/* One tensor's checked facts. */
typedef struct {
    long long row, offset, count, itemsize;
    PyObject *dtype_name; /* borrowed from the facts table */
    int in_place;
} TensorFacts;

#define MAX_DIMS 64

/* resolve_refs(rebuilt, labels, starts, sizes, base, file_size, records, ref_type,
 *              storage_type, ordered_dict, dtype_facts) -> list | None
 *
 * For each `Rebuilt` (a tuple of 8, `rebuilt`), the `ref_type` (`MappedTensorRef`) that
 * `_resolve(..., refs=True)` makes for it, or None where that makes a tensor (`_built`): a
 * scalar, a view, a dtype not read in place. `dtype_facts` maps every dtype object to (name,
 * itemsize, read in place). None for the whole call where any check of `_checked`, of the
 * storages or of the records would fail or is not plainly passed (an int past int64, a str
 * subclass, a dtype missing from the table): `_resolve` then runs in Python. */
static PyObject *resolve_refs(PyObject *module, PyObject *args) {
    PyObject *rebuilt, *labels, *obj_starts, *obj_sizes, *records, *ref_type, *storage_type;
    PyObject *ordered_dict, *dtype_facts;
    long long base, file_size;
    if (!PyArg_ParseTuple(args, "O!O!OOLLOO!O!O!O!", &PyList_Type, &rebuilt, &PyList_Type, &labels,
                          &obj_starts, &obj_sizes, &base, &file_size, &records, &PyType_Type,
                          &ref_type, &PyType_Type, &storage_type, &PyType_Type, &ordered_dict,
                          &PyDict_Type, &dtype_facts)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(rebuilt);
    if (PyList_GET_SIZE(labels) != n) {
        PyErr_SetString(PyExc_ValueError, "a label for each tensor");
        return NULL;
    }
    Py_buffer starts, sizes;
    if (PyObject_GetBuffer(obj_starts, &starts, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    Py_ssize_t record_count = starts.len / 8;
    if (starts.itemsize != 8 || int64_buffer(obj_sizes, &sizes, record_count, 0) < 0) {
        if (starts.itemsize != 8) PyErr_SetString(PyExc_ValueError, "int64 record starts");
        PyBuffer_Release(&starts);
        return NULL;
    }
    const int64_t *record_start = starts.buf, *record_bytes = sizes.buf;

    PyObject *result = NULL, *storages = NULL, *empty = NULL, *out = NULL;
    StorageFacts *facts_of = NULL;
    TensorFacts *tensors = NULL;
    PyObject *dtype_attr = PyUnicode_InternFromString("dtype");
    PyObject *itemsize_attr = PyUnicode_InternFromString("itemsize");
    if (dtype_attr == NULL || itemsize_attr == NULL) goto done;
    storages = PyDict_New(); /* key -> index into facts_of */
    empty = PyUnicode_FromStringAndSize("", 0);
    facts_of = PyMem_Malloc(sizeof(StorageFacts) * (n ? n : 1));
    tensors = PyMem_Malloc(sizeof(TensorFacts) * (n ? n : 1));
    if (storages == NULL || empty == NULL || facts_of == NULL || tensors == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t storage_count = 0;

    /* Pass 1: every check, no object made. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *r = PyList_GET_ITEM(rebuilt, i);
        if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) != 8) goto decline;
        PyObject *sid = PyTuple_GET_ITEM(r, 0);
        if (!PyTuple_CheckExact(sid) || PyTuple_GET_SIZE(sid) != 5) goto decline;
        PyObject *tag = PyTuple_GET_ITEM(sid, 0), *kind = PyTuple_GET_ITEM(sid, 1);
        PyObject *key = PyTuple_GET_ITEM(sid, 2), *location = PyTuple_GET_ITEM(sid, 3);
        if (!PyUnicode_CheckExact(tag) || PyUnicode_CompareWithASCIIString(tag, "storage") != 0 ||
            Py_TYPE(kind) != (PyTypeObject *)storage_type || !PyUnicode_CheckExact(key) ||
            !PyUnicode_CheckExact(location)) {
            goto decline;
        }
        long long numel = small_index(PyTuple_GET_ITEM(sid, 4));
        long long offset = small_index(PyTuple_GET_ITEM(r, 1));
        PyObject *size = PyTuple_GET_ITEM(r, 2), *stride = PyTuple_GET_ITEM(r, 3);
        PyObject *requires_grad = PyTuple_GET_ITEM(r, 4), *hooks = PyTuple_GET_ITEM(r, 5);
        if (numel < 0 || offset < 0 || offset > file_size || !PyTuple_CheckExact(size) ||
            !PyTuple_CheckExact(stride) || PyTuple_GET_SIZE(size) != PyTuple_GET_SIZE(stride) ||
            PyTuple_GET_SIZE(size) > MAX_DIMS || !PyBool_Check(requires_grad) ||
            !(hooks == Py_None ||
              (Py_TYPE(hooks) == (PyTypeObject *)ordered_dict && PyDict_GET_SIZE(hooks) == 0))) {
            goto decline;
        }
        /* the count, and whether the strides are the contiguous ones (steps of max(dim, 1)) */
        Py_ssize_t ndim = PyTuple_GET_SIZE(size);
        long long count = 1, step = 1;
        int contiguous = 1;
        for (Py_ssize_t d = ndim - 1; d >= 0; d--) {
            long long dim = small_index(PyTuple_GET_ITEM(size, d));
            long long along = small_index(PyTuple_GET_ITEM(stride, d));
            if (dim < 0 || along < 0) goto decline;
            if (along != step) contiguous = 0;
            long long grow = dim > 1 ? dim : 1;
            if (__builtin_mul_overflow(step, grow, &step) || __builtin_mul_overflow(count, dim, &count)) {
                goto decline;
            }
        }
        if (count > file_size) goto decline; /* `_bounded` would clip it: Python's case */

        /* the storage: the first id of a key fixes its type and size, and no other may differ */
        PyObject *index = PyDict_GetItemWithError(storages, key);
        Py_ssize_t s;
        if (index != NULL) {
            s = PyLong_AsSsize_t(index);
            if (facts_of[s].kind != kind || facts_of[s].numel != numel) goto decline;
        } else {
            if (PyErr_Occurred()) goto done;
            s = storage_count++;
            PyObject *value = PyLong_FromSsize_t(s);
            if (value == NULL || PyDict_SetItem(storages, key, value) < 0) {
                Py_XDECREF(value);
                goto done;
            }
            Py_DECREF(value);
            PyObject *item = PyObject_GetAttr(kind, itemsize_attr);
            if (item == NULL) goto done;
            long long itemsize = small_index(item);
            Py_DECREF(item);
            long long nbytes, row = record_of(key, record_count);
            if (itemsize < 0 || row < 0 || __builtin_mul_overflow(itemsize, numel, &nbytes) ||
                record_start[row] < 0 || record_bytes[row] != nbytes) {
                goto decline;
            }
            facts_of[s].kind = kind;
            facts_of[s].numel = numel;
            facts_of[s].row = row;
        }

        /* its dtype: the storage's (v2), or its own (v3) */
        PyObject *dtype = PyTuple_GET_ITEM(r, 6);
        PyObject *owned = NULL;
        if (dtype == Py_None) {
            dtype = owned = PyObject_GetAttr(kind, dtype_attr);
            if (dtype == NULL) goto done;
        }
        PyObject *facts = PyDict_GetItemWithError(dtype_facts, dtype);
        Py_XDECREF(owned);
        if (facts == NULL) {
            if (PyErr_Occurred()) goto done;
            goto decline;
        }
        if (!PyTuple_CheckExact(facts) || PyTuple_GET_SIZE(facts) != 3) {
            PyErr_SetString(PyExc_ValueError, "dtype facts are (name, itemsize, in place)");
            goto done;
        }
        TensorFacts *t = &tensors[i];
        t->row = facts_of[s].row;
        t->offset = offset;
        t->count = count;
        t->itemsize = small_index(PyTuple_GET_ITEM(facts, 1));
        t->dtype_name = PyTuple_GET_ITEM(facts, 0);
        t->in_place = count > 1 && contiguous && PyTuple_GET_ITEM(facts, 2) == Py_True;
        if (t->itemsize < 0 || t->itemsize > 16) goto decline;
        /* offset and count are at most the file's size (< 2**58), item sizes at most 16 */
        if (t->in_place && (offset + count) * t->itemsize > record_bytes[t->row]) goto decline;
    }

    /* Pass 2: the refs. */
    out = PyList_New(n);
    if (out == NULL) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        TensorFacts *t = &tensors[i];
        if (!t->in_place) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(out, i, Py_None);
            continue;
        }
        PyObject *r = PyList_GET_ITEM(rebuilt, i);
        PyObject *label = PyList_GET_ITEM(labels, i);
        if (!PyUnicode_CheckExact(label)) label = empty;
        PyObject *ref = ((PyTypeObject *)ref_type)->tp_alloc((PyTypeObject *)ref_type, 9);
        if (ref == NULL) goto done;
        PyList_SET_ITEM(out, i, ref);
        PyObject *count = PyLong_FromLongLong(t->count);
        PyObject *address = PyLong_FromLongLong(base + record_start[t->row] + t->offset * t->itemsize);
        PyObject *row = PyLong_FromLongLong(t->row);
        if (count == NULL || address == NULL || row == NULL) {
            Py_XDECREF(count);
            Py_XDECREF(address);
            Py_XDECREF(row);
            goto done;
        }
        PyObject *fields[9] = {label, PyTuple_GET_ITEM(r, 2), t->dtype_name, count, address, records,
                               row, PyTuple_GET_ITEM(r, 1), PyTuple_GET_ITEM(r, 3)};
        /* The shape and stride hold ints only (checked above): the collector would untrack them
         * at its first pass over them, after scanning each once; untracked now, that first
         * collection after an open of thousands of tensors has two thirds less to scan. */
        for (int k = 1; k < 9; k += 7) {
            if (PyObject_GC_IsTracked(fields[k])) PyObject_GC_UnTrack(fields[k]);
        }
        for (int k = 0; k < 9; k++) {
            if (k != 3 && k != 4 && k != 6) Py_INCREF(fields[k]);
            PyTuple_SET_ITEM(ref, k, fields[k]);
        }
        /* The ref itself is untracked too: no cycle runs through it (its fields are strs, ints,
         * int tuples and the archive, which refers to no ref), and 34k tracked refs made the
         * first collection after an open of a 1 GB ResNet-shaped run scan ~17 ms, the next
         * ones as long again. Reference counting frees it as before. */
        if (PyObject_GC_IsTracked(ref)) PyObject_GC_UnTrack(ref);
    }
    result = out;
    out = NULL;
    goto done;
decline:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(out);
    Py_XDECREF(storages);
    Py_XDECREF(empty);
    Py_XDECREF(dtype_attr);
    Py_XDECREF(itemsize_attr);
    PyMem_Free(facts_of);
    PyMem_Free(tensors);
    PyBuffer_Release(&sizes);
    PyBuffer_Release(&starts);
    return result;
}

static PyMethodDef torchzip_methods[] = {
    {"packer", make_packer, METH_VARARGS, "packer(cls, nargs, width) -> Packer"},
    {"identity", identity, METH_O, "identity(value) -> value"},
    {"members", members, METH_VARARGS, "members(directory, count, archive_size, crcs, sizes, offsets)"},
    {"data_starts", data_starts, METH_VARARGS, "data_starts(file, header_offsets, sizes, out)"},
    {"resolve_refs", resolve_refs, METH_VARARGS,
     "resolve_refs(rebuilt, labels, starts, sizes, base, file_size, records, ref_type, "
     "storage_type, ordered_dict, dtype_facts)"},
    {NULL, NULL, 0, NULL},
};

/* Raised to 2 where a function's meaning changes; the Python side imports only its own. */
#define TORCHZIP_ABI 1

static struct PyModuleDef torchzip_module = {
    PyModuleDef_HEAD_INIT, "_torchzip",
    "The torch.save zip reader's per-record loops (see normscope/sources/_torchzip.c).", -1,
    torchzip_methods,
};

PyMODINIT_FUNC PyInit__torchzip(void) {
    if (PyType_Ready(&PackerType) < 0) return NULL;
    PyObject *module = PyModule_Create(&torchzip_module);
    if (module == NULL) return NULL;
    Py_INCREF(&PackerType);
    if (PyModule_AddObject(module, "Packer", (PyObject *)&PackerType) < 0) {
        Py_DECREF(&PackerType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI", TORCHZIP_ABI) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/* The Python module around `_fused.c`: built with the package (setup.py), imported by
 * `normscope/engine/fused.py`. It carries no Python-facing wrapper of its own: it publishes the
 * addresses of the kernel's entry points, and fused.py calls them through ctypes, which converts
 * the eleven plain arguments in one step and releases the GIL, so the engine's worker threads run
 * the kernel in parallel.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

void normscope_reduce(int64_t count, const int64_t *numel, const void *const *x, const int32_t *xt,
                      const void *const *y, const int32_t *yt, const void *const *m,
                      const int32_t *mt, const void *const *v, const int32_t *vt, double *out);
int normscope_reduce_guarded(int64_t count, const int64_t *numel, const void *const *x,
                             const int32_t *xt, const void *const *y, const int32_t *yt,
                             const void *const *m, const int32_t *mt, const void *const *v,
                             const int32_t *vt, double *out);
int normscope_guard_install(void);
void normscope_reduce_chain(int64_t count, const int64_t *numel, int64_t snapshots, int64_t first,
                            int64_t stride, const void *const *x, const int32_t *xt, double *out);
int normscope_reduce_chain_guarded(int64_t count, const int64_t *numel, int64_t snapshots,
                                   int64_t first, int64_t stride, const void *const *x,
                                   const int32_t *xt, double *out);
void normscope_half_to_float(int64_t n, const uint16_t *src, float *dst, int portable);
void normscope_bf16_sums(int64_t n, const uint16_t *x, const uint16_t *y, double *out, int path);
int normscope_fused_abi(void);

/* Publish one function's address as a module attribute; 0 on success. */
static int add_address(PyObject *module, const char *name, void *function) {
    PyObject *address = PyLong_FromVoidPtr(function);
    if (address == NULL || PyModule_AddObject(module, name, address) < 0) {
        Py_XDECREF(address);
        return -1;
    }
    return 0;
}

static struct PyModuleDef fused_module = {
    PyModuleDef_HEAD_INIT,
    "_fused",
    "normscope's fused CPU reduction (see normscope/engine/_fused.c).",
    -1,
    NULL,
};

PyMODINIT_FUNC PyInit__fused(void) {
    PyObject *module = PyModule_Create(&fused_module);
    if (module == NULL) {
        return NULL;
    }
    if (add_address(module, "reduce_address", (void *)normscope_reduce) < 0 ||
        add_address(module, "reduce_guarded_address", (void *)normscope_reduce_guarded) < 0 ||
        add_address(module, "guard_install_address", (void *)normscope_guard_install) < 0 ||
        add_address(module, "reduce_chain_address", (void *)normscope_reduce_chain) < 0 ||
        add_address(module, "reduce_chain_guarded_address",
                    (void *)normscope_reduce_chain_guarded) < 0 ||
        add_address(module, "half_to_float_address", (void *)normscope_half_to_float) < 0 ||
        add_address(module, "bf16_sums_address", (void *)normscope_bf16_sums) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "ABI", normscope_fused_abi()) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

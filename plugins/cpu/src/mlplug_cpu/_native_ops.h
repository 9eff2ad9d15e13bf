/* The small ops of mlplug_cpu._native (_native_ops.c): their Python entry points, listed in
 * _native.c's method table through MLPLUG_OPS_METHODS. */
#ifndef MLPLUG_NATIVE_OPS_H
#define MLPLUG_NATIVE_OPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *mlplug_ops_binary(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_rms_norm(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_softmax(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_unary(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_gated(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_rope(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_set_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
PyObject *mlplug_ops_isa(PyObject *self, PyObject *args);
PyObject *mlplug_ops_set_isa(PyObject *self, PyObject *arg);

#define MLPLUG_OPS_FASTCALL(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))fn, METH_FASTCALL, doc}

#define MLPLUG_OPS_METHODS                                                                     \
    MLPLUG_OPS_FASTCALL("ops_binary", mlplug_ops_binary,                                       \
                        "add/sub/mul/div (op 0-3) of TensorRefs (see _native_ops.c)."),        \
        MLPLUG_OPS_FASTCALL("ops_rms_norm", mlplug_ops_rms_norm,                               \
                            "rms_norm (+ weight, + residual) of TensorRefs."),                 \
        MLPLUG_OPS_FASTCALL("ops_softmax", mlplug_ops_softmax, "softmax of TensorRefs."),      \
        MLPLUG_OPS_FASTCALL("ops_gated", mlplug_ops_gated, "swiglu (0) / geglu (1)."),         \
        MLPLUG_OPS_FASTCALL("ops_unary", mlplug_ops_unary, "scale, clamp and unary ops."),    \
        MLPLUG_OPS_FASTCALL("ops_rope", mlplug_ops_rope, "The fused rope op."),                \
        MLPLUG_OPS_FASTCALL("ops_set_rows", mlplug_ops_set_rows, "set_rows (scatter)."),       \
        MLPLUG_OPS_FASTCALL("ops_rows", mlplug_ops_rows, "rows (gather)."),                    \
        {"ops_isa", mlplug_ops_isa, METH_NOARGS, "The small ops' instruction set."},           \
        {"ops_set_isa", mlplug_ops_set_isa, METH_O,                                            \
         "Use the small ops of one instruction set (generic, avx2); False if absent."}

#endif

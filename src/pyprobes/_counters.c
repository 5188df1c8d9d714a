/* _counters.c: Counters, a probe's nhit/nmissed/nfault (part of _speedups.c).
 *
 * Owns the Counters type and the handler cache's generation (g_dict_gen), which
 * Counters.handlers_changed() bumps: the one hot value the cold Probe.__setattr__ writes. */

/* --- Counters: nhit, nmissed, nfault of one probe ------------------------------------------
 * Kept in C so that a hit costs one increment, not an int allocation. ccore attaches one to
 * each probe it registers (``probe._counters``, the registry asks ccore.new_counters()), and
 * Probe's nhit/nmissed/nfault properties read and write its int members. Its
 * handlers_changed() is what Probe.__setattr__ calls when a handler attribute is stored or
 * deleted (see the handler cache, under Site). */

typedef struct {
    PyObject_HEAD
    long long v[3]; /* nhit, nmissed, nfault */
} Counters;

static uint64_t g_dict_gen = 1; /* the handler cache's generation (see Site) */

static PyObject *
counters_handlers_changed(PyObject *self, PyObject *unused)
{
    g_dict_gen++;
    Py_RETURN_NONE;
}

static PyMemberDef counters_members[] = {
    {"nhit", Py_T_LONGLONG, offsetof(Counters, v[0]), 0, "Hits."},
    {"nmissed", Py_T_LONGLONG, offsetof(Counters, v[1]), 0, "Missed kretprobe entries."},
    {"nfault", Py_T_LONGLONG, offsetof(Counters, v[2]), 0, "Faults."},
    {NULL},
};

static PyMethodDef counters_methods[] = {
    {"handlers_changed", counters_handlers_changed, METH_NOARGS,
     "A handler attribute of the probe changed: the next hit reads them again."},
    {NULL},
};

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.Counters",
    .tp_basicsize = sizeof(Counters),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Counters(): the hit, miss and fault counters of one probe (all 0).",
    .tp_members = counters_members,
    .tp_methods = counters_methods,
    .tp_new = PyType_GenericNew,
};

/* The Counters ccore attached to a probe (new reference). */
static Counters *
counters_of(PyObject *probe)
{
    PyObject *c = PyObject_GetAttr(probe, g_cfg->s_counters);
    if (c != NULL && !Py_IS_TYPE(c, &CountersType)) {
        PyErr_Format(PyExc_TypeError, "%R was not registered with the C core (its counters "
                     "are a %.100s)", probe, Py_TYPE(c)->tp_name);
        Py_CLEAR(c);
    }
    return (Counters *)c;
}

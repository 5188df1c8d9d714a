/* _module.c: the module (part of _speedups.c).
 *
 * Owns setup() and the other module functions, the Callback type, the module definition and
 * its initialisation. Everything here is cold: it runs at import, at setup, or when ccore
 * files or drops a table. */

/* --- setup --------------------------------------------------------------------------------- */

static PyTypeObject *
make_subtype(const char *name, PyObject *base, Py_ssize_t extra, PyType_Slot *slots,
             PyMemberDef *members, Py_ssize_t *off, Py_ssize_t *nslots)
{
    if (!PyType_Check(base)) {
        PyErr_Format(PyExc_TypeError, "%s: base must be a class", name);
        return NULL;
    }
    PyTypeObject *bt = (PyTypeObject *)base;
    if (bt->tp_itemsize != 0 || bt->tp_dictoffset != 0 || bt->tp_weaklistoffset != 0 ||
        (bt->tp_basicsize - (Py_ssize_t)sizeof(PyObject)) % (Py_ssize_t)sizeof(PyObject *)) {
        PyErr_Format(PyExc_TypeError, "%s: base must be a __slots__ class without __dict__",
                     name);
        return NULL;
    }
    *off = bt->tp_basicsize;
    *nslots = (bt->tp_basicsize - (Py_ssize_t)sizeof(PyObject)) / (Py_ssize_t)sizeof(PyObject *);
    for (PyMemberDef *m = members; m->name != NULL; m++) {
        m->offset += *off;
    }
    PyType_Spec spec = {
        .name = name,
        .basicsize = (int)(bt->tp_basicsize + extra),
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
        .slots = slots,
    };
    return (PyTypeObject *)PyType_FromSpecWithBases(&spec, base);
}

static PyObject *
setup(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ProbeContext", "KretprobeInstance", "DISABLE", "fault",
                             "line_of", "pending_insn", "pending_line",
                             "disabled_codes", "close_emits_nothing", NULL};
    PyObject *ctx_base, *ri_base, *disable, *fault, *line_of;
    PyObject *pins, *pline, *disabled;
    int close_emits_nothing;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOO!O!O!p:setup", kwlist, &ctx_base,
                                     &ri_base, &disable, &fault, &line_of, &PyDict_Type, &pins,
                                     &PyDict_Type, &pline, &PySet_Type, &disabled,
                                     &close_emits_nothing)) {
        return NULL;
    }
    if (g_cfg != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pyprobes._speedups.setup() was called already");
        return NULL;
    }
    SpeedupsState *st = PyModule_GetState(mod);
    static const struct {
        size_t at;
        const char *text;
    } names[] = {{offsetof(SpeedupsState, s_kind), "kind"},
                 {offsetof(SpeedupsState, s_rstate), "_rstate"},
                 {offsetof(SpeedupsState, s_counters), "_counters"},
                 {offsetof(SpeedupsState, s_f_lasti), "f_lasti"},
                 {offsetof(SpeedupsState, s_f_lineno), "f_lineno"},
                 {offsetof(SpeedupsState, s_clear), "clear"},
                 {offsetof(SpeedupsState, s_co_qualname), "co_qualname"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        PyObject **slot = (PyObject **)((char *)st + names[i].at);
        if (*slot == NULL && (*slot = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return NULL;
        }
    }
    /* fill the offsets of our members (relative to our data) before making the types */
    ri_members[0].offset = offsetof(RiData, rp);
    ri_members[1].offset = offsetof(RiData, thread_id);
    CtxType = make_subtype("pyprobes._speedups.ProbeContext", ctx_base, sizeof(CtxData),
                           ctx_slots, ctx_members, &ctx_off, &ctx_base_nslots);
    if (CtxType == NULL) {
        return NULL;
    }
    RiType = make_subtype("pyprobes._speedups.KretprobeInstance", ri_base, sizeof(RiData),
                          ri_slots, ri_members, &ri_off, &ri_base_nslots);
    if (RiType == NULL) {
        Py_CLEAR(CtxType);
        return NULL;
    }
    st->DISABLE = Py_NewRef(disable);
    st->fault = Py_NewRef(fault);
    st->line_of = Py_NewRef(line_of);
    st->disabled_codes = Py_NewRef(disabled);
    st->close_emits_nothing = close_emits_nothing;
    g_pending_insn = Py_NewRef(pins);
    g_pending_line = Py_NewRef(pline);
    st->watcher = PyDict_AddWatcher(probe_dict_changed);
    if (st->watcher < 0) {
        PyErr_Clear(); /* no watcher slot left: handlers are read from the dict at every hit */
    }
    g_cfg_module = Py_NewRef(mod); /* kept for good: the hot path's statics point into it */
    g_cfg = st;
    if (PyModule_AddObjectRef(mod, "ProbeContext", (PyObject *)CtxType) < 0 ||
        PyModule_AddObjectRef(mod, "KretprobeInstance", (PyObject *)RiType) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
set_entry_clock(PyObject *mod, PyObject *name)
{
    int want;
    if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "tsc") == 0) {
        want = 1;
    }
    else if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, "monotonic") == 0) {
        want = 0;
    }
    else {
        PyErr_Format(PyExc_ValueError, "entry clock must be 'tsc' or 'monotonic', not %R", name);
        return NULL;
    }
    return PyUnicode_FromString(tsc_enable(want) ? "tsc" : "monotonic");
}

/* frame_var(frame, name): a local (or cell) of a frame, read from the frame itself. On 3.12
 * frame.f_locals refreshes the very dict that locals() gave the program; this does not. */
static PyObject *
frame_var(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyFrame_Check(args[0]) || !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "frame_var(frame, name: str)");
        return NULL;
    }
    PyObject *v = PyFrame_GetVar((PyFrameObject *)args[0], args[1]);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_NameError)) {
        PyErr_Clear();
        PyErr_SetObject(PyExc_KeyError, args[1]); /* as the f_locals mapping says it */
    }
    return v;
}

static PyObject *
set_close_emits_nothing(PyObject *mod, PyObject *flag)
{
    int v = PyObject_IsTrue(flag);
    if (v < 0) {
        return NULL;
    }
    /* the configured state (before setup(): this module's, which setup() then overwrites) */
    (g_cfg != NULL ? g_cfg : (SpeedupsState *)PyModule_GetState(mod))->close_emits_nothing = v;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_VARARGS | METH_KEYWORDS,
     "Hand over the Python helpers and base classes (once, from ccore)."},
    {"make_site", (PyCFunction)(void (*)(void))make_site, METH_VARARGS | METH_KEYWORDS,
     "Build the dispatch table of one code object."},
    {"set_site", (PyCFunction)(void (*)(void))set_site, METH_FASTCALL,
     "set_site(code, site_or_None): publish or remove a code object's table."},
    {"forget", forget_site, METH_O, "forget(id(code)): drop the table of a collected code."},
    {"clear_sites", clear_sites, METH_NOARGS, "Drop every table (uninstall)."},
    {"nsites", nsites, METH_NOARGS, "How many code objects have a table."},
    {"set_entry_clock", set_entry_clock, METH_O,
     "set_entry_clock(name) -> name in use: 'tsc' (when this build and machine allow it) or"
     " 'monotonic'."},
    {"frame_var", (PyCFunction)(void (*)(void))frame_var, METH_FASTCALL,
     "frame_var(frame, name): a local of the frame, read without touching f_locals."},
    {"set_close_emits_nothing", set_close_emits_nothing, METH_O,
     "set_close_emits_nothing(flag): what pyprobes.engine.quirks measured (gh-140373)."},
    {"set_own_threads", set_own_threads, METH_O,
     "set_own_threads(idents): the threads on which no probe fires (pyprobes' own)."},
    {"text_numbers", text_numbers, METH_O,
     "text_numbers(ns) -> (duration, seconds): how text lines spell ns (for the tests)."},
    {"chrome_micros", chrome_micros, METH_O,
     "chrome_micros(ns) -> ns / 1000 as chrome events spell it (for the tests)."},
    {NULL},
};

static PyObject *
callback_repr(PyObject *self)
{
    return PyUnicode_FromFormat("<pyprobes._speedups.%s>", ((Callback *)self)->name);
}

static PyTypeObject CallbackType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.Callback",
    .tp_basicsize = sizeof(Callback),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A sys.monitoring callback of the C core.",
    .tp_vectorcall_offset = offsetof(Callback, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_repr = callback_repr,
};

static int
speedups_traverse(PyObject *mod, visitproc visit, void *arg)
{
    SpeedupsState *st = PyModule_GetState(mod);
    if (st != NULL) {
        Py_VISIT(st->DISABLE);
        Py_VISIT(st->fault);
        Py_VISIT(st->line_of);
        Py_VISIT(st->disabled_codes);
    }
    return 0;
}

/* (The configured module is never cleared or freed: g_cfg_module holds it. Any other module
 * object's state holds at most a close_emits_nothing flag.) */
static int
speedups_clear(PyObject *mod)
{
    SpeedupsState *st = PyModule_GetState(mod);
    if (st != NULL && st != g_cfg) {
        Py_CLEAR(st->DISABLE);
        Py_CLEAR(st->fault);
        Py_CLEAR(st->line_of);
        Py_CLEAR(st->disabled_codes);
        Py_CLEAR(st->s_kind);
        Py_CLEAR(st->s_rstate);
        Py_CLEAR(st->s_counters);
        Py_CLEAR(st->s_f_lasti);
        Py_CLEAR(st->s_f_lineno);
        Py_CLEAR(st->s_clear);
        Py_CLEAR(st->s_co_qualname);
    }
    return 0;
}

static void
speedups_free(void *mod)
{
    speedups_clear((PyObject *)mod);
}

#define INTERN(var, text)                                                                     \
    do {                                                                                      \
        var = PyUnicode_InternFromString(text);                                               \
        if (var == NULL) {                                                                    \
            return -1;                                                                        \
        }                                                                                     \
    } while (0)

/* The process-wide part, once: a module object made again (imported anew, or in a legacy
 * subinterpreter) shares it, as it shares the configured state (see _state.c). */
static int
init_statics(PyObject *m)
{
    static int done = 0;
    if (done) {
        return PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0 ||
                       PyModule_AddObjectRef(m, "Program", (PyObject *)&ProgType) < 0
                   ? -1
                   : 0;
    }
    INTERN(s_pre_handler, "pre_handler");
    INTERN(s_post_handler, "post_handler");
    INTERN(s_entry, "entry");
    INTERN(s_handler, "handler");
    INTERN(s_entry_handler, "entry_handler");
    g_zero = PyLong_FromLong(0);
    if (g_zero == NULL) {
        return -1;
    }
    if (PyType_Ready(&CountersType) < 0 || PyType_Ready(&CallbackType) < 0 ||
        PyType_Ready(&RetStateType) < 0 || PyType_Ready(&SiteType) < 0) {
        return -1;
    }
    if (prog_module_init(m) < 0) { /* (its statics, and adds Ring and Program) */
        return -1;
    }
    done = 1;
    return 0;
}

static int
speedups_exec(PyObject *m)
{
    SpeedupsState *st = PyModule_GetState(m);
    st->watcher = -1;
    if (init_statics(m) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0 ||
        PyModule_AddObjectRef(m, "RetState", (PyObject *)&RetStateType) < 0 ||
        PyModule_AddObjectRef(m, "Site", (PyObject *)&SiteType) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_FRAME_TOKEN", HAVE_FRAME_TOKEN) < 0) {
        return -1;
    }
    static const struct {
        const char *name;
        vectorcallfunc fn;
    } cbs[] = {{"on_start", on_start},   {"on_instruction", on_instruction},
               {"on_line", on_line},     {"on_return", on_return},
               {"on_yield", on_yield},   {"on_unwind", on_unwind}};
    for (size_t i = 0; i < sizeof(cbs) / sizeof(cbs[0]); i++) {
        Callback *cb = PyObject_New(Callback, &CallbackType);
        if (cb == NULL) {
            return -1;
        }
        cb->vectorcall = cbs[i].fn;
        cb->name = cbs[i].name;
        if (PyModule_AddObject(m, cbs[i].name, (PyObject *)cb) < 0) {
            Py_DECREF(cb);
            return -1;
        }
    }
    return 0;
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, speedups_exec},
    /* Shared-GIL (legacy) subinterpreters may import it, as they could the single-phase
     * module; own-GIL ones are refused (the core's statics are the process's). */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#ifdef Py_mod_gil
    /* Free-threaded builds: this core relies on the GIL (static tables, counters, the spare
     * context), and says so. pyprobes refuses such builds before importing it (tool.py). */
    {Py_mod_gil, Py_MOD_GIL_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyprobes._speedups",
    .m_doc = "The C dispatch core of pyprobes (see pyprobes.engine.ccore).",
    .m_size = sizeof(SpeedupsState),
    .m_methods = module_methods,
    .m_slots = speedups_slots,
    .m_traverse = speedups_traverse,
    .m_clear = speedups_clear,
    .m_free = speedups_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}

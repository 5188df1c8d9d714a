/* --- EVENT RECORDS: a program's events as fixed-size records in a bounded ring ------------------
 * Included by _program.c. A program made with a Ring writes one record per hit that passes its
 * filter: the time, the thread, the captured values (held, not copied: only exact scalars that
 * render as themselves are held raw; anything else is rendered at the hit by the ring's render
 * function, ours, so no object of the program is kept), the caller of a return. The probed
 * thread does O(1) work and no Python call for the common values; a full ring counts the
 * record lost for its probe and holds nothing.
 *
 * The reader (the writer thread) takes the records with take() (tuples, as
 * engine/records.py's RecordRing gives them) or take_json() (the JSON Lines text of
 * output/render_json.py, rendered here; a record with a value this fast path does not
 * spell exactly is rendered by the fallback given, so the output is the reference's byte for
 * byte). Both swap the full buffer for the spare one first, under the GIL, so hits that run
 * while the records are rendered land in the other buffer. Everything runs with the GIL. */

#define REC_MAXV 8

typedef struct {
    int probe;
    char is_return, is_async;
    short nvals;
    long long time_ns, duration;
    unsigned long tid;
    long lineno; /* the probed line (entry) or the caller's (return); -1: from code and offset */
    long offset; /* the probed instruction (entry) or the caller's (return), in bytes */
    PyObject *tname;   /* strong: the thread's name */
    PyObject *code;    /* strong: entry: the probed code; return: the caller's, or NULL */
    PyObject *module;  /* strong: return: the caller's __name__ (a str), or NULL */
    PyObject *retval;  /* strong: return: the rendered return value; NULL at entry */
    PyObject *exc;     /* strong: the exception's text, or NULL */
    PyObject *link;    /* strong: return: its instance's data[link_key] (--otlp), or NULL */
    PyObject *vals[REC_MAXV]; /* strong: rendered values */
} Rec;

typedef struct {
    PyObject_HEAD
    Rec *recs;  /* the buffer hits write into */
    Rec *spare; /* the other one; NULL while a reader renders it */
    Rec *out;   /* the one a reader has (it may render it without the GIL), or NULL */
    Py_ssize_t nout;
    Py_ssize_t n, cap;
    long long *lost;
    Py_ssize_t nprobes;
    PyObject *render;   /* strong: capture rendering of a value that is not held raw */
    PyObject *exc_text; /* strong: an exception's one-line text */
    PyObject *wake;     /* strong or NULL: called once when a buffer is a quarter full */
    PyObject *link_key; /* strong or NULL: a return's record keeps data[link_key] of its instance */
    int woken;
} RingObj;

static PyTypeObject RingType;

static void
rec_clear(Rec *r)
{
    Py_CLEAR(r->tname);
    Py_CLEAR(r->code);
    Py_CLEAR(r->module);
    Py_CLEAR(r->retval);
    Py_CLEAR(r->exc);
    Py_CLEAR(r->link);
    for (int i = 0; i < r->nvals; i++) {
        Py_CLEAR(r->vals[i]);
    }
    r->nvals = 0;
}

/* An exact scalar that capture's render() gives back unchanged, and JSON spells simply. */
static inline int
rec_raw(PyObject *v)
{
    if (v == Py_None || PyBool_Check(v)) {
        return 1;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        (void)PyLong_AsLongLongAndOverflow(v, &overflow);
        return !overflow;
    }
    if (PyFloat_CheckExact(v)) {
        return isfinite(PyFloat_AS_DOUBLE(v));
    }
    return PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v) && PyUnicode_GET_LENGTH(v) <= 256;
}

/* A value as the record holds it (new reference): itself when raw, else render(value); a
 * failed render is "(fault)", as the capture rules make it. */
static PyObject *
rec_value(RingObj *ring, PyObject *v)
{
    if (rec_raw(v)) {
        return Py_NewRef(v);
    }
    PyObject *r = PyObject_CallOneArg(ring->render, v);
    if (r == NULL) {
        PyErr_Clear();
        return Py_NewRef(g_fault_key);
    }
    return r;
}

/* The calling thread's native id: kept by its thread state (set again in a forked child), where
 * PyThread_get_thread_native_id() is a system call on Linux. */
static inline unsigned long
rec_native_tid(void)
{
#if HAVE_FRAME_TOKEN
    PyThreadState *ts = CURRENT_TSTATE();
    if (ts != NULL && ts->native_thread_id != 0) {
        return ts->native_thread_id;
    }
#endif
    return PyThread_get_thread_native_id();
}

/* globals["__name__"] when it is a str (new reference), or NULL (no error). */
static PyObject *
rec_module(PyObject *globals)
{
    PyObject *name = NULL;
    if (globals != NULL && PyDict_Check(globals)) {
        name = PyDict_GetItemWithError(globals, s_dunder_name); /* borrowed */
    }
    PyErr_Clear();
    return name != NULL && PyUnicode_CheckExact(name) ? Py_NewRef(name) : NULL;
}

/* Write one record for a hit of probe `probe` (the filter passed). 0, or -1 with an error. */
static int
ring_push(RingObj *ring, int probe, PVar *fields, Py_ssize_t nfields, PEnv *env)
{
    if (ring->recs == NULL || probe < 0 || probe >= ring->nprobes) {
        return 0;
    }
    if (ring->n >= ring->cap) {
        ring->lost[probe]++;
        return 0;
    }
    Rec rec;
    memset(&rec, 0, sizeof(rec));
    rec.probe = probe;
    rec.time_ns = now_ns();
    rec.tid = rec_native_tid();
    rec.lineno = -1;
    rec.tname = prog_thread_name();
    if (rec.tname == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyObject *raw = prog_read(&fields[i], env);
        if (raw == NULL) {
            if (PyErr_Occurred()) {
                goto fail;
            }
            raw = Py_NewRef(g_fault_key); /* a local that is not bound: as capture says */
        }
        rec.vals[i] = rec_value(ring, raw);
        Py_DECREF(raw);
        rec.nvals = (short)(i + 1);
    }
    if (env->has_duration) {
        rec.is_return = 1;
        rec.duration = env->duration;
        rec.is_async = (((PyCodeObject *)env->code)->co_flags & GEN_FLAGS) != 0;
        rec.retval = env->exc != Py_None ? Py_NewRef(Py_None) : rec_value(ring, env->retval);
        if (env->exc != Py_None) {
            rec.exc = PyObject_CallOneArg(ring->exc_text, env->exc);
            if (rec.exc == NULL) {
                PyErr_Clear();
                rec.exc = Py_NewRef(g_fault_key);
            }
        }
        if (ring->link_key != NULL && env->ri != NULL && RI(env->ri)->data != NULL) {
            /* a dict of str keys: the lookup runs no code of the program */
            rec.link = PyDict_GetItemWithError(RI(env->ri)->data, ring->link_key);
            if (rec.link == NULL && PyErr_Occurred()) {
                goto fail;
            }
            Py_XINCREF(rec.link);
        }
        /* the caller: its code and instruction (its line is found when rendered), and the
         * __name__ of its globals */
#if HAVE_IFRAME
        if (env->token != NULL) {
            IFrame *back = iframe_caller(env->token);
            if (back != NULL) {
                rec.code = Py_NewRef(IFRAME_EXECUTABLE(back));
                rec.offset =
                    PyUnstable_InterpreterFrame_GetLasti((struct _PyInterpreterFrame *)back);
                rec.module = rec_module(back->globals);
            }
        }
        else
#endif
        {
            PyObject *f = env->ctx != NULL ? ctx_frame(env->ctx) : NULL;
            PyFrameObject *back =
                (f != NULL && PyFrame_Check(f)) ? PyFrame_GetBack((PyFrameObject *)f) : NULL;
            if (back != NULL) {
                rec.code = (PyObject *)PyFrame_GetCode(back);
                rec.offset = PyFrame_GetLasti(back);
                PyObject *globals = PyFrame_GetGlobals(back);
                rec.module = rec_module(globals);
                Py_XDECREF(globals);
                Py_DECREF(back);
            }
        }
    }
    else {
        rec.code = Py_NewRef(env->code);
        rec.offset = env->offset;
        rec.lineno = env->lineno;
        if (rec.offset < 0 && env->ctx != NULL) {
            int err;
            rec.offset = ctx_offset(env->ctx, &err);
            if (err) {
                PyErr_Clear();
                rec.offset = 0;
            }
        }
    }
    /* Nothing above ran code of the program, but our render functions are Python: the ring
     * may have been filled meanwhile by another thread, or taken. */
    if (ring->recs == NULL || ring->n >= ring->cap) {
        ring->lost[probe]++;
        rec_clear(&rec);
        return 0;
    }
    ring->recs[ring->n++] = rec;
    if (!ring->woken && ring->wake != NULL && ring->n >= ring->cap / 4) {
        ring->woken = 1;
        PyObject *r = PyObject_CallNoArgs(ring->wake);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
    return 0;
fail:
    rec_clear(&rec);
    return -1;
}

/* --- reading ----------------------------------------------------------------------------- */

static long
rec_line(Rec *r)
{
    if (r->lineno < 0 && r->code != NULL) {
        r->lineno = PyCode_Addr2Line((PyCodeObject *)r->code, (int)r->offset);
    }
    return r->lineno;
}

/* `location` and `site` as HitRecorder gives them (new references). */
static int
rec_places(Rec *r, PyObject **location, PyObject **site)
{
    *location = *site = NULL;
    PyCodeObject *co = (PyCodeObject *)r->code;
    if (!r->is_return) {
        *site = PyUnicode_FromString("");
        *location = co == NULL ? PyUnicode_FromString("?")
                               : PyUnicode_FromFormat("%U:%ld", co->co_filename, rec_line(r));
    }
    else if (co == NULL) {
        *site = PyUnicode_FromString("?");
        *location = PyUnicode_FromString("?");
    }
    else {
        long line = rec_line(r);
        *location = PyUnicode_FromFormat("%U:%ld", co->co_filename, line);
        if (r->module != NULL) {
            *site = PyUnicode_FromFormat("%U:%U:%ld", r->module, co->co_qualname, line);
        }
        else {
            *site = PyUnicode_FromFormat("?:%U:%ld", co->co_qualname, line);
        }
    }
    if (*location == NULL || *site == NULL) {
        Py_CLEAR(*location);
        Py_CLEAR(*site);
        return -1;
    }
    return 0;
}

/* (probe, kind, time_ns, thread_id, thread_name, values, retval, exception, duration_ns,
 *  location, site, is_async): engine/records.py's Record. */
static PyObject *
rec_tuple(Rec *r)
{
    PyObject *location, *site;
    if (rec_places(r, &location, &site) < 0) {
        return NULL;
    }
    PyObject *vals = PyTuple_New(r->nvals);
    if (vals == NULL) {
        Py_DECREF(location);
        Py_DECREF(site);
        return NULL;
    }
    for (int i = 0; i < r->nvals; i++) {
        PyTuple_SET_ITEM(vals, i, Py_NewRef(r->vals[i]));
    }
    PyObject *duration = r->is_return ? PyLong_FromLongLong(r->duration) : Py_NewRef(Py_None);
    PyObject *t = Py_BuildValue(
        "(isLkONNONNNOO)", r->probe, r->is_return ? "r" : "p", r->time_ns, r->tid, r->tname,
        vals, r->is_return ? Py_NewRef(r->retval) : Py_NewRef(Py_None),
        r->exc != NULL ? r->exc : Py_None, duration, location, site,
        r->is_async ? Py_True : Py_False, r->link != NULL ? r->link : Py_None);
    return t;
}

/* Swap the buffers: the full one (n records) is the caller's until ring_give_back. */
static Rec *
ring_swap(RingObj *ring, Py_ssize_t *n)
{
    *n = 0;
    if (ring->spare == NULL || ring->recs == NULL) {
        return NULL; /* another reader has it */
    }
    Rec *full = ring->recs;
    *n = ring->n;
    ring->recs = ring->spare;
    ring->spare = NULL;
    ring->out = full;
    ring->nout = *n;
    ring->n = 0;
    ring->woken = 0;
    return full;
}

static void
ring_give_back(RingObj *ring, Rec *full, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        rec_clear(&full[i]);
    }
    if (ring->out == full) {
        ring->out = NULL;
    }
    if (ring->spare == NULL) {
        ring->spare = full;
    }
    else {
        PyMem_Free(full); /* (cleared meanwhile) */
    }
}

/* {probe: n} for the probes with n > 0. */
static PyObject *
counts_dict(const long long *counts, Py_ssize_t n)
{
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < n; i++) {
        if (counts[i] == 0) {
            continue;
        }
        PyObject *k = PyLong_FromSsize_t(i), *v = PyLong_FromLongLong(counts[i]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_CLEAR(d);
        }
        Py_XDECREF(k);
        Py_XDECREF(v);
    }
    return d;
}

/* {probe: lost} since the last read, and the counters start over. */
static PyObject *
ring_take_lost(RingObj *ring)
{
    PyObject *d = counts_dict(ring->lost, ring->nprobes);
    if (d != NULL && ring->nprobes > 0) {
        memset(ring->lost, 0, ring->nprobes * sizeof(long long));
    }
    return d;
}

static PyObject *
ring_take(RingObj *ring, PyObject *unused)
{
    Py_ssize_t n;
    Rec *full = ring_swap(ring, &n);
    PyObject *list = PyList_New(0);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        PyObject *t = rec_tuple(&full[i]);
        if (t == NULL || PyList_Append(list, t) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(t);
    }
    if (full != NULL) {
        ring_give_back(ring, full, n);
    }
    if (list == NULL) {
        return NULL;
    }
    PyObject *lost = ring_take_lost(ring);
    if (lost == NULL) {
        Py_DECREF(list);
        return NULL;
    }
    return Py_BuildValue("(NN)", list, lost);
}

#include "_render.c"

/* --- the object ---------------------------------------------------------------------------- */

/* Ring(capacity, render, exception_text, wake=None, link_key=None) */
static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "render", "exception_text", "wake", "link_key", NULL};
    Py_ssize_t cap;
    PyObject *render, *exc_text, *wake = Py_None, *link_key = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOO|OO:Ring", kwlist, &cap, &render, &exc_text,
                                     &wake, &link_key)) {
        return NULL;
    }
    if (link_key != Py_None && !PyUnicode_CheckExact(link_key)) {
        PyErr_SetString(PyExc_TypeError, "a ring's link_key is a str, or None");
        return NULL;
    }
    if (cap < 1 || cap > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "a ring holds 1 to %d records, not %zd", 1 << 24, cap);
        return NULL;
    }
    RingObj *ring = (RingObj *)type->tp_alloc(type, 0);
    if (ring == NULL) {
        return NULL;
    }
    ring->cap = cap;
    ring->recs = PyMem_Calloc(cap, sizeof(Rec));
    ring->spare = PyMem_Calloc(cap, sizeof(Rec));
    if (ring->recs == NULL || ring->spare == NULL) {
        Py_DECREF(ring);
        return PyErr_NoMemory();
    }
    ring->render = Py_NewRef(render);
    ring->exc_text = Py_NewRef(exc_text);
    ring->wake = wake == Py_None ? NULL : Py_NewRef(wake);
    ring->link_key = link_key == Py_None ? NULL : Py_NewRef(link_key);
    return (PyObject *)ring;
}

static PyObject *
ring_add_probe(RingObj *ring, PyObject *unused)
{
    long long *lost = PyMem_Realloc(ring->lost, (ring->nprobes + 1) * sizeof(long long));
    if (lost == NULL) {
        return PyErr_NoMemory();
    }
    lost[ring->nprobes] = 0;
    ring->lost = lost;
    return PyLong_FromSsize_t(ring->nprobes++);
}

static PyObject *
ring_clear_after_fork(RingObj *ring, PyObject *unused)
{
    /* The child's copies of the records are the parent's to write: drop them, uncounted. */
    for (Py_ssize_t i = 0; ring->recs != NULL && i < ring->n; i++) {
        rec_clear(&ring->recs[i]);
    }
    ring->n = 0;
    for (Py_ssize_t i = 0; i < ring->nprobes; i++) {
        ring->lost[i] = 0;
    }
    if (ring->out != NULL) {
        /* A reader was rendering it (with the GIL released) on a thread the child does not
         * have: the buffer is the spare again. */
        for (Py_ssize_t i = 0; i < ring->nout; i++) {
            rec_clear(&ring->out[i]);
        }
        if (ring->spare == NULL) {
            ring->spare = ring->out;
        }
        ring->out = NULL;
    }
    Py_RETURN_NONE;
}

static void
ring_free_recs(Rec *recs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; recs != NULL && i < n; i++) {
        rec_clear(&recs[i]);
    }
    PyMem_Free(recs);
}

static int
ring_traverse(RingObj *ring, visitproc visit, void *arg)
{
    Py_VISIT(ring->render);
    Py_VISIT(ring->exc_text);
    Py_VISIT(ring->wake);
    Py_VISIT(ring->link_key);
    return 0;
}

static int
ring_tp_clear(RingObj *ring)
{
    Py_CLEAR(ring->render);
    Py_CLEAR(ring->exc_text);
    Py_CLEAR(ring->wake);
    Py_CLEAR(ring->link_key);
    return 0;
}

static void
ring_dealloc(RingObj *ring)
{
    PyObject_GC_UnTrack(ring);
    ring_tp_clear(ring);
    ring_free_recs(ring->recs, ring->n);
    ring_free_recs(ring->spare, 0);
    PyMem_Free(ring->lost);
    Py_TYPE(ring)->tp_free((PyObject *)ring);
}

static PyObject *
ring_len(RingObj *ring, void *closure)
{
    return PyLong_FromSsize_t(ring->n);
}

static PyObject *
ring_capacity(RingObj *ring, void *closure)
{
    return PyLong_FromSsize_t(ring->cap);
}

static PyMethodDef ring_methods[] = {
    {"add_probe", (PyCFunction)ring_add_probe, METH_NOARGS,
     "A new probe id: its records and losses are told apart by it."},
    {"take", (PyCFunction)ring_take, METH_NOARGS,
     "(records, {probe: lost}) since the last take; the ring starts over."},
    {"take_json", (PyCFunction)(void (*)(void))ring_take_json, METH_VARARGS | METH_KEYWORDS,
     "take_json(statics, pid, fallback, keep=False, utf8=False) -> (text, {probe: n}, "
     "{probe: lost}, records or None): the records as JSON Lines (UTF-8 bytes with utf8)."},
    {"take_text", (PyCFunction)(void (*)(void))ring_take_text, METH_VARARGS | METH_KEYWORDS,
     "take_text(statics, pid, fallback, keep=False, utf8=False): as take_json, as text lines; "
     "statics per probe: (event, probe, names)."},
    {"take_chrome", (PyCFunction)(void (*)(void))ring_take_chrome, METH_VARARGS | METH_KEYWORDS,
     "take_chrome(statics, pid, renderer, fallback, keep=False, utf8=False): as take_json, "
     "as the ChromeRenderer `renderer` writes the trace events (its state kept)."},
    {"clear_after_fork", (PyCFunction)ring_clear_after_fork, METH_NOARGS,
     "Drop the records a forked child inherited."},
    {NULL},
};

static PyGetSetDef ring_getset[] = {
    {"pending", (getter)ring_len, NULL, "Records written and not yet taken.", NULL},
    {"capacity", (getter)ring_capacity, NULL, "Records a buffer holds.", NULL},
    {NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.Ring",
    .tp_basicsize = sizeof(RingObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Ring(capacity, render, exception_text, wake=None, link_key=None): programs' event "
              "records.",
    .tp_new = ring_new,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_traverse = (traverseproc)ring_traverse,
    .tp_clear = (inquiry)ring_tp_clear,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

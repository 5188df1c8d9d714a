/* _context.c: ProbeContext, the context a handler sees (part of _speedups.c).
 *
 * Owns the C fields of pyprobes._speedups.ProbeContext (a subclass of context.ProbeContext
 * made by setup()), the spare context reused from hit to hit, the Hit of a function entry,
 * and the lazy reads of the frame, offset, line and arguments (context.read_args and
 * shared.call_args in C). */

/* --- ProbeContext: a subclass of context.ProbeContext with its fields in C ----------------- */

typedef struct {
    PyObject *code;      /* borrowed during the hit (the running frame holds it), strong once
                            code_owned: when the context outlives the hit, or is assigned */
    PyObject *frame;     /* NULL: not read yet; else strong (a frame or None) */
    PyObject *args;      /* NULL until read */
    PyObject *retval;    /* strong, or NULL for None */
    PyObject *exception; /* strong, or NULL for None */
    void *token;         /* the probed interpreter frame (compared, never dereferenced) */
    long offset;
    long lineno;
    unsigned long thread_id;
    long long time_ns;
    int code_owned;
} CtxData;

#define CTX(o) ((CtxData *)((char *)(o) + ctx_off))

/* one spare context, reused when nobody kept the previous one */
static PyObject *ctx_spare = NULL;

HOT PyObject *
ctx_new_tok(PyObject *code, long offset, long lineno, PyObject *frame, void *token)
{
    PyObject *o = ctx_spare;
    ctx_spare = NULL;
    if (o != NULL && Py_REFCNT(o) != 1) {
        Py_SETREF(o, NULL); /* someone found it (gc.get_objects()): leave it to them */
    }
    if (o == NULL) {
        o = CtxType->tp_alloc(CtxType, 0);
        if (o == NULL) {
            return NULL;
        }
    }
    CtxData *c = CTX(o);
    c->code = code;
    c->code_owned = 0;
    c->args = NULL;
    c->retval = NULL;
    c->exception = NULL;
    c->offset = offset;
    c->lineno = lineno;
    c->thread_id = 0;
    c->time_ns = 0;
    c->token = token;
    if (frame != NULL) {
        c->frame = Py_NewRef(frame);
    }
    else {
#if HAVE_FRAME_TOKEN
        c->frame = NULL;
#else
        PyFrameObject *f = PyEval_GetFrame();
        c->frame = Py_NewRef(f ? (PyObject *)f : Py_None);
#endif
    }
    return o;
}

/* A context for the running thread. One thread-state read gives both the token and the
 * thread id (tstate->thread_id is threading.get_ident() of the thread the state is bound to:
 * set when a thread binds it and again in a child after fork). */
HOT PyObject *
ctx_new(PyObject *code, long offset, long lineno, PyObject *frame)
{
#if HAVE_FRAME_TOKEN
    PyThreadState *ts = CURRENT_TSTATE();
    PyObject *o = ctx_new_tok(code, offset, lineno, frame, TOKEN_OF(ts));
    if (o != NULL) {
        CTX(o)->thread_id = ts->thread_id;
    }
    return o;
#else
    return ctx_new_tok(code, offset, lineno, frame, NULL);
#endif
}

/* A function entry being dispatched: what every probe there needs, and the context, made
 * only when a handler is to see it (a return probe without an entry handler needs none). */
typedef struct {
    PyObject *code;
    void *token;
    unsigned long tid;
    PyObject *ctx; /* NULL until hit_ctx() */
} Hit;

HOT void
hit_init(Hit *h, PyObject *code)
{
    h->code = code;
    h->ctx = NULL;
#if HAVE_FRAME_TOKEN
    PyThreadState *ts = CURRENT_TSTATE();
    h->token = TOKEN_OF(ts);
    h->tid = ts->thread_id;
#else
    h->token = NULL;
    h->tid = PyThread_get_thread_ident();
#endif
}

/* The entry's context (borrowed; the Hit owns it), or NULL on a memory error. */
HOT PyObject *
hit_ctx(Hit *h)
{
    if (h->ctx == NULL) {
        h->ctx = ctx_new_tok(h->code, 0, -1, NULL, h->token);
        if (h->ctx != NULL) {
            CTX(h->ctx)->thread_id = h->tid;
        }
    }
    return h->ctx;
}

static void
ctx_clear_fields(CtxData *c)
{
    if (c->code_owned) {
        Py_CLEAR(c->code);
    }
    c->code = NULL;
    c->code_owned = 0;
    Py_CLEAR(c->frame);
    Py_CLEAR(c->args);
    Py_CLEAR(c->retval);
    Py_CLEAR(c->exception);
}

/* Drop our reference to a context; keep it as the spare if nobody else holds it. Its fields
 * are detached before the spare is set, and released after: a destructor run by that release
 * (or another thread meanwhile) finds a consistent, empty spare. A spare that someone grabbed
 * meanwhile (gc.get_objects()) has a refcount above 1, and ctx_new then leaves it to them. */
HOT void
ctx_release(PyObject *o)
{
    CtxData *c = CTX(o);
    if (Py_REFCNT(o) != 1 || ctx_spare != NULL) {
        if (!c->code_owned) { /* it outlives the hit: take the reference it borrowed */
            Py_XINCREF(c->code);
            c->code_owned = 1;
        }
        Py_DECREF(o);
        return;
    }
    PyObject *code = c->code_owned ? c->code : NULL, *frame = c->frame, *args = c->args;
    PyObject *retval = c->retval, *exc = c->exception;
    c->code = c->frame = c->args = c->retval = c->exception = NULL;
    c->code_owned = 0;
    ctx_spare = o;
    if (code != NULL || frame != NULL || args != NULL || retval != NULL || exc != NULL) {
        Py_XDECREF(code);
        Py_XDECREF(frame);
        Py_XDECREF(args);
        Py_XDECREF(retval);
        Py_XDECREF(exc);
    }
}

static inline void
ctx_seal(PyObject *o)
{
    CtxData *c = CTX(o);
    if (c->frame == NULL) {
        c->frame = Py_NewRef(Py_None);
    }
}

/* The probed frame (borrowed; None if not found or sealed). Never fails. */
static PyObject *
ctx_frame(PyObject *o)
{
    CtxData *c = CTX(o);
    if (c->frame != NULL) {
        return c->frame;
    }
    PyObject *found = NULL;
#if HAVE_FRAME_TOKEN
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    while (f != NULL) {
        if (((FramePrefix *)f)->f_frame == c->token) {
            found = (PyObject *)f; /* our reference */
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
#endif
    if (c->frame == NULL) { /* (nothing above runs Python code, but stay safe) */
        c->frame = found ? found : Py_NewRef(Py_None);
    }
    else {
        Py_XDECREF(found);
    }
    return c->frame;
}

static PyObject *
ctx_get_frame(PyObject *self, void *closure)
{
    return Py_NewRef(ctx_frame(self));
}

/* ctx.offset: the hit's offset, or the frame's f_lasti for line probes. */
static long
ctx_offset(PyObject *self, int *err)
{
    CtxData *c = CTX(self);
    *err = 0;
    if (c->offset < 0) {
        PyObject *f = Py_NewRef(ctx_frame(self));
        long off = 0;
        if (f != Py_None) {
            PyObject *v = PyObject_GetAttr(f, g_cfg->s_f_lasti);
            if (v == NULL) {
                Py_DECREF(f);
                *err = 1;
                return -1;
            }
            off = PyLong_AsLong(v);
            Py_DECREF(v);
            if (off == -1 && PyErr_Occurred()) {
                Py_DECREF(f);
                *err = 1;
                return -1;
            }
        }
        Py_DECREF(f);
        c->offset = off;
    }
    return c->offset;
}

static PyObject *
ctx_get_offset(PyObject *self, void *closure)
{
    int err;
    long off = ctx_offset(self, &err);
    return err ? NULL : PyLong_FromLong(off);
}

static PyObject *
ctx_get_lineno(PyObject *self, void *closure)
{
    CtxData *c = CTX(self);
    if (c->lineno < 0) {
        PyObject *f = Py_NewRef(ctx_frame(self));
        PyObject *line = NULL;
        if (f != Py_None) {
            line = PyObject_GetAttr(f, g_cfg->s_f_lineno);
            if (line == NULL) {
                Py_DECREF(f);
                return NULL;
            }
        }
        Py_DECREF(f);
        if (line == NULL || line == Py_None) {
            Py_XDECREF(line);
            int err;
            long off = ctx_offset(self, &err);
            if (err) {
                return NULL;
            }
            PyObject *offo = PyLong_FromLong(off);
            if (offo == NULL) {
                return NULL;
            }
            PyObject *code = Py_NewRef(c->code ? c->code : Py_None);
            line = PyObject_CallFunctionObjArgs(g_cfg->line_of, code, offo, NULL);
            Py_DECREF(code);
            Py_DECREF(offo);
            if (line == NULL) {
                return NULL;
            }
            int truth = PyObject_IsTrue(line);
            if (truth < 0) {
                Py_DECREF(line);
                return NULL;
            }
            if (!truth) {
                Py_SETREF(line, PyLong_FromLong(0));
                if (line == NULL) {
                    return NULL;
                }
            }
        }
        long v = PyLong_AsLong(line);
        Py_DECREF(line);
        if (v == -1 && PyErr_Occurred()) {
            return NULL;
        }
        c->lineno = v;
    }
    return PyLong_FromLong(c->lineno);
}

/* --- arguments: context.read_args and shared.call_args in C ------------------------------
 * The parameters of a code object, in signature order: co_varnames[:argcount], then *args,
 * then the keyword-only ones, then **kwargs (co_varnames keeps *args and **kwargs after the
 * keyword-only names). Index i of that order, as an index into co_varnames: */
static inline Py_ssize_t
param_index(PyCodeObject *co, Py_ssize_t i, Py_ssize_t *count)
{
    Py_ssize_t n_pos = co->co_argcount, n_kw = co->co_kwonlyargcount;
    int star = (co->co_flags & CO_VARARGS) != 0, dstar = (co->co_flags & CO_VARKEYWORDS) != 0;
    *count = n_pos + star + n_kw + dstar;
    if (i < n_pos) {
        return i;
    }
    if (star && i == n_pos) {
        return n_pos + n_kw;
    }
    i -= star;
    if (i < n_pos + n_kw) {
        return i;
    }
    return n_pos + n_kw + star; /* **kwargs */
}

/* context.read_args(frame): a new dict of the parameters' current values (a parameter the
 * function deleted is left out), each read from the frame itself with PyFrame_GetVar: never
 * through frame.f_locals, which on 3.12 refreshes the dict locals() gave the program. */
static PyObject *
c_read_args(PyObject *frame)
{
    PyCodeObject *co = PyFrame_GetCode((PyFrameObject *)frame);
    PyObject *names = PyCode_GetVarnames(co);
    PyObject *out = names ? PyDict_New() : NULL;
    if (out == NULL) {
        goto done;
    }
    Py_ssize_t count = 0;
    param_index(co, 0, &count);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t k = param_index(co, i, &count);
        if (k >= PyTuple_GET_SIZE(names)) {
            break;
        }
        PyObject *name = PyTuple_GET_ITEM(names, k);
        PyObject *v = PyFrame_GetVar((PyFrameObject *)frame, name);
        if (v == NULL) {
            if (PyErr_ExceptionMatches(PyExc_NameError)) {
                PyErr_Clear();
                continue; /* deleted by the function itself */
            }
            Py_CLEAR(out);
            goto done;
        }
        int rc = PyDict_SetItem(out, name, v);
        Py_DECREF(v);
        if (rc < 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    Py_XDECREF(names);
    Py_DECREF(co);
    return out;
}

/* shared.call_args(code, args): the call's positional tuple and keyword dict, rebuilt from
 * the bound parameters (a missing one raises KeyError, as in pycore). 0 or -1. */
static int
c_call_args(PyCodeObject *co, PyObject *args, PyObject **pos_out, PyObject **kw_out)
{
    PyObject *names = PyCode_GetVarnames(co);
    if (names == NULL) {
        return -1;
    }
    Py_ssize_t n_pos = co->co_argcount, n_kw = co->co_kwonlyargcount;
    int star = (co->co_flags & CO_VARARGS) != 0, dstar = (co->co_flags & CO_VARKEYWORDS) != 0;
    PyObject *pos = PyList_New(0), *kw = PyDict_New(), *tuple = NULL;
    if (pos == NULL || kw == NULL || PyTuple_GET_SIZE(names) < n_pos + n_kw + star + dstar) {
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n_pos + n_kw; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        PyObject *v = PyDict_GetItemWithError(args, name);
        if (v == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, name);
            }
            goto fail;
        }
        if ((i < n_pos ? PyList_Append(pos, v) : PyDict_SetItem(kw, name, v)) < 0) {
            goto fail;
        }
    }
    for (int which = 0; which < 2; which++) {
        if (!(which ? dstar : star)) {
            continue;
        }
        PyObject *name = PyTuple_GET_ITEM(names, n_pos + n_kw + (which ? star : 0));
        PyObject *v = PyDict_GetItemWithError(args, name);
        if (v == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, name);
            }
            goto fail;
        }
        if (which ? PyDict_Update(kw, v) < 0 : PyList_SetSlice(pos, PY_SSIZE_T_MAX,
                                                                PY_SSIZE_T_MAX, v) < 0) {
            goto fail;
        }
    }
    tuple = PyList_AsTuple(pos);
    if (tuple == NULL) {
        goto fail;
    }
    Py_DECREF(pos);
    Py_DECREF(names);
    *pos_out = tuple;
    *kw_out = kw;
    return 0;
fail:
    Py_XDECREF(pos);
    Py_XDECREF(kw);
    Py_DECREF(names);
    return -1;
}

static PyObject *
ctx_get_args(PyObject *self, void *closure)
{
    CtxData *c = CTX(self);
    if (c->args == NULL) {
        PyObject *f = Py_NewRef(ctx_frame(self));
        PyObject *a;
        if (f != Py_None) {
            a = c_read_args(f);
        }
        else {
            a = PyDict_New();
        }
        Py_DECREF(f);
        if (a == NULL) {
            return NULL;
        }
        if (c->args == NULL) {
            c->args = a;
        }
        else {
            Py_DECREF(a);
        }
    }
    return Py_NewRef(c->args);
}

static PyObject *
ctx_get_thread_id(PyObject *self, void *closure)
{
    CtxData *c = CTX(self);
    if (c->thread_id == 0) {
        c->thread_id = PyThread_get_thread_ident();
    }
    return PyLong_FromUnsignedLong(c->thread_id);
}

static PyObject *
ctx_get_time_ns(PyObject *self, void *closure)
{
    CtxData *c = CTX(self);
    if (c->time_ns == 0) {
        c->time_ns = now_ns();
    }
    return PyLong_FromLongLong(c->time_ns);
}

static PyObject *
ctx_py_seal(PyObject *self, PyObject *unused)
{
    ctx_seal(self);
    Py_RETURN_NONE;
}

static PyObject *
ctx_repr(PyObject *self)
{
    CtxData *c = CTX(self);
    PyObject *q = PyObject_GetAttr(c->code ? c->code : Py_None, g_cfg->s_co_qualname);
    if (q == NULL) {
        return NULL;
    }
    PyObject *r = PyUnicode_FromFormat("<ProbeContext %S offset=%ld line=%ld>", q, c->offset,
                                       c->lineno);
    Py_DECREF(q);
    return r;
}

static int
ctx_traverse(PyObject *self, visitproc visit, void *arg)
{
    CtxData *c = CTX(self);
    if (c->code_owned) {
        Py_VISIT(c->code);
    }
    Py_VISIT(c->frame);
    Py_VISIT(c->args);
    Py_VISIT(c->retval);
    Py_VISIT(c->exception);
    PyObject **base = (PyObject **)((char *)self + sizeof(PyObject));
    for (Py_ssize_t i = 0; i < ctx_base_nslots; i++) {
        Py_VISIT(base[i]);
    }
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
ctx_tp_clear(PyObject *self)
{
    ctx_clear_fields(CTX(self));
    PyObject **base = (PyObject **)((char *)self + sizeof(PyObject));
    for (Py_ssize_t i = 0; i < ctx_base_nslots; i++) {
        Py_CLEAR(base[i]);
    }
    return 0;
}

static void
ctx_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ctx_tp_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
ctx_get_code(PyObject *self, void *closure)
{
    PyObject *v = CTX(self)->code;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'ProbeContext' object has no attribute 'code'");
        return NULL;
    }
    return Py_NewRef(v);
}

static int
ctx_set_code(PyObject *self, PyObject *value, void *closure)
{
    CtxData *c = CTX(self);
    PyObject *old = c->code_owned ? c->code : NULL;
    c->code = Py_XNewRef(value);
    c->code_owned = 1;
    Py_XDECREF(old);
    return 0;
}

static PyObject *
ctx_get_retval(PyObject *self, void *closure)
{
    PyObject *v = CTX(self)->retval;
    return Py_NewRef(v ? v : Py_None);
}

static int
ctx_set_retval(PyObject *self, PyObject *value, void *closure)
{
    Py_XSETREF(CTX(self)->retval, value == Py_None ? NULL : Py_XNewRef(value));
    return 0;
}

static PyObject *
ctx_get_exception(PyObject *self, void *closure)
{
    PyObject *v = CTX(self)->exception;
    return Py_NewRef(v ? v : Py_None);
}

static int
ctx_set_exception(PyObject *self, PyObject *value, void *closure)
{
    Py_XSETREF(CTX(self)->exception, value == Py_None ? NULL : Py_XNewRef(value));
    return 0;
}

static PyGetSetDef ctx_getset[] = {
    {"code", ctx_get_code, ctx_set_code, "The probed code object.", NULL},
    {"retval", ctx_get_retval, ctx_set_retval, "The return value (return probes).", NULL},
    {"exception", ctx_get_exception, ctx_set_exception,
     "The exception that ended the function (return probes), else None.", NULL},
    {"frame", ctx_get_frame, NULL, "The probed frame (live: do not keep it beyond the handler).",
     NULL},
    {"offset", ctx_get_offset, NULL, "Bytecode offset of the hit, as ``dis`` shows it.", NULL},
    {"lineno", ctx_get_lineno, NULL, "Source line of the hit.", NULL},
    {"args", ctx_get_args, NULL,
     "A copy of the function's parameters (at entry: exactly the call's arguments).", NULL},
    {"thread_id", ctx_get_thread_id, NULL, "``threading.get_ident()`` of the probed thread.",
     NULL},
    {"time_ns", ctx_get_time_ns, NULL,
     "``time.perf_counter_ns()`` at the hit (taken when first read in the handler).", NULL},
    {NULL},
};

static PyMemberDef ctx_members[] = {
    {NULL},
};

static PyMethodDef ctx_methods[] = {
    {"seal", ctx_py_seal, METH_NOARGS,
     "Detach from the stack once handlers ran: lazy frame reads now give ``None``."},
    {NULL},
};

static PyType_Slot ctx_slots[] = {
    {Py_tp_dealloc, ctx_dealloc},   {Py_tp_traverse, ctx_traverse},
    {Py_tp_clear, ctx_tp_clear},    {Py_tp_getset, ctx_getset},
    {Py_tp_members, ctx_members},   {Py_tp_methods, ctx_methods},
    {Py_tp_repr, ctx_repr},         {0, NULL},
};

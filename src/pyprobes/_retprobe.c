/* _retprobe.c: the state of return probes (part of _speedups.c).
 *
 * Owns KretprobeInstance's C fields (the subclass of context.KretprobeInstance made by
 * setup()) and RetState, one kretprobe registration: its instance pool and its live
 * activations, with the cold methods pycore.RetState has (reclaim, flush, activations, end). */

/* --- KretprobeInstance: a subclass of context.KretprobeInstance with its fields in C ------- */

typedef struct {
    PyObject *rp;    /* strong */
    PyObject *frame; /* NULL or strong: the activation's frame */
    PyObject *data;  /* NULL until read */
    unsigned long long thread_id;
    long long entry_time_ns;         /* valid unless entry_raw */
    unsigned long long entry_ticks;  /* the TSC at entry, when entry_raw */
    int entry_raw;
} RiData;

#define RI(o) ((RiData *)((char *)(o) + ri_off))

static PyObject *
ri_get_data(PyObject *self, void *closure)
{
    RiData *r = RI(self);
    if (r->data == NULL) {
        r->data = PyDict_New();
        if (r->data == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(r->data);
}

static PyObject *
ri_get_frame(PyObject *self, void *closure)
{
    PyObject *f = RI(self)->frame;
    return Py_NewRef(f ? f : Py_None);
}

static int
ri_set_frame(PyObject *self, PyObject *value, void *closure)
{
    RiData *r = RI(self);
    PyObject *old = r->frame;
    r->frame = (value == NULL || value == Py_None) ? NULL : Py_NewRef(value);
    Py_XDECREF(old);
    return 0;
}

static PyObject *
ri_repr(PyObject *self)
{
    RiData *r = RI(self);
    return PyUnicode_FromFormat("<KretprobeInstance of %R thread=%llu>", r->rp ? r->rp : Py_None,
                                r->thread_id);
}

static int
ri_traverse(PyObject *self, visitproc visit, void *arg)
{
    RiData *r = RI(self);
    Py_VISIT(r->rp);
    Py_VISIT(r->frame);
    Py_VISIT(r->data);
    PyObject **base = (PyObject **)((char *)self + sizeof(PyObject));
    for (Py_ssize_t i = 0; i < ri_base_nslots; i++) {
        Py_VISIT(base[i]);
    }
    Py_VISIT(Py_TYPE(self));
    return 0;
}

static int
ri_tp_clear(PyObject *self)
{
    RiData *r = RI(self);
    Py_CLEAR(r->rp);
    Py_CLEAR(r->frame);
    Py_CLEAR(r->data);
    PyObject **base = (PyObject **)((char *)self + sizeof(PyObject));
    for (Py_ssize_t i = 0; i < ri_base_nslots; i++) {
        Py_CLEAR(base[i]);
    }
    return 0;
}

static void
ri_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    ri_tp_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *
ri_get_entry_time_ns(PyObject *self, void *closure)
{
    RiData *r = RI(self);
    if (r->entry_raw) {
        r->entry_time_ns = tsc_to_ns(r->entry_ticks);
        r->entry_raw = 0;
    }
    return PyLong_FromLongLong(r->entry_time_ns);
}

/* ns from an activation's entry to now (a program's $duration). */
static inline long long
ri_duration(RiData *r)
{
    if (r->entry_raw) {
        return (long long)((double)(long long)(read_tsc() - r->entry_ticks) * tsc.rate);
    }
    return now_ns() - r->entry_time_ns;
}

static int
ri_set_entry_time_ns(PyObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "entry_time_ns cannot be deleted");
        return -1;
    }
    long long v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    RI(self)->entry_time_ns = v;
    RI(self)->entry_raw = 0;
    return 0;
}

static PyGetSetDef ri_getset[] = {
    {"entry_time_ns", ri_get_entry_time_ns, ri_set_entry_time_ns,
     "When the activation began, in ``time.perf_counter_ns()``'s clock.", NULL},
    {"data", ri_get_data, NULL, "Per-activation private data (the kernel's ``data_size`` area).",
     NULL},
    {"frame", ri_get_frame, ri_set_frame, "The activation's frame while it is tracked.", NULL},
    {NULL},
};

static PyMemberDef ri_members[] = {
    {"rp", Py_T_OBJECT_EX, 0, 0, NULL},
    {"thread_id", Py_T_ULONGLONG, 0, 0, NULL},
    {NULL},
};

static PyType_Slot ri_slots[] = {
    {Py_tp_dealloc, ri_dealloc}, {Py_tp_traverse, ri_traverse}, {Py_tp_clear, ri_tp_clear},
    {Py_tp_getset, ri_getset},   {Py_tp_members, ri_members},   {Py_tp_repr, ri_repr},
    {0, NULL},
};

/* --- RetState: one registration of a kretprobe (pool + live activations) ------------------
 * pycore.RetState's twin: the same methods for the cold code (reclaim, flush, activations,
 * end, nactive), plus kill(): a dropped state is marked dead, which the hot path reads as
 * pycore reads ``rp._rstate is None``. */

typedef struct {
    PyObject_HEAD
    PyObject *rp;          /* strong */
    Counters *counters;    /* strong: rp's */
    PyObject **free;       /* strong references to idle instances (a stack) */
    Py_ssize_t nfree, free_cap;
    Py_ssize_t nalloc;     /* instances made so far: the pool grows lazily up to maxactive */
    /* The activations, frame pointer -> instance (strong; the instance holds a frame object
     * key). One is held in the solo slot, the usual case of calls that do not overlap (a
     * pointer compare instead of a hash table insert and delete); the others in the map. A
     * key is in one of the two at most. Only the act_* functions below touch them. */
    void *solo_key; /* NULL: the slot is empty */
    PyObject *solo;
    PtrMap active;
    Py_ssize_t maxactive;
    long long last_reclaim;
    int dead;
} RetState;

static PyTypeObject RetStateType;

static inline Py_ssize_t
act_used(RetState *s)
{
    return (s->solo_key != NULL) + s->active.used;
}

/* The instance at key (borrowed) or NULL. */
static inline PyObject *
act_get(RetState *s, void *key)
{
    if (key != NULL && s->solo_key == key) {
        return s->solo;
    }
    return map_get(&s->active, key);
}

/* Remove key; its instance (the table's reference, now the caller's) or NULL. */
HOT PyObject *
act_pop(RetState *s, void *key)
{
    if (key != NULL && s->solo_key == key) {
        PyObject *v = s->solo;
        s->solo_key = NULL;
        s->solo = NULL;
        return v;
    }
    return map_pop(&s->active, key);
}

/* File value (a new reference is taken) at key; *replaced receives the instance filed there
 * before, for the caller to release once its own structures are consistent. */
HOT int
act_set(RetState *s, void *key, PyObject *value, PyObject **replaced)
{
    *replaced = NULL;
    if (key != NULL && s->solo_key == key) {
        *replaced = s->solo;
        s->solo = Py_NewRef(value);
        return 0;
    }
    if (key != NULL && s->solo_key == NULL &&
        (s->active.used == 0 || map_get(&s->active, key) == NULL)) {
        s->solo_key = key;
        s->solo = Py_NewRef(value);
        return 0;
    }
    return map_set(&s->active, key, value, replaced);
}

static int
rs_push_free(RetState *s, PyObject *ri)
{
    /* steals ri */
    if (s->nfree == s->free_cap) {
        Py_ssize_t cap = s->free_cap ? s->free_cap * 2 : 4;
        PyObject **n = PyMem_Realloc(s->free, (size_t)cap * sizeof(PyObject *));
        if (n == NULL) {
            Py_DECREF(ri); /* the pool shrinks by one rather than fail the program */
            s->nalloc--;
            PyErr_NoMemory();
            return -1;
        }
        s->free = n;
        s->free_cap = cap;
    }
    s->free[s->nfree++] = ri;
    return 0;
}

/* Make one more instance for the pool (below maxactive): instances are made when first
 * needed, not at registration, so a large maxactive is free until calls overlap. */
static int
rs_grow(RetState *s)
{
    PyObject *ri = RiType->tp_alloc(RiType, 0);
    if (ri == NULL) {
        return -1;
    }
    RI(ri)->rp = Py_NewRef(s->rp);
    s->nalloc++;
    return rs_push_free(s, ri);
}

/* Return an instance to the pool, dropping what it referenced (pycore RetState.recycle).
 * Steals the reference to ri. */
static void
rs_recycle(RetState *s, PyObject *ri)
{
    RiData *r = RI(ri);
    PyObject *frame = r->frame, *data = r->data;
    r->frame = NULL;
    r->data = NULL;
    if (rs_push_free(s, ri) < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(frame); /* after the pool is consistent: these may run Python code */
    Py_XDECREF(data);
}

/* pycore._abandoned: 1 if only the instance references the frame (or, on 3.13.0-3.14.0, a
 * closed generator's frame that frame.clear() accepts), 0 if not, -1 on error. */
static int
frame_abandoned(PyObject *frame)
{
    if (Py_REFCNT(frame) <= 1) {
        return 1;
    }
    if (g_cfg->close_emits_nothing && PyFrame_Check(frame)) {
        PyCodeObject *co = PyFrame_GetCode((PyFrameObject *)frame);
        int flags = co->co_flags;
        Py_DECREF(co);
        if (flags & GEN_FLAGS) {
            Py_INCREF(frame);
            PyObject *r = PyObject_CallMethodNoArgs(frame, g_cfg->s_clear);
            Py_DECREF(frame);
            if (r == NULL) {
                if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                    PyErr_Clear();
                    return 0;
                }
                return -1;
            }
            Py_DECREF(r);
            return 1;
        }
    }
    return 0;
}

typedef struct {
    void *key;
    PyObject *ri;
} Pair;

/* A snapshot of the activations (keys and new references to instances); *n receives the count.
 * NULL with *n == 0 means none; NULL with *n < 0 means a memory error. */
static Pair *
rs_snapshot(RetState *s, Py_ssize_t *n)
{
    *n = 0;
    if (act_used(s) == 0) {
        return NULL;
    }
    Pair *pairs = PyMem_Malloc((size_t)act_used(s) * sizeof(Pair));
    if (pairs == NULL) {
        PyErr_NoMemory();
        *n = -1;
        return NULL;
    }
    Py_ssize_t cap = s->active.slots ? s->active.mask + 1 : 0, k = 0;
    if (s->solo_key != NULL) {
        pairs[k].key = s->solo_key;
        pairs[k].ri = Py_NewRef(s->solo);
        k++;
    }
    for (Py_ssize_t j = 0; j < cap; j++) {
        Slot *sl = &s->active.slots[j];
        if (sl->key != NULL) {
            pairs[k].key = sl->key;
            pairs[k].ri = Py_NewRef(sl->value);
            k++;
        }
    }
    *n = k;
    return pairs;
}

static void
pairs_free(Pair *pairs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_DECREF(pairs[i].ri);
    }
    PyMem_Free(pairs);
}

/* End the activation at key if ri is still the one tracked there (no handler). */
static int
rs_end(RetState *s, void *key, PyObject *ri)
{
    if (act_get(s, key) != ri) {
        return 0;
    }
    PyObject *got = act_pop(s, key);
    rs_recycle(s, got); /* the map's reference goes back to the pool */
    return 1;
}

static int
ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
    return (x > y) - (x < y);
}

/* The interpreter frames on every thread's stack, sorted (for bsearch), or NULL with *n = 0
 * (none, or no frame token on this version), or NULL with *n = -1 on error. */
static void **
running_tokens(Py_ssize_t *n)
{
    *n = 0;
#if HAVE_FRAME_TOKEN
    PyObject *fn = PySys_GetObject("_current_frames"); /* borrowed */
    PyObject *frames = fn ? PyObject_CallNoArgs(fn) : NULL; /* {thread id: top frame} */
    if (frames == NULL || !PyDict_Check(frames)) {
        if (frames != NULL || !PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "sys._current_frames() is not usable");
        }
        Py_XDECREF(frames);
        *n = -1;
        return NULL;
    }
    Py_ssize_t cap = 64, k = 0, pos = 0;
    void **out = PyMem_Malloc((size_t)cap * sizeof(void *));
    PyObject *key, *top;
    while (out != NULL && PyDict_Next(frames, &pos, &key, &top)) {
        PyFrameObject *f = PyFrame_Check(top) ? (PyFrameObject *)Py_NewRef(top) : NULL;
        while (f != NULL) {
            if (k == cap) {
                void **grown = PyMem_Realloc(out, (size_t)(cap *= 2) * sizeof(void *));
                if (grown == NULL) {
                    Py_DECREF(f);
                    PyMem_Free(out);
                    out = NULL;
                    break;
                }
                out = grown;
            }
            out[k++] = ((FramePrefix *)f)->f_frame;
            PyFrameObject *back = PyFrame_GetBack(f);
            Py_DECREF(f);
            f = back;
        }
    }
    Py_DECREF(frames);
    if (out == NULL) {
        PyErr_NoMemory();
        *n = -1;
        return NULL;
    }
    qsort(out, (size_t)k, sizeof(void *), ptr_cmp);
    *n = k;
    return out;
#else
    return NULL;
#endif
}

/* Flush activations that can never end: a frame nobody but us references (pycore's test), or
 * a plain function's interpreter frame that is on no thread's stack any more (its end went
 * unseen). Returns the count, or -1. */
static Py_ssize_t
rs_reclaim(RetState *s)
{
    Py_ssize_t n, freed = 0, ntok = -2;
    void **tokens = NULL;
    Pair *pairs = rs_snapshot(s, &n);
    if (n < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *frame = RI(pairs[i].ri)->frame;
        if (frame == NULL) {
            /* token-keyed: over if no thread runs that interpreter frame */
            if (ntok == -2) {
                tokens = running_tokens(&ntok);
                if (ntok < 0) {
                    pairs_free(pairs, n);
                    return -1;
                }
            }
            if (!bsearch(&pairs[i].key, tokens, (size_t)ntok, sizeof(void *), ptr_cmp) &&
                rs_end(s, pairs[i].key, pairs[i].ri)) {
                freed++;
            }
            continue;
        }
        int a = frame_abandoned(frame);
        if (a < 0) {
            pairs_free(pairs, n);
            PyMem_Free(tokens);
            return -1;
        }
        if (a && rs_end(s, pairs[i].key, pairs[i].ri)) {
            freed++;
        }
    }
    if (pairs) {
        pairs_free(pairs, n);
    }
    PyMem_Free(tokens);
    return freed;
}

static void
rs_flush(RetState *s)
{
    if (s->solo_key != NULL) {
        PyObject *v = act_pop(s, s->solo_key);
        rs_recycle(s, v);
    }
    PyObject *all = map_take_all(&s->active);
    if (all == NULL) {
        PyErr_Clear();
        return;
    }
    Py_ssize_t n = PyList_GET_SIZE(all);
    for (Py_ssize_t i = 0; i < n; i++) {
        rs_recycle(s, Py_NewRef(PyList_GET_ITEM(all, i)));
    }
    Py_DECREF(all);
}

static PyObject *
rs_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rp", "maxactive", NULL};
    PyObject *rp;
    Py_ssize_t maxactive;
    if (g_cfg == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "pyprobes._speedups.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On:RetState", kwlist, &rp, &maxactive)) {
        return NULL;
    }
    if (maxactive < 0) {
        maxactive = 0;
    }
    Counters *counters = counters_of(rp);
    if (counters == NULL) {
        return NULL;
    }
    RetState *s = (RetState *)type->tp_alloc(type, 0);
    if (s == NULL) {
        Py_DECREF(counters);
        return NULL;
    }
    s->rp = Py_NewRef(rp);
    s->counters = counters;
    s->maxactive = maxactive;
    /* No instance is made yet: a large maxactive costs only what is used (rs_grow). */
    return (PyObject *)s;
}

static int
rs_traverse(RetState *s, visitproc visit, void *arg)
{
    Py_VISIT(s->rp);
    Py_VISIT(s->counters);
    for (Py_ssize_t i = 0; i < s->nfree; i++) {
        Py_VISIT(s->free[i]);
    }
    Py_VISIT(s->solo);
    Py_ssize_t cap = s->active.slots ? s->active.mask + 1 : 0;
    for (Py_ssize_t j = 0; j < cap; j++) {
        if (s->active.slots[j].key != NULL) {
            Py_VISIT(s->active.slots[j].value);
        }
    }
    return 0;
}

static int
rs_clear(RetState *s)
{
    s->dead = 1;
    Py_CLEAR(s->rp);
    Py_CLEAR(s->counters);
    while (s->nfree > 0) {
        PyObject *ri = s->free[--s->nfree];
        Py_DECREF(ri);
    }
    s->solo_key = NULL;
    Py_CLEAR(s->solo);
    map_free(&s->active);
    return 0;
}

static void
rs_dealloc(RetState *s)
{
    PyObject_GC_UnTrack(s);
    rs_clear(s);
    PyMem_Free(s->free);
    s->free = NULL;
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
rs_py_reclaim(RetState *s, PyObject *unused)
{
    Py_INCREF(s);
    Py_ssize_t n = rs_reclaim(s);
    Py_DECREF(s);
    return n < 0 ? NULL : PyLong_FromSsize_t(n);
}

static PyObject *
rs_py_flush(RetState *s, PyObject *unused)
{
    Py_INCREF(s);
    rs_flush(s);
    Py_DECREF(s);
    Py_RETURN_NONE;
}

static PyObject *
rs_py_kill(RetState *s, PyObject *unused)
{
    s->dead = 1;
    Py_RETURN_NONE;
}

static PyObject *
rs_py_activations(RetState *s, PyObject *unused)
{
    Py_ssize_t n;
    Pair *pairs = rs_snapshot(s, &n);
    if (n < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        pairs_free(pairs, n);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = Py_BuildValue("(NO)", PyLong_FromVoidPtr(pairs[i].key), pairs[i].ri);
        if (t == NULL) {
            Py_DECREF(out);
            pairs_free(pairs, n);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    if (pairs) {
        pairs_free(pairs, n);
    }
    return out;
}

static PyObject *
rs_py_end(RetState *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "end(fid, ri) takes 2 arguments");
        return NULL;
    }
    void *key = PyLong_AsVoidPtr(args[0]);
    if (key == NULL && PyErr_Occurred()) {
        return NULL;
    }
    Py_INCREF(s);
    int r = rs_end(s, key, args[1]);
    Py_DECREF(s);
    return PyBool_FromLong(r);
}

static PyObject *
rs_get_nactive(RetState *s, void *closure)
{
    return PyLong_FromSsize_t(s->nalloc - s->nfree);
}

static PyObject *
rs_get_dead(RetState *s, void *closure)
{
    return PyBool_FromLong(s->dead);
}

static PyObject *
rs_get_rp(RetState *s, void *closure)
{
    return Py_NewRef(s->rp ? s->rp : Py_None);
}

static PyMethodDef rs_methods[] = {
    {"reclaim", (PyCFunction)rs_py_reclaim, METH_NOARGS,
     "Flush activations that can never end (their frame is referenced by us alone)."},
    {"flush", (PyCFunction)rs_py_flush, METH_NOARGS, "End every activation without handlers."},
    {"kill", (PyCFunction)rs_py_kill, METH_NOARGS,
     "Mark the state dropped: the callbacks no longer start or end activations in it."},
    {"activations", (PyCFunction)rs_py_activations, METH_NOARGS,
     "The live activations as a list of (id(frame), instance)."},
    {"end", (PyCFunction)(void (*)(void))rs_py_end, METH_FASTCALL,
     "end(fid, ri): end that activation without handler if ri is still the one at fid."},
    {NULL},
};

static PyGetSetDef rs_getset[] = {
    {"nactive", (getter)rs_get_nactive, NULL, "Instances in use.", NULL},
    {"dead", (getter)rs_get_dead, NULL, "True once dropped.", NULL},
    {"rp", (getter)rs_get_rp, NULL, "The kretprobe.", NULL},
    {NULL},
};

static PyMemberDef rs_members[] = {
    {"maxactive", Py_T_PYSSIZET, offsetof(RetState, maxactive), Py_READONLY, NULL},
    {NULL},
};

static PyTypeObject RetStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.RetState",
    .tp_basicsize = sizeof(RetState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "RetState(rp, maxactive): one registration of a kretprobe: its instance pool and "
              "its live activations.",
    .tp_new = rs_new,
    .tp_dealloc = (destructor)rs_dealloc,
    .tp_traverse = (traverseproc)rs_traverse,
    .tp_clear = (inquiry)rs_clear,
    .tp_methods = rs_methods,
    .tp_getset = rs_getset,
    .tp_members = rs_members,
};

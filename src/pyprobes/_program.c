/* --- PROGRAMS: pyprobes.engine.program run in C -------------------------------------------
 * Included by _speedups.c (one translation unit: the dispatch inlines prog_run). A Program
 * object is a probe's handler that the dispatch recognises by its type and runs here, with no
 * Python call: read a few values from the hit, test the filter, bump a slot of the store. The
 * reference is ProgramHandler in pyprobes/engine/program.py; every step follows it, in its
 * order. ccore lowers the Program dataclass into plain tuples (program.lower) for make().
 *
 * No code of the probed program runs here: values are compared, hashed and tested only when
 * they are exact str, int, bool, float or None (whose slots are CPython's own); other keys
 * go to key_of, a function of ours. Everything runs with the GIL held; take() swaps the store
 * out before it builds Python objects (which may run a collection, and so other threads). */

enum { V_DURATION, V_RETVAL, V_EXCEPTION, V_THREAD, V_LOCAL };
enum { C_CMP, C_TRUTH, C_ALL, C_ANY, C_NOT };
enum { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN, OP_IS, OP_ISNOT };
enum { S_ATTR, S_ITEM };
#define NBUCKETS 65
#define NEED_FRAME 1    /* a local is read */
#define NEED_DURATION 2 /* $duration is read */

typedef struct {
    int kind;       /* S_ATTR or S_ITEM */
    int dunder;     /* an attribute named __x__: refused (engine.reads.is_dunder) */
    PyObject *arg;  /* strong: the attribute's name (interned) or the literal key */
} PStep;

typedef struct {
    int kind;
    Py_ssize_t npath;
    PStep *path;    /* the steps after the root value, or NULL */
    PyObject *name; /* strong, interned: a local's name; else NULL */
    /* a local's slot in the frames of `code` (strong), found at the first hit in it: >= 0, or
     * -1 when it is read through the frame object (a cell, a free variable...), -2 when the
     * code has no such local */
    PyObject *code;
    Py_ssize_t slot;
} PVar;

typedef struct PCond {
    int kind, op;
    PVar var;
    PyObject *konst; /* strong: a scalar, or a tuple for in / not in */
    Py_ssize_t n;
    struct PCond *parts;
} PCond;

typedef struct {
    long long count, skipped, max;
    unsigned long long total_lo, total_hi;
    __int128 lsum;      /* a linear histogram's total (its values may be negative) */
    long long *buckets; /* nscales * NBUCKETS (linear: nlin + 2), or NULL without a hist */
} PSlot;

/* The DDSketch buckets of one sign: an open-addressing map index -> count (linear probing,
 * at most half full). */
#define SB_EMPTY LLONG_MIN
typedef struct {
    long long *keys, *counts;
    Py_ssize_t n, cap;
} SBuckets;

/* What --stats gathered (engine.program.StatsParts). While every value is an int of 64 bits
 * the sum, min and max are C integers; the first other number (a float, a wider int) turns
 * them into Python numbers, updated from then on with the very operations output.Stats
 * runs (so a float sum rounds as it does, in the order of the hits). */
typedef struct {
    long long count, zeros, skipped;
    int generic;
    __int128 isum;
    long long imin, imax;
    PyObject *osum, *omin, *omax; /* strong, when generic */
    SBuckets pos, neg;
} PStats;

typedef struct {
    PyObject_HEAD
    PyObject *program;      /* strong: the Program it was made from */
    PyObject *key_of;       /* strong */
    PyObject *make_results; /* strong: program.results_from_raw */
    PCond *filter;          /* NULL: none */
    int has_key, has_hist;
    int needs; /* NEED_FRAME | NEED_DURATION: what a hit must supply (nothing else is read) */
    PVar key, hist;
    Py_ssize_t nscales;
    long long scales[8];
    /* --lhist: hist counted in nlin buckets of lin_step from lin_lo, one below, one above */
    int linear;
    long long lin_lo, lin_hi, lin_step;
    Py_ssize_t nlin;
    Py_ssize_t max_keys;
    /* the store */
    PyObject *keys; /* dict: key -> slot index (PyLong) */
    PSlot *slots;
    Py_ssize_t nslots, cap;
    long long filtered, overflow;
    /* events: with a ring, a hit that passes the filter also writes a record there */
    PyObject *ring; /* strong RingObj, or NULL */
    int probe;      /* the ring's id of this program's probe */
    Py_ssize_t nfields;
    PVar fields[8]; /* the values a record holds (REC_MAXV) */
    int has_stats;
    PVar stats;
    double log_gamma; /* log((1 + a) / (1 - a)), as output.Stats computes it */
    PStats st;
} ProgObj;

static inline int
is_scalar(PyObject *v)
{
    return PyUnicode_CheckExact(v) || PyLong_CheckExact(v) || PyBool_Check(v) ||
           PyFloat_CheckExact(v) || v == Py_None;
}

/* What lang.filter compares by its rendering: equal to no scalar constant, and no order. */
static inline int
is_plain(PyObject *v)
{
    return PyBytes_CheckExact(v) || PyTuple_CheckExact(v) || PyList_CheckExact(v) ||
           PyDict_CheckExact(v) || PyAnySet_CheckExact(v);
}

static PyTypeObject ProgType;
static PyObject *g_threading;   /* the threading module (strong) */
static PyObject *s_active, *s_name_attr, *s_thread_key;
static PyObject *g_fault_key;   /* "(fault)" */
static PyObject *g_nan;         /* one float NaN: every NaN key is this one */
static PyObject *s_dunder_name; /* "__name__" */
static PyObject *s_dunder_dict; /* "__dict__" */
static PyObject *g_get_attr;    /* engine.reads.get_attr (strong), imported by the first
                                 * program with an attribute step */

static void
pvar_clear(PVar *v)
{
    Py_CLEAR(v->name);
    Py_CLEAR(v->code);
    for (Py_ssize_t i = 0; i < v->npath; i++) {
        Py_CLEAR(v->path[i].arg);
    }
    PyMem_Free(v->path);
    v->path = NULL;
    v->npath = 0;
}

/* The steps of a lowered Var: ((0, name) | (1, key), ...). 0 or -1. */
static int
pvar_path_from(PyObject *path, PVar *out)
{
    if (!PyTuple_Check(path)) {
        PyErr_SetString(PyExc_TypeError, "a lowered Var's path is a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(path);
    if (n == 0) {
        return 0;
    }
    out->path = PyMem_Calloc((size_t)n, sizeof(PStep));
    if (out->path == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long kind;
        PyObject *arg;
        PyObject *step = PyTuple_GET_ITEM(path, i);
        if (!PyTuple_Check(step) || !PyArg_ParseTuple(step, "lO", &kind, &arg) ||
            (kind != S_ATTR && kind != S_ITEM) || (kind == S_ATTR && !PyUnicode_CheckExact(arg)) ||
            (kind == S_ITEM && !is_scalar(arg))) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "a step is (0, attribute) or (1, scalar key)");
            }
            return -1;
        }
        out->npath = i + 1;
        out->path[i].kind = (int)kind;
        Py_INCREF(arg);
        if (kind == S_ATTR) {
            PyUnicode_InternInPlace(&arg);
            Py_ssize_t len = PyUnicode_GET_LENGTH(arg);
            out->path[i].dunder = len > 4 && PyUnicode_READ_CHAR(arg, 0) == '_' &&
                                  PyUnicode_READ_CHAR(arg, 1) == '_' &&
                                  PyUnicode_READ_CHAR(arg, len - 1) == '_' &&
                                  PyUnicode_READ_CHAR(arg, len - 2) == '_';
            if (g_get_attr == NULL) {
                PyObject *reads = PyImport_ImportModule("pyprobes.engine.reads");
                g_get_attr = reads != NULL ? PyObject_GetAttrString(reads, "get_attr") : NULL;
                Py_XDECREF(reads);
                if (g_get_attr == NULL) {
                    Py_DECREF(arg);
                    return -1;
                }
            }
        }
        out->path[i].arg = arg;
    }
    return 0;
}

static void
pcond_clear(PCond *c)
{
    pvar_clear(&c->var);
    Py_CLEAR(c->konst);
    for (Py_ssize_t i = 0; i < c->n; i++) {
        pcond_clear(&c->parts[i]);
    }
    PyMem_Free(c->parts);
    c->parts = NULL;
    c->n = 0;
}

static int
pvar_from(PyObject *t, PVar *out, int *needs)
{
    long kind;
    PyObject *name, *path;
    memset(out, 0, sizeof(*out));
    if (!PyTuple_Check(t) || !PyArg_ParseTuple(t, "lOO", &kind, &name, &path)) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "a lowered Var is (kind, name, path)");
        }
        return -1;
    }
    if (kind < V_DURATION || kind > V_LOCAL) {
        PyErr_Format(PyExc_ValueError, "no Var kind %ld", kind);
        return -1;
    }
    out->kind = (int)kind;
    if (pvar_path_from(path, out) < 0) {
        return -1;
    }
    if (kind == V_DURATION) {
        *needs |= NEED_DURATION;
    }
    if (kind == V_LOCAL) {
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "a local Var is named by a str");
            return -1;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        out->name = name;
        *needs |= NEED_FRAME;
    }
    return 0;
}

static int
pcond_from(PyObject *t, PCond *out, int *needs, int depth)
{
    memset(out, 0, sizeof(*out));
    if (depth > 100) {
        PyErr_SetString(PyExc_RecursionError, "a program's filter nests too deep");
        return -1;
    }
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2) {
        PyErr_SetString(PyExc_TypeError, "a lowered condition is a tuple (kind, ...)");
        return -1;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(t, 0));
    if (kind == -1 && PyErr_Occurred()) {
        return -1;
    }
    out->kind = (int)kind;
    switch (kind) {
    case C_CMP: {
        if (PyTuple_GET_SIZE(t) != 4) {
            PyErr_SetString(PyExc_TypeError, "a lowered Cmp is (0, op, var, const)");
            return -1;
        }
        long op = PyLong_AsLong(PyTuple_GET_ITEM(t, 1));
        if (op < OP_EQ || op > OP_ISNOT) {
            if (!PyErr_Occurred()) {
                PyErr_Format(PyExc_ValueError, "no comparison %ld", op);
            }
            return -1;
        }
        out->op = (int)op;
        out->konst = Py_NewRef(PyTuple_GET_ITEM(t, 3));
        return pvar_from(PyTuple_GET_ITEM(t, 2), &out->var, needs);
    }
    case C_TRUTH:
        return pvar_from(PyTuple_GET_ITEM(t, 1), &out->var, needs);
    case C_ALL:
    case C_ANY:
    case C_NOT: {
        PyObject *parts = PyTuple_GET_ITEM(t, 1);
        if (kind == C_NOT) {
            out->parts = PyMem_Calloc(1, sizeof(PCond));
            if (out->parts == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            out->n = 1;
            return pcond_from(parts, &out->parts[0], needs, depth + 1);
        }
        if (!PyTuple_Check(parts)) {
            PyErr_SetString(PyExc_TypeError, "the parts of a lowered AllOf/AnyOf are a tuple");
            return -1;
        }
        Py_ssize_t n = PyTuple_GET_SIZE(parts);
        out->parts = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PCond));
        if (out->parts == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            out->n = i + 1;
            if (pcond_from(PyTuple_GET_ITEM(parts, i), &out->parts[i], needs,
                           depth + 1) < 0) {
                return -1;
            }
        }
        return 0;
    }
    default:
        PyErr_Format(PyExc_ValueError, "no condition kind %ld", kind);
        return -1;
    }
}

static void
pstats_clear(PStats *st)
{
    Py_CLEAR(st->osum);
    Py_CLEAR(st->omin);
    Py_CLEAR(st->omax);
    PyMem_Free(st->pos.keys);
    PyMem_Free(st->pos.counts);
    PyMem_Free(st->neg.keys);
    PyMem_Free(st->neg.counts);
    memset(st, 0, sizeof(*st));
}

static void
prog_reset_store(ProgObj *p)
{
    for (Py_ssize_t i = 0; i < p->nslots; i++) {
        PyMem_Free(p->slots[i].buckets);
    }
    PyMem_Free(p->slots);
    p->slots = NULL;
    p->nslots = p->cap = 0;
    p->filtered = p->overflow = 0;
}

static void
prog_dealloc(ProgObj *p)
{
    PyObject_GC_UnTrack(p);
    Py_CLEAR(p->program);
    Py_CLEAR(p->key_of);
    Py_CLEAR(p->make_results);
    Py_CLEAR(p->keys);
    if (p->filter != NULL) {
        pcond_clear(p->filter);
        PyMem_Free(p->filter);
    }
    pvar_clear(&p->key);
    pvar_clear(&p->hist);
    pvar_clear(&p->stats);
    pstats_clear(&p->st);
    for (Py_ssize_t i = 0; i < p->nfields; i++) {
        pvar_clear(&p->fields[i]);
    }
    Py_CLEAR(p->ring);
    prog_reset_store(p);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static int
prog_traverse(ProgObj *p, visitproc visit, void *arg)
{
    Py_VISIT(p->program);
    Py_VISIT(p->key_of);
    Py_VISIT(p->make_results);
    Py_VISIT(p->keys);
    Py_VISIT(p->ring);
    return 0;
}

static int
prog_tp_clear(ProgObj *p)
{
    Py_CLEAR(p->key_of);
    Py_CLEAR(p->make_results);
    Py_CLEAR(p->keys);
    Py_CLEAR(p->ring);
    return 0;
}

static PyTypeObject RingType;

/* Program(lowered, program, key_of, make_results, ring=None, probe=0) */
static PyObject *
prog_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"lowered", "program", "key_of", "make_results", "ring", "probe",
                             NULL};
    PyObject *lowered, *program, *key_of, *make_results, *ring = Py_None;
    int probe = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOO|Oi:Program", kwlist, &PyTuple_Type,
                                     &lowered, &program, &key_of, &make_results, &ring, &probe)) {
        return NULL;
    }
    PyObject *filter, *key, *hist, *scales, *fields, *stats, *lhist = Py_None;
    Py_ssize_t max_keys;
    double accuracy;
    if (!PyArg_ParseTuple(lowered, "OOOO!nO!Od|O", &filter, &key, &hist, &PyTuple_Type, &scales,
                          &max_keys, &PyTuple_Type, &fields, &stats, &accuracy, &lhist)) {
        return NULL;
    }
    long long lin_lo = 0, lin_hi = 0, lin_step = 0;
    if (lhist != Py_None) {
        if (!PyTuple_Check(lhist) || !PyArg_ParseTuple(lhist, "LLL", &lin_lo, &lin_hi, &lin_step) ||
            !(lin_lo < lin_hi && lin_step > 0 && lin_lo >= -(1LL << 62) && lin_hi <= (1LL << 62) &&
              (lin_hi - lin_lo) % lin_step == 0 && (lin_hi - lin_lo) / lin_step <= 1000)) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "a program's lhist is (lo, hi, step)");
            }
            return NULL;
        }
    }
    if (!(accuracy > 0 && accuracy < 1)) {
        PyErr_SetString(PyExc_ValueError, "a program's stats accuracy is in (0, 1)");
        return NULL;
    }
    if (ring != Py_None && !Py_IS_TYPE(ring, &RingType)) {
        PyErr_SetString(PyExc_TypeError, "a program's ring is a _speedups.Ring");
        return NULL;
    }
    if (PyTuple_GET_SIZE(fields) > 8) {
        PyErr_SetString(PyExc_ValueError, "a program's records hold at most 8 values");
        return NULL;
    }
    Py_ssize_t nscales = PyTuple_GET_SIZE(scales);
    if (nscales < 1 || nscales > 8 || max_keys < 1) {
        PyErr_SetString(PyExc_ValueError, "a program has 1 to 8 hist scales and max_keys >= 1");
        return NULL;
    }
    ProgObj *p = (ProgObj *)type->tp_alloc(type, 0);
    if (p == NULL) {
        return NULL;
    }
    p->program = Py_NewRef(program);
    p->key_of = Py_NewRef(key_of);
    p->make_results = Py_NewRef(make_results);
    p->max_keys = max_keys;
    p->nscales = nscales;
    if (lhist != Py_None) {
        p->linear = 1;
        p->lin_lo = lin_lo;
        p->lin_hi = lin_hi;
        p->lin_step = lin_step;
        p->nlin = (Py_ssize_t)((lin_hi - lin_lo) / lin_step);
    }
    for (Py_ssize_t i = 0; i < nscales; i++) {
        p->scales[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(scales, i));
        if (p->scales[i] <= 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "hist scales are positive");
            }
            goto fail;
        }
    }
    if (filter != Py_None) {
        p->filter = PyMem_Calloc(1, sizeof(PCond));
        if (p->filter == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        if (pcond_from(filter, p->filter, &p->needs, 0) < 0) {
            goto fail;
        }
    }
    if (key != Py_None) {
        p->has_key = 1;
        if (pvar_from(key, &p->key, &p->needs) < 0) {
            goto fail;
        }
    }
    if (hist != Py_None) {
        p->has_hist = 1;
        if (pvar_from(hist, &p->hist, &p->needs) < 0) {
            goto fail;
        }
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
        if (pvar_from(PyTuple_GET_ITEM(fields, i), &p->fields[i], &p->needs) < 0) {
            goto fail;
        }
        p->nfields = i + 1;
    }
    p->log_gamma = log((1 + accuracy) / (1 - accuracy));
    if (stats != Py_None) {
        p->has_stats = 1;
        if (pvar_from(stats, &p->stats, &p->needs) < 0) {
            goto fail;
        }
    }
    if (ring != Py_None) {
        p->ring = Py_NewRef(ring);
        p->probe = probe;
        /* A return's record names its caller: from the interpreter frames (HAVE_IFRAME), or
         * the frame objects. */
        p->needs |= NEED_DURATION | (HAVE_IFRAME ? 0 : NEED_FRAME);
    }
    p->keys = PyDict_New();
    if (p->keys == NULL) {
        goto fail;
    }
    return (PyObject *)p;
fail:
    Py_DECREF(p);
    return NULL;
}

/* --- per hit ---------------------------------------------------------------------------- */

typedef struct {
    PyObject *ctx;       /* the hit's context, or NULL: made by need_ctx when a local is read */
    int has_duration;    /* a return */
    long long duration;  /* valid at a return when the program reads it (NEED_DURATION) */
    PyObject *retval, *exc; /* borrowed (Py_None when absent) */
    PyObject *code;      /* borrowed: the probed code */
    long offset, lineno; /* the probed instruction, and its line if known (else -1) */
    void *token;         /* a return's: the probed interpreter frame (HAVE_IFRAME), or NULL */
    PyObject *ri;        /* borrowed: a return's KretprobeInstance, or NULL (entry) */
} PEnv;

/* The thread ident's int, as threading._active's keys are (borrowed): made once per thread and
 * kept in a small table (GIL-protected, a slot replaced on collision), not at every hit. */
#define IDENT_SLOTS 64
static struct {
    unsigned long ident;
    PyObject *key;
} g_idents[IDENT_SLOTS];

static PyObject *
prog_ident_key(void)
{
    unsigned long ident = PyThread_get_thread_ident();
    size_t i = (size_t)((ident >> 12) ^ ident) % IDENT_SLOTS; /* idents are aligned addresses */
    if (g_idents[i].key == NULL || g_idents[i].ident != ident) {
        PyObject *k = PyLong_FromUnsignedLong(ident);
        if (k == NULL) {
            return NULL;
        }
        Py_XSETREF(g_idents[i].key, k);
        g_idents[i].ident = ident;
    }
    return g_idents[i].key;
}

/* The calling thread's (Thread, its instance dict or None) (borrowed), or NULL (no error)
 * when threading does not know it: threading._active[ident], read from the module's dict (a
 * forked child rebinds it), as getattr(threading, "_active") does for a plain module. Once
 * found it is kept in the thread state's dict (an extension's per-thread storage, gone with
 * the thread), as the thread keeps its Thread for its life, and a fork keeps the forking
 * thread's; and the thread state is remembered in g_tnames, so that the next hits on this
 * thread find it with no dict lookup. */
#define TNAME_SLOTS 64
static struct {
    PyThreadState *ts; /* with its id and its interpreter's: a thread state made later at the
                        * same address differs in one of them (ids are per interpreter, and
                        * an interpreter's id is never used again) */
    uint64_t id;
    int64_t iid;
    PyObject *pair;    /* borrowed: the thread state's dict holds it while ts lives */
    unsigned int tver; /* the version of the Thread's type known to have no class _name */
} g_tnames[TNAME_SLOTS];

static PyObject *
prog_thread(void)
{
    PyThreadState *ts = PyThreadState_Get();
    size_t slot = (size_t)(((uintptr_t)ts >> 6) % TNAME_SLOTS);
    int64_t iid = PyInterpreterState_GetID(ts->interp);
    if (g_tnames[slot].ts == ts && g_tnames[slot].id == ts->id && g_tnames[slot].iid == iid) {
        return g_tnames[slot].pair;
    }
    PyObject *tsd = PyThreadState_GetDict(); /* borrowed */
    PyObject *pair = tsd != NULL ? PyDict_GetItemWithError(tsd, s_thread_key) : NULL;
    if (pair == NULL && !PyErr_Occurred()) {
        PyObject *mdict = PyModule_GetDict(g_threading); /* borrowed */
        PyObject *active = mdict != NULL ? PyDict_GetItemWithError(mdict, s_active) : NULL;
        PyObject *ident = active != NULL && PyDict_Check(active) ? prog_ident_key() : NULL;
        PyObject *t = ident != NULL ? PyDict_GetItemWithError(active, ident) : NULL; /* ints */
        if (t != NULL && tsd != NULL) {
            /* its __dict__, to read _name from when nothing else could answer getattr */
            PyObject *d = Py_TYPE(t)->tp_getattro == PyObject_GenericGetAttr
                              ? PyObject_GenericGetDict(t, NULL)
                              : Py_NewRef(Py_None);
            PyObject *made = d != NULL ? PyTuple_Pack(2, t, d) : NULL;
            Py_XDECREF(d);
            if (made != NULL && PyDict_SetItem(tsd, s_thread_key, made) == 0) {
                pair = made; /* (the dict holds it) */
            }
            Py_XDECREF(made);
        }
    }
    if (pair == NULL || !PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Clear();
        return NULL;
    }
    g_tnames[slot].ts = ts;
    g_tnames[slot].id = ts->id;
    g_tnames[slot].iid = iid;
    g_tnames[slot].pair = pair;
    g_tnames[slot].tver = 0;
    return pair;
}

/* engine.threads.thread_name() (new reference): getattr(thread, "_name", None) if a str.
 * When the Thread's type has object's attribute lookup and no class attribute _name (a
 * property...), that is the instance dict's entry, read straight from it. */
static PyObject *
prog_thread_name(void)
{
    PyObject *pair = prog_thread();
    if (pair != NULL) {
        PyObject *t = PyTuple_GET_ITEM(pair, 0), *d = PyTuple_GET_ITEM(pair, 1);
        PyTypeObject *tp = Py_TYPE(t);
        PyObject *name;
        /* (a type's version changes with its attributes; 0 is no version) */
        size_t slot = (size_t)(((uintptr_t)PyThreadState_Get() >> 6) % TNAME_SLOTS);
        int plain = tp->tp_version_tag != 0 && g_tnames[slot].pair == pair &&
                    g_tnames[slot].tver == tp->tp_version_tag;
        if (!plain && PyDict_Check(d) && tp->tp_getattro == PyObject_GenericGetAttr &&
            _PyType_Lookup(tp, s_name_attr) == NULL) {
            plain = 1;
            if (g_tnames[slot].pair == pair) {
                g_tnames[slot].tver = tp->tp_version_tag; /* (set by the lookup) */
            }
        }
        if (plain) {
            name = PyDict_GetItemWithError(d, s_name_attr); /* borrowed */
            Py_XINCREF(name);
        }
        else {
            Py_INCREF(t);
            name = PyObject_GetAttr(t, s_name_attr);
            Py_DECREF(t);
        }
        if (name != NULL && PyUnicode_Check(name)) {
            return name;
        }
        Py_XDECREF(name);
        PyErr_Clear();
    }
    return PyUnicode_FromFormat("Dummy-%lu", PyThread_get_thread_native_id());
}

#if HAVE_IFRAME
#define FAST_LOCAL 0x20 /* CO_FAST_LOCAL; with CO_FAST_CELL 0x40, CO_FAST_FREE 0x80 and
                         * CO_FAST_HIDDEN 0x10 it is read through the frame object */

/* A plain local of the interpreter frame `token`, read from its slot with no frame object:
 * 1 (*value a new reference), 0 (not bound: NameError), -1 (read it through the frame
 * object, as PyFrame_GetVar does). The frame is the probed one, current at the hit. */
static int
iframe_local(PVar *v, void *token, PyObject **value)
{
    IFrame *f = (IFrame *)token;
    PyObject *exe = IFRAME_EXECUTABLE(f);
    if (!PyCode_Check(exe)) {
        return -1;
    }
    PyCodeObject *co = (PyCodeObject *)exe;
    if (v->code != exe) {
        Py_ssize_t slot = -2;
        PyObject *names = co->co_localsplusnames;
        const char *kinds = PyBytes_AS_STRING(co->co_localspluskinds);
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
            PyObject *name = PyTuple_GET_ITEM(names, i);
            if (name == v->name || PyUnicode_Compare(name, v->name) == 0) {
                unsigned char k = (unsigned char)kinds[i];
                slot = (k & FAST_LOCAL) && !(k & (0x10 | 0x40 | 0x80)) ? i : -1;
                break;
            }
        }
        PyErr_Clear();
        if (!(co->co_flags & CO_OPTIMIZED)) {
            slot = -1; /* (module and class bodies: their locals are a dict) */
        }
        Py_XSETREF(v->code, Py_NewRef(exe));
        v->slot = slot;
    }
    if (v->slot == -2) {
        return 0;
    }
    if (v->slot < 0) {
        return -1;
    }
    uintptr_t bits = f->localsplus[v->slot];
#if PY_VERSION_HEX >= 0x030E0000
    if ((bits & 3) == 3) {
        return -1; /* a tagged int: not an object */
    }
    bits &= ~(uintptr_t)3;
#endif
    if (bits == 0) {
        return 0;
    }
    *value = Py_NewRef((PyObject *)bits);
    return 1;
}
#endif

/* Clear an exception a step raised (the value cannot be read: NULL, no error), unless it is
 * not an Exception (KeyboardInterrupt...), which stays set (NULL with an error). */
static PyObject *
step_fault(void)
{
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
    }
    return NULL;
}

/* obj.name as engine.reads.get_attr reads it (new reference; NULL: cannot be read). The
 * common case is read here: an object of a type with object's own attribute lookup, whose
 * class attribute of that name is absent or a plain value (the instance dict's entry, else
 * the class's value: what get_attr reads, and what PyObject_GenericGetAttr does then), or a
 * __slots__ member. Anything else (a property, a method, a builtin type's getset, a class
 * object...) is get_attr's to read or refuse. */
static PyObject *
step_attr(PStep *st, PyObject *obj)
{
    PyTypeObject *tp = Py_TYPE(obj);
    if (!st->dunder && tp->tp_getattro == PyObject_GenericGetAttr) {
        PyObject *raw = _PyType_Lookup(tp, st->arg); /* borrowed */
        PyObject *r = NULL;
        if (raw == NULL ||
            (Py_TYPE(raw)->tp_descr_get == NULL && Py_TYPE(raw)->tp_descr_set == NULL)) {
            int has_dict = tp->tp_dictoffset != 0 || (tp->tp_flags & Py_TPFLAGS_MANAGED_DICT);
            PyObject *d = has_dict ? _PyType_Lookup(tp, s_dunder_dict) : NULL;
            if (!has_dict || (d != NULL && (Py_IS_TYPE(d, &PyGetSetDescr_Type) ||
                                            Py_IS_TYPE(d, &PyMemberDescr_Type)))) {
                r = PyObject_GenericGetAttr(obj, st->arg);
                return r != NULL ? r : step_fault();
            }
        }
        else if (Py_IS_TYPE(raw, &PyMemberDescr_Type)) {
            r = Py_TYPE(raw)->tp_descr_get(raw, obj, (PyObject *)tp);
            return r != NULL ? r : step_fault();
        }
    }
    PyObject *r = PyObject_CallFunctionObjArgs(g_get_attr, obj, st->arg, NULL); /* ours */
    return r != NULL ? r : step_fault();
}

/* obj[key] as engine.reads.get_item reads it: exact dict, list, tuple, str and bytes only. */
static PyObject *
step_item(PStep *st, PyObject *obj)
{
    PyObject *r = NULL;
    if (PyDict_CheckExact(obj)) {
        r = PyDict_GetItemWithError(obj, st->arg); /* a scalar key: its hash runs no code */
        return r != NULL ? Py_NewRef(r) : (PyErr_Occurred() ? step_fault() : NULL);
    }
    if ((PyList_CheckExact(obj) || PyTuple_CheckExact(obj) || PyUnicode_CheckExact(obj) ||
         PyBytes_CheckExact(obj)) &&
        (PyLong_CheckExact(st->arg) || PyBool_Check(st->arg))) {
        r = PyObject_GetItem(obj, st->arg);
        return r != NULL ? r : step_fault();
    }
    return NULL; /* get_item refuses it */
}

/* A Var's value (new reference), or NULL with no error set when it cannot be read (the
 * reference's UNREAD); NULL with an error only for an internal failure. */
static PyObject *
prog_read_root(PVar *v, PEnv *env)
{
    switch (v->kind) {
    case V_DURATION:
        return env->has_duration ? PyLong_FromLongLong(env->duration) : NULL;
    case V_RETVAL: /* None when it raised, as in a return event */
        if (!env->has_duration) {
            return NULL;
        }
        return Py_NewRef(env->exc != Py_None ? Py_None : env->retval);
    case V_EXCEPTION:
        return Py_NewRef(env->exc);
    case V_THREAD:
        return prog_thread_name();
    default: {
        if (env->ctx == NULL) {
            return NULL;
        }
#if HAVE_IFRAME
        PyObject *slot_value;
        void *token = CTX(env->ctx)->token;
        int got = token != NULL ? iframe_local(v, token, &slot_value) : -1;
        if (got >= 0) {
            return got ? slot_value : NULL;
        }
#endif
        PyObject *f = ctx_frame(env->ctx);
        if (f == NULL || !PyFrame_Check(f)) {
            PyErr_Clear();
            return NULL;
        }
        PyObject *value = PyFrame_GetVar((PyFrameObject *)f, v->name);
        if (value == NULL && PyErr_ExceptionMatches(PyExc_NameError)) {
            PyErr_Clear();
        }
        return value;
    }
    }
}

static PyObject *
prog_read(PVar *v, PEnv *env)
{
    PyObject *value = prog_read_root(v, env);
    for (Py_ssize_t i = 0; value != NULL && i < v->npath; i++) {
        PStep *st = &v->path[i];
        PyObject *next = st->kind == S_ATTR ? step_attr(st, value) : step_item(st, value);
        Py_DECREF(value);
        value = next;
    }
    return value;
}

static const int rich_ops[6] = {Py_EQ, Py_NE, Py_LT, Py_LE, Py_GT, Py_GE};
#define P_FAULT 2 /* a comparison that cannot be made: the whole filter is false */

/* 1, 0 or P_FAULT as the reference's _compare; -1 only for an internal failure. */
static int
prog_compare(int op, PyObject *value, PyObject *konst)
{
    if (op == OP_IS || op == OP_ISNOT) {
        return (value == Py_None) == (op == OP_IS);
    }
    if (!is_scalar(value)) {
        if (!is_plain(value)) {
            return P_FAULT; /* lang.filter compares only builtin values */
        }
        if (op == OP_EQ || op == OP_IN) {
            return 0;
        }
        return op == OP_NE || op == OP_NOTIN ? 1 : P_FAULT; /* equal to no constant, no order */
    }
    if (op == OP_IN || op == OP_NOTIN) {
        int found = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(konst) && !found; i++) {
            PyObject *r = PyObject_RichCompare(value, PyTuple_GET_ITEM(konst, i), Py_EQ);
            if (r == NULL) {
                return -1; /* (scalars compare for equality without raising) */
            }
            found = r == Py_True;
            Py_DECREF(r);
        }
        return op == OP_IN ? found : !found;
    }
    PyObject *r = PyObject_RichCompare(value, konst, rich_ops[op]);
    if (r == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            return P_FAULT;
        }
        return -1;
    }
    int t = r == Py_True; /* scalars compare to bools */
    Py_DECREF(r);
    return t;
}

/* 1, 0, P_FAULT or -1 (internal failure): parts in order, stopping at the first that decides. */
static int
prog_holds(PCond *c, PEnv *env)
{
    switch (c->kind) {
    case C_CMP:
    case C_TRUTH: {
        PyObject *v = prog_read(&c->var, env);
        if (v == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            v = Py_NewRef(g_fault_key); /* what lang.capture makes of a value it cannot read */
        }
        int r = c->kind == C_CMP ? prog_compare(c->op, v, c->konst)
                                 : (is_scalar(v) ? PyObject_IsTrue(v) : P_FAULT);
        Py_DECREF(v);
        return r;
    }
    case C_NOT: {
        int r = prog_holds(&c->parts[0], env);
        return (r < 0 || r == P_FAULT) ? r : !r;
    }
    default: {
        int want = c->kind == C_ANY;
        for (Py_ssize_t i = 0; i < c->n; i++) {
            int r = prog_holds(&c->parts[i], env);
            if (r < 0 || r == P_FAULT || r == want) {
                return r;
            }
        }
        return !want;
    }
    }
}

/* The slot of a key (NULL with no error: overflow; NULL with an error: failure). */
static PSlot *
prog_slot(ProgObj *p, PyObject *key)
{
    if (!p->has_key && p->nslots) {
        return &p->slots[0];
    }
    if (p->has_key) {
        PyObject *idx = PyDict_GetItemWithError(p->keys, key);
        if (idx != NULL) {
            return &p->slots[PyLong_AsSsize_t(idx)];
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    if (p->nslots >= p->max_keys) {
        p->overflow++;
        return NULL;
    }
    if (p->nslots == p->cap) {
        Py_ssize_t cap = p->cap ? p->cap * 2 : 4;
        PSlot *grown = PyMem_Realloc(p->slots, (size_t)cap * sizeof(PSlot));
        if (grown == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        p->slots = grown;
        p->cap = cap;
    }
    PSlot *s = &p->slots[p->nslots];
    memset(s, 0, sizeof(*s));
    if (p->has_hist) {
        size_t nb = p->linear ? (size_t)(p->nlin + 2) : (size_t)(p->nscales * NBUCKETS);
        s->buckets = PyMem_Calloc(nb, sizeof(long long));
        if (s->buckets == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
    }
    if (p->has_key) {
        PyObject *idx = PyLong_FromSsize_t(p->nslots);
        if (idx == NULL || PyDict_SetItem(p->keys, key, idx) < 0) {
            Py_XDECREF(idx);
            PyMem_Free(s->buckets);
            return NULL;
        }
        Py_DECREF(idx);
    }
    p->nslots++;
    return s;
}

/* The key of this hit (new reference; the reference's order of cases). */
static PyObject *
prog_key(ProgObj *p, PEnv *env)
{
    PyObject *v = prog_read(&p->key, env);
    if (v == NULL) {
        return PyErr_Occurred() ? NULL : Py_NewRef(g_fault_key);
    }
    if (!is_scalar(v)) {
        /* (type name, key_of(value)): a key whose hash and equality run no code */
        PyObject *text = PyObject_CallOneArg(p->key_of, v); /* ours, never the program's */
        PyObject *tname = PyType_GetName(Py_TYPE(v));
        Py_DECREF(v);
        PyObject *k = NULL;
        if (text != NULL && tname != NULL) {
            k = PyUnicode_CheckExact(text) ? PyTuple_Pack(2, tname, text)
                                           : Py_NewRef(g_fault_key);
        }
        else if (tname != NULL && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
            PyErr_Clear(); /* key_of failed on this value: as a value that cannot be read */
            k = Py_NewRef(g_fault_key);
        }
        Py_XDECREF(text);
        Py_XDECREF(tname);
        return k;
    }
    if (PyFloat_CheckExact(v) && isnan(PyFloat_AS_DOUBLE(v))) {
        Py_DECREF(v);
        return Py_NewRef(g_nan);
    }
    return v;
}

static inline int
bit_length(unsigned long long v)
{
    return v ? 64 - __builtin_clzll(v) : 0;
}

/* The histogram value of this hit: 1 and *out, 0 to skip it, -1 on a failure. */
static int
prog_hist_value(ProgObj *p, PEnv *env, unsigned long long *out)
{
    if (p->hist.kind == V_DURATION && !p->hist.npath && env->has_duration &&
        env->duration >= 0) {
        *out = (unsigned long long)env->duration; /* no int object for the usual case */
        return 1;
    }
    PyObject *raw = prog_read(&p->hist, env);
    if (raw == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int ok = 0;
    if (PyLong_CheckExact(raw)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(raw, &overflow);
        ok = !overflow && v >= 0;
        *out = (unsigned long long)v;
    }
    else if (PyFloat_CheckExact(raw)) {
        double d = PyFloat_AS_DOUBLE(raw);
        ok = isfinite(d) && d >= 0 && d < 9223372036854775808.0;
        *out = ok ? (unsigned long long)d : 0;
    }
    Py_DECREF(raw);
    return ok;
}

/* The linear histogram value of this hit (an int, or the floor of a finite float, in 64 bits):
 * 1 and *out, 0 to skip it, -1 on a failure. */
static int
prog_lhist_value(ProgObj *p, PEnv *env, long long *out)
{
    if (p->hist.kind == V_DURATION && !p->hist.npath && env->has_duration) {
        *out = env->duration; /* no int object for the usual case */
        return 1;
    }
    PyObject *raw = prog_read(&p->hist, env);
    if (raw == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int ok = 0;
    if (PyLong_CheckExact(raw)) {
        int overflow;
        *out = PyLong_AsLongLongAndOverflow(raw, &overflow);
        ok = !overflow;
    }
    else if (PyFloat_CheckExact(raw)) {
        double d = floor(PyFloat_AS_DOUBLE(raw));
        ok = isfinite(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0;
        *out = ok ? (long long)d : 0;
    }
    Py_DECREF(raw);
    return ok;
}

/* One more value of bucket index k in b: 0, or -1 (no memory). */
static int
sb_add(SBuckets *b, long long k)
{
    if (2 * (b->n + 1) > b->cap) {
        Py_ssize_t cap = b->cap ? b->cap * 2 : 16;
        long long *keys = PyMem_Malloc((size_t)cap * sizeof(long long));
        long long *counts = PyMem_Calloc((size_t)cap, sizeof(long long));
        if (keys == NULL || counts == NULL) {
            PyMem_Free(keys);
            PyMem_Free(counts);
            PyErr_NoMemory();
            return -1;
        }
        for (Py_ssize_t i = 0; i < cap; i++) {
            keys[i] = SB_EMPTY;
        }
        for (Py_ssize_t i = 0; i < b->cap; i++) {
            if (b->keys[i] != SB_EMPTY) {
                size_t j = (size_t)((unsigned long long)b->keys[i] * 0x9E3779B97F4A7C15ull >> 20);
                while (keys[j & (size_t)(cap - 1)] != SB_EMPTY) {
                    j++;
                }
                keys[j & (size_t)(cap - 1)] = b->keys[i];
                counts[j & (size_t)(cap - 1)] = b->counts[i];
            }
        }
        PyMem_Free(b->keys);
        PyMem_Free(b->counts);
        b->keys = keys;
        b->counts = counts;
        b->cap = cap;
    }
    size_t mask = (size_t)(b->cap - 1);
    size_t j = (size_t)((unsigned long long)k * 0x9E3779B97F4A7C15ull >> 20) & mask;
    while (b->keys[j] != SB_EMPTY && b->keys[j] != k) {
        j = (j + 1) & mask;
    }
    if (b->keys[j] == SB_EMPTY) {
        b->keys[j] = k;
        b->n++;
    }
    b->counts[j]++;
    return 0;
}

/* The sketch's bucket of a value that is the double d, as output.Stats._index. */
static int
stats_bucket(ProgObj *p, double d)
{
    if (d > 0) {
        return sb_add(&p->st.pos, (long long)ceil(log(d) / p->log_gamma));
    }
    if (d < 0) {
        return sb_add(&p->st.neg, (long long)ceil(log(-d) / p->log_gamma));
    }
    p->st.zeros++;
    return 0;
}

/* A C __int128 as a Python int (new reference). */
static PyObject *
int128_long(__int128 v)
{
    PyObject *hi = PyLong_FromLongLong((long long)(v >> 64));
    PyObject *lo = PyLong_FromUnsignedLongLong((unsigned long long)v);
    PyObject *sh = PyLong_FromLong(64);
    PyObject *t = NULL, *r = NULL;
    if (hi && lo && sh && (t = PyNumber_Lshift(hi, sh)) != NULL) {
        r = PyNumber_Add(t, lo);
    }
    Py_XDECREF(t);
    Py_XDECREF(sh);
    Py_XDECREF(lo);
    Py_XDECREF(hi);
    return r;
}

/* From now on sum, min and max are Python numbers (the first value that is not a 64-bit
 * int): 0, or -1. */
static int
stats_go_generic(PStats *st)
{
    st->osum = st->count ? int128_long(st->isum) : PyLong_FromLong(0);
    if (st->count) {
        st->omin = PyLong_FromLongLong(st->imin);
        st->omax = PyLong_FromLongLong(st->imax);
    }
    if (st->osum == NULL || (st->count && (st->omin == NULL || st->omax == NULL))) {
        return -1;
    }
    st->generic = 1;
    return 0;
}

/* This hit's --stats value, as output.Stats.add adds it (the reference: ProgramHandler's
 * _add_stats): 0, or -1 on a failure. */
static int
prog_stats_add(ProgObj *p, PEnv *env)
{
    PStats *st = &p->st;
    long long iv = 0;
    int int64 = 0;
    PyObject *raw = NULL;
    if (p->stats.kind == V_DURATION && !p->stats.npath && env->has_duration) {
        iv = env->duration; /* no int object for the usual case */
        int64 = 1;
    }
    else {
        raw = prog_read(&p->stats, env);
        if (raw == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            st->skipped++;
            return 0;
        }
        int ok = 0;
        if (PyLong_CheckExact(raw)) {
            int overflow;
            iv = PyLong_AsLongLongAndOverflow(raw, &overflow);
            int64 = ok = !overflow;
            if (overflow) { /* as wide as the capture rules render as an int */
                PyObject *bits = PyObject_CallMethod(raw, "bit_length", NULL);
                ok = bits != NULL && PyLong_AsLong(bits) <= 768;
                Py_XDECREF(bits);
                if (PyErr_Occurred()) {
                    Py_DECREF(raw);
                    return -1;
                }
            }
        }
        else if (PyFloat_CheckExact(raw)) {
            ok = isfinite(PyFloat_AS_DOUBLE(raw));
        }
        if (!ok) {
            Py_DECREF(raw);
            st->skipped++;
            return 0;
        }
    }
    if (int64 && !st->generic) {
        if (stats_bucket(p, (double)iv) < 0) {
            Py_XDECREF(raw);
            return -1;
        }
        if (st->count == 0 || iv < st->imin) {
            st->imin = iv;
        }
        if (st->count == 0 || iv > st->imax) {
            st->imax = iv;
        }
        st->count++;
        st->isum += iv;
        Py_XDECREF(raw);
        return 0;
    }
    if (raw == NULL && (raw = PyLong_FromLongLong(iv)) == NULL) {
        return -1;
    }
    int rc = -1;
    if (!st->generic && stats_go_generic(st) < 0) {
        goto done;
    }
    double d = PyFloat_CheckExact(raw) ? PyFloat_AS_DOUBLE(raw) : PyLong_AsDouble(raw);
    if ((d == -1.0 && PyErr_Occurred()) || stats_bucket(p, d) < 0) {
        goto done;
    }
    st->count++;
    PyObject *sum = PyNumber_Add(st->osum, raw);
    if (sum == NULL) {
        goto done;
    }
    Py_SETREF(st->osum, sum);
    int lt = st->omin == NULL ? 1 : PyObject_RichCompareBool(raw, st->omin, Py_LT);
    int gt = st->omax == NULL ? 1 : PyObject_RichCompareBool(raw, st->omax, Py_GT);
    if (lt < 0 || gt < 0) {
        goto done;
    }
    if (lt) {
        Py_XSETREF(st->omin, Py_NewRef(raw));
    }
    if (gt) {
        Py_XSETREF(st->omax, Py_NewRef(raw));
    }
    rc = 0;
done:
    Py_DECREF(raw);
    return rc;
}

#include "_records.c"

/* Run the program for one hit: 0, or -1 with an exception (to the fault path). Every value
 * is read first; from the slot lookup on nothing runs code (scalar or (str, str) keys), so
 * no other thread can move the store while a slot pointer is held. */
static int
prog_run(ProgObj *p, PEnv *env)
{
    if (p->filter != NULL) {
        int ok = prog_holds(p->filter, env);
        if (ok < 0) {
            return -1;
        }
        if (ok != 1) {
            p->filtered++;
            return 0;
        }
    }
    PyObject *key = NULL;
    if (p->has_key && (key = prog_key(p, env)) == NULL) {
        return -1;
    }
    unsigned long long value = 0;
    long long lvalue = 0;
    int counted = 0;
    if (p->has_hist && (counted = p->linear ? prog_lhist_value(p, env, &lvalue)
                                            : prog_hist_value(p, env, &value)) < 0) {
        Py_XDECREF(key);
        return -1;
    }
    if (p->has_stats && prog_stats_add(p, env) < 0) {
        Py_XDECREF(key);
        return -1;
    }
    if (p->ring != NULL &&
        ring_push((RingObj *)p->ring, p->probe, p->fields, p->nfields, env) < 0) {
        Py_XDECREF(key);
        return -1;
    }
    PSlot *s = prog_slot(p, key);
    Py_XDECREF(key); /* the dict holds it when it matters; a str, int or tuple frees no code */
    if (s == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    s->count++;
    if (!p->has_hist) {
        return 0;
    }
    if (!counted) {
        s->skipped++;
        return 0;
    }
    if (p->linear) {
        Py_ssize_t b = lvalue < p->lin_lo    ? 0
                       : lvalue >= p->lin_hi ? p->nlin + 1
                                             : 1 + (Py_ssize_t)((lvalue - p->lin_lo) / p->lin_step);
        s->buckets[b]++;
        s->lsum += lvalue;
        return 0;
    }
    for (Py_ssize_t i = 0; i < p->nscales; i++) {
        int b = bit_length(value / (unsigned long long)p->scales[i]);
        s->buckets[i * NBUCKETS + (b ? b : 1)]++;
    }
    unsigned long long lo = s->total_lo + value;
    s->total_hi += lo < s->total_lo;
    s->total_lo = lo;
    if ((long long)value > s->max) {
        s->max = (long long)value;
    }
    return 0;
}

/* --- reading the store -------------------------------------------------------------------- */

/* A log2 histogram's total (new reference): below 2**127 (2**64 hits of values < 2**63). */
static PyObject *
slot_total(PSlot *s)
{
    return int128_long((__int128)(((unsigned __int128)s->total_hi << 64) | s->total_lo));
}

/* The buckets of one sign as a dict {index: count} (new reference). */
static PyObject *
sb_dict(SBuckets *b)
{
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < b->cap; i++) {
        if (b->keys[i] != SB_EMPTY) {
            PyObject *k = PyLong_FromLongLong(b->keys[i]), *n = PyLong_FromLongLong(b->counts[i]);
            int rc = (k && n) ? PyDict_SetItem(d, k, n) : -1;
            Py_XDECREF(k);
            Py_XDECREF(n);
            if (rc < 0) {
                Py_CLEAR(d);
            }
        }
    }
    return d;
}

/* (count, sum, min, max, zeros, pos, neg, skipped): program.RawStats (new reference). */
static PyObject *
pstats_tuple(PStats *st)
{
    PyObject *sum, *lo, *hi;
    if (st->generic) {
        sum = Py_NewRef(st->osum);
        lo = Py_NewRef(st->omin != NULL ? st->omin : Py_None);
        hi = Py_NewRef(st->omax != NULL ? st->omax : Py_None);
    }
    else {
        sum = int128_long(st->isum);
        lo = st->count ? PyLong_FromLongLong(st->imin) : Py_NewRef(Py_None);
        hi = st->count ? PyLong_FromLongLong(st->imax) : Py_NewRef(Py_None);
    }
    PyObject *pos = sb_dict(&st->pos), *neg = sb_dict(&st->neg);
    if (sum == NULL || lo == NULL || hi == NULL || pos == NULL || neg == NULL) {
        Py_XDECREF(sum);
        Py_XDECREF(lo);
        Py_XDECREF(hi);
        Py_XDECREF(pos);
        Py_XDECREF(neg);
        return NULL;
    }
    return Py_BuildValue("(LNNNLNNL)", st->count, sum, lo, hi, st->zeros, pos, neg, st->skipped);
}

/* take() -> make_results(slots, filtered, overflow, stats), slots a list of
 * (key, count, buckets: tuple of {index: n} per scale, total, max, skipped). */
static PyObject *
prog_take(ProgObj *p, PyObject *unused)
{
    /* Swap the store out first: building the result may run other threads' hits. */
    PyObject *fresh = PyDict_New();
    if (fresh == NULL) {
        return NULL;
    }
    PyObject *keys = p->keys;
    p->keys = fresh;
    PSlot *slots = p->slots;
    Py_ssize_t n = p->nslots;
    long long filtered = p->filtered, overflow = p->overflow;
    Py_ssize_t nscales = !p->has_hist ? 0 : p->linear ? 1 : p->nscales;
    Py_ssize_t per_scale = p->linear ? p->nlin + 2 : NBUCKETS;
    p->slots = NULL;
    p->nslots = p->cap = 0;
    p->filtered = p->overflow = 0;
    PStats st = p->st;
    memset(&p->st, 0, sizeof(p->st));

    PyObject *result = NULL, *stats = NULL;
    PyObject *list = PyList_New(n);
    PyObject **by_index = PyMem_Calloc(n ? (size_t)n : 1, sizeof(PyObject *));
    if (list == NULL || by_index == NULL) {
        goto done;
    }
    if (!PyDict_GET_SIZE(keys) && n) {
        by_index[0] = Py_None; /* the one slot of a program without a key */
    }
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(keys, &pos, &k, &v)) {
        by_index[PyLong_AsSsize_t(v)] = k; /* borrowed: keys is held until the end */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PSlot *s = &slots[i];
        PyObject *buckets = PyTuple_New(nscales);
        if (buckets == NULL) {
            goto done;
        }
        for (Py_ssize_t j = 0; j < nscales; j++) {
            PyObject *d = PyDict_New();
            if (d == NULL) {
                Py_DECREF(buckets);
                goto done;
            }
            PyTuple_SET_ITEM(buckets, j, d);
            for (Py_ssize_t b = 0; b < per_scale; b++) {
                long long c = s->buckets[j * per_scale + b];
                if (c) {
                    PyObject *bk = PyLong_FromSsize_t(b), *bc = PyLong_FromLongLong(c);
                    int rc = (bk && bc) ? PyDict_SetItem(d, bk, bc) : -1;
                    Py_XDECREF(bk);
                    Py_XDECREF(bc);
                    if (rc < 0) {
                        Py_DECREF(buckets);
                        goto done;
                    }
                }
            }
        }
        PyObject *total = p->linear ? int128_long(s->lsum) : slot_total(s);
        if (total == NULL) {
            Py_DECREF(buckets);
            goto done;
        }
        PyObject *row = Py_BuildValue("(OLNNLL)", by_index[i] ? by_index[i] : Py_None,
                                      s->count, buckets, total, s->max, s->skipped);
        if (row == NULL) {
            goto done;
        }
        PyList_SET_ITEM(list, i, row);
    }
    if (!p->has_stats) {
        stats = Py_NewRef(Py_None);
    }
    else if ((stats = pstats_tuple(&st)) == NULL) {
        goto done;
    }
    result = PyObject_CallFunction(p->make_results, "OLLO", list, filtered, overflow, stats);
done:
    Py_XDECREF(stats);
    pstats_clear(&st);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyMem_Free(slots[i].buckets);
    }
    PyMem_Free(slots);
    PyMem_Free(by_index);
    Py_XDECREF(list);
    Py_DECREF(keys);
    return result;
}

static PyObject *
prog_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyErr_SetString(PyExc_TypeError,
                    "a C program runs only as a kprobe's pre_handler or a kretprobe's handler");
    return NULL;
}

static PyMethodDef prog_methods[] = {
    {"take", (PyCFunction)prog_take, METH_NOARGS,
     "What was gathered so far (program.Results); the store starts over."},
    {NULL},
};

static PyMemberDef prog_members[] = {
    {"program", Py_T_OBJECT_EX, offsetof(ProgObj, program), Py_READONLY, "The Program run."},
    {NULL},
};

static PyTypeObject ProgType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.Program",
    .tp_basicsize = sizeof(ProgObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Program(lowered, program, key_of, make_results): a probe program run in C.",
    .tp_new = prog_new,
    .tp_dealloc = (destructor)prog_dealloc,
    .tp_traverse = (traverseproc)prog_traverse,
    .tp_clear = (inquiry)prog_tp_clear,
    .tp_call = prog_call,
    .tp_methods = prog_methods,
    .tp_members = prog_members,
};

/* Module init's part: 0 or -1. */
static int
prog_module_init(PyObject *m)
{
    g_threading = PyImport_ImportModule("threading");
    s_active = PyUnicode_InternFromString("_active");
    s_name_attr = PyUnicode_InternFromString("_name");
    s_thread_key = PyUnicode_InternFromString("pyprobes.thread");
    g_fault_key = PyUnicode_InternFromString("(fault)");
    g_nan = PyFloat_FromDouble(Py_NAN);
    s_dunder_name = PyUnicode_InternFromString("__name__");
    s_dunder_dict = PyUnicode_InternFromString("__dict__");
    if (g_threading == NULL || s_active == NULL || s_name_attr == NULL || s_thread_key == NULL ||
        g_fault_key == NULL || g_nan == NULL || s_dunder_name == NULL || s_dunder_dict == NULL ||
        PyType_Ready(&ProgType) < 0 || PyType_Ready(&RingType) < 0) {
        return -1;
    }
    if (PyModule_AddObjectRef(m, "Ring", (PyObject *)&RingType) < 0) {
        return -1;
    }
    return PyModule_AddObjectRef(m, "Program", (PyObject *)&ProgType);
}

/* pyprobes._speedups: the C dispatch core (the hot path of pyprobes.engine.ccore).
 *
 * The reference is pyprobes/engine/pycore.py: every callback here does what its namesake there
 * does, in the same order, with the same counters and the same fault path. Everything cold
 * (building the tables, set_local_events, the gc and fork hooks, the fault report) stays in
 * Python; ccore.py hands this module the Python helpers it calls back into.
 *
 * Threads and the GIL: every function here runs with the GIL held, and none releases it by
 * itself. The GIL is only given up where Python code can run: a handler call, a call back into
 * a Python helper, or a Py_DECREF that may run a destructor. So no lock is needed, but every
 * data structure must be consistent before any of those points, and nothing read before one
 * may be trusted after it unless it is held by a strong reference: a site is held (incref'd)
 * for the whole dispatch, a return-probe state too, and no pointer into a table survives a
 * call. Recursion: CPython suppresses monitoring events while any monitoring callback runs,
 * so none of these callbacks is ever re-entered on one thread.
 *
 * Exceptions: a callback never lets one out into the probed program, except KeyboardInterrupt
 * (pycore's rule). Handler exceptions go to the fault path (shared.fault); an internal failure
 * (out of memory) is reported with PyErr_WriteUnraisable and the callback returns None.
 *
 * C API: public and "unstable public" API of 3.12-3.14 only, except one guarded access (see
 * FRAME TOKEN below).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030C0000
#error "pyprobes._speedups needs CPython 3.12 or newer (sys.monitoring)"
#endif

/* --- FRAME TOKEN ---------------------------------------------------------------------------
 * ctx.frame is read lazily: materialising a frame object costs an allocation, and most
 * handlers never look at it. At the hit we record which interpreter frame is executing (the
 * probed one: a C callback pushes no frame of its own); when a handler first reads ctx.frame
 * we walk the frame objects from the current one (the handler's) back to the one whose
 * interpreter frame is that token. The current interpreter frame lives in PyThreadState
 * (cpython/pystate.h, a public header: tstate->cframe->current_frame on 3.12,
 * tstate->current_frame on 3.13 to 3.15), and a frame object's interpreter frame is its
 * second field after f_back (internal pycore_frame.h, the same on 3.11 to 3.15). Both are
 * version-guarded: on any other version the frame is fetched eagerly at the hit instead. */
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x03100000
#define HAVE_FRAME_TOKEN 1
typedef struct {
    PyObject_HEAD
    PyObject *f_back;
    void *f_frame;
} FramePrefix;
#if PY_VERSION_HEX < 0x030D0000
#define CURRENT_TSTATE() _PyThreadState_UncheckedGet()
#define TOKEN_OF(ts) ((void *)(ts)->cframe->current_frame)
#else
#define CURRENT_TSTATE() PyThreadState_GetUnchecked()
#define TOKEN_OF(ts) ((void *)(ts)->current_frame)
#endif
#define CURRENT_TOKEN() TOKEN_OF(CURRENT_TSTATE())
#else
#define HAVE_FRAME_TOKEN 0
#define CURRENT_TOKEN() ((void *)NULL)
#endif

/* --- CALLER OF A TOKEN ----------------------------------------------------------------------
 * An event record of a return names its caller (code, instruction, module), which
 * PyFrame_GetBack would give at the cost of two frame objects per hit (the probed frame's,
 * made and freed, and the caller's). The interpreter frames hold it: the token's `previous`,
 * skipping the frames PyFrame_GetBack skips (owned by the C stack, or on 3.14+ by the
 * interpreter: the owners from 3 up on 3.12 to 3.15). The layout below is the head of
 * _PyInterpreterFrame (internal pycore_frame.h on 3.12 and 3.13, pycore_interpframe_structs.h
 * on 3.14 and 3.15, with the GIL; on 3.14+ the executable is a _PyStackRef whose low two bits
 * are tags). The instruction comes from the public PyUnstable_InterpreterFrame_GetLasti. Other
 * versions and builds use the frame objects. */
#if HAVE_FRAME_TOKEN && !defined(Py_GIL_DISABLED) && !defined(Py_STACKREF_DEBUG)
#define HAVE_IFRAME 1
typedef struct IFrame {
    uintptr_t executable;
    struct IFrame *previous;
    uintptr_t funcobj;
    PyObject *globals; /* borrowed */
    PyObject *builtins;
    PyObject *locals;
    PyFrameObject *frame_obj;
    void *instr_ptr;
#if PY_VERSION_HEX >= 0x030E0000
    void *stackpointer;
    uint16_t return_offset;
    char owner;
    uint8_t visited;
#else
    int stacktop;
    uint16_t return_offset;
    char owner;
#endif
    uintptr_t localsplus[1]; /* PyObject * (3.12, 3.13), _PyStackRef (3.14+) */
} IFrame;
/* (offsets read from the real headers of 3.12.1, 3.13.0, 3.14.10 and 3.15.2) */
#if PY_VERSION_HEX >= 0x030E0000
#define IFRAME_EXECUTABLE(f) ((PyObject *)((f)->executable & ~(uintptr_t)3))
_Static_assert(offsetof(IFrame, owner) == 74 && offsetof(IFrame, localsplus) == 80, "IFrame");
#else
#define IFRAME_EXECUTABLE(f) ((PyObject *)(f)->executable)
_Static_assert(offsetof(IFrame, owner) == 70 && offsetof(IFrame, localsplus) == 72, "IFrame");
#endif

/* The Python frame the interpreter frame `token` returns to, or NULL. */
static IFrame *
iframe_caller(void *token)
{
    IFrame *f = ((IFrame *)token)->previous;
    while (f != NULL && (f->owner >= 3 || !PyCode_Check(IFRAME_EXECUTABLE(f)))) {
        f = f->previous;
    }
    return f;
}
#else
#define HAVE_IFRAME 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define HOT static inline __attribute__((always_inline))
#define COLD static __attribute__((noinline, cold))
#else
#define HOT static inline
#define COLD static
#endif

/* CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR */
#define GEN_FLAGS (0x20 | 0x80 | 0x100 | 0x200)
#define RECLAIM_INTERVAL_NS 1000000LL

enum { KIND_K = 1, KIND_J = 2, KIND_R = 3 };

/* --- configuration handed over by ccore.setup() ------------------------------------------- */

static int configured = 0;
static PyObject *g_DISABLE;        /* sys.monitoring.DISABLE */
static PyObject *g_fault;          /* shared.fault(probe, ctx, exc) */
static PyObject *g_line_of;        /* context._line_of(code, offset) -> int | None */
static PyObject *g_pending_insn;   /* shared.pending_insn: id(frame) -> (frame, posts, ctx) */
static PyObject *g_pending_line;   /* shared.pending_line */
static PyObject *g_disabled_codes; /* ccore's shared.CoreTables.disabled_codes: codes DISABLEd */
static int g_close_emits_nothing;  /* gh-140373 (3.13.0 - 3.14.0) */
static PyTypeObject *CtxType;      /* subclass of context.ProbeContext */
static PyTypeObject *RiType;       /* subclass of context.KretprobeInstance */
static Py_ssize_t ctx_off, ri_off; /* where our fields start (after the Python base's slots) */
static Py_ssize_t ctx_base_nslots, ri_base_nslots;

/* interned attribute names */
static PyObject *s_pre_handler, *s_post_handler, *s_entry, *s_handler, *s_entry_handler;
static PyObject *s_kind, *s_rstate, *s_counters, *s_f_lasti, *s_f_lineno, *s_clear;
static PyObject *s_co_qualname, *s_fault_handler;
static PyObject *g_zero; /* the int 0, the flags of a post handler */

/* PyLong_AsLong, inline for the small ints the monitoring callbacks get (offsets, lines). */
HOT long
as_long(PyObject *v)
{
    if (PyLong_CheckExact(v) && PyUnstable_Long_IsCompact((PyLongObject *)v)) {
        return (long)PyUnstable_Long_CompactValue((PyLongObject *)v);
    }
    return PyLong_AsLong(v);
}

static inline long long
now_ns(void)
{
    /* time.perf_counter_ns(): CLOCK_MONOTONIC on Linux (CPython's own choice there). */
#if defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#else
#error "no CLOCK_MONOTONIC"
#endif
}

/* --- ENTRY CLOCK ---------------------------------------------------------------------------
 * Every kretprobe entry stamps its instance (ri.entry_time_ns, in time.perf_counter_ns()'s
 * clock). clock_gettime(CLOCK_MONOTONIC) costs 12-25 ns a call on the machines we measure, a
 * sixth of a kretprobe hit. Where the kernel itself keeps CLOCK_MONOTONIC on the TSC (its
 * clocksource is "tsc" and the CPU says constant_tsc and nonstop_tsc: the TSC ticks at one
 * rate, in sync on every CPU; ccore decides, PYPROBES_ENTRY_CLOCK=monotonic vetoes), the
 * entry reads the TSC instead (~6 ns) and ri.entry_time_ns converts the ticks when first read:
 *   ns = anchor_ns + (ticks - anchor_ticks) * rate
 * rate = ns per tick between the first (ticks, ns) pair, taken at enabling, and the anchor,
 * a pair retaken when older than ~1 ms. A pair is the tightest of a few (rdtsc, clock_gettime,
 * rdtsc) reads, so its skew is a few ns; the error of a conversion stays within a few skews
 * (the rate's error shrinks as fast as the distances it multiplies grow). Everything here
 * runs with the GIL held. */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_TSC 1
#define read_tsc() ((unsigned long long)__builtin_ia32_rdtsc())
#else
#define HAVE_TSC 0
#define read_tsc() 0ULL
#endif

static struct {
    int on;
    unsigned long long t0, ta; /* ticks of the first pair and of the anchor */
    long long n0, na;          /* their CLOCK_MONOTONIC ns */
    double rate;               /* ns per tick */
    unsigned long long refresh_ticks;
} tsc;

static inline long long now_ns(void);

static void
tsc_pair(unsigned long long *t, long long *n)
{
    unsigned long long best = ~0ULL;
    for (int i = 0; i < 5; i++) {
        unsigned long long a = read_tsc();
        long long m = now_ns();
        unsigned long long b = read_tsc();
        if (b >= a && b - a < best) {
            best = b - a;
            *t = a + (b - a) / 2;
            *n = m;
        }
    }
}

static void
tsc_anchor(void)
{
    unsigned long long t = 0;
    long long n = 0;
    tsc_pair(&t, &n);
    if (t > tsc.t0 && n > tsc.n0) {
        tsc.ta = t;
        tsc.na = n;
        tsc.rate = (double)(n - tsc.n0) / (double)(t - tsc.t0);
        tsc.refresh_ticks = (unsigned long long)(1e6 / tsc.rate); /* ~1 ms */
    }
}

/* Turn the TSC entry clock on (if this build and machine allow it; returns whether it is on)
 * or off. Turning it on measures a first rate over ~50 us. */
static int
tsc_enable(int on)
{
    if (!on || !HAVE_TSC) {
        tsc.on = 0;
        return 0;
    }
    if (!tsc.on) {
        tsc_pair(&tsc.t0, &tsc.n0);
        long long until = tsc.n0 + 50000;
        while (now_ns() < until) {
        }
        tsc.rate = 0.0;
        tsc_anchor();
        if (tsc.rate <= 0.0) {
            return 0; /* the TSC did not move forward: keep the system clock */
        }
        tsc.on = 1;
    }
    return 1;
}

/* CLOCK_MONOTONIC ns of a TSC reading taken since tsc_enable(). */
static long long
tsc_to_ns(unsigned long long ticks)
{
    if (read_tsc() - tsc.ta > tsc.refresh_ticks) {
        tsc_anchor();
    }
    double d = (double)(long long)(ticks - tsc.ta) * tsc.rate;
    return tsc.na + (long long)d;
}

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
    PyObject *c = PyObject_GetAttr(probe, s_counters);
    if (c != NULL && !Py_IS_TYPE(c, &CountersType)) {
        PyErr_Format(PyExc_TypeError, "%R was not registered with the C core (its counters "
                     "are a %.100s)", probe, Py_TYPE(c)->tp_name);
        Py_CLEAR(c);
    }
    return (Counters *)c;
}

/* --- a pointer-keyed hash map (open addressing, linear probing, backward-shift delete) ----- */

typedef struct {
    void *key;
    PyObject *value; /* strong reference */
} Slot;

typedef struct {
    Slot *slots;
    Py_ssize_t mask; /* capacity - 1; capacity is a power of two, or 0 */
    Py_ssize_t used;
} PtrMap;

static inline Py_ssize_t
ptr_hash(void *p, Py_ssize_t mask)
{
    uint64_t h = (uint64_t)(uintptr_t)p;
    h = (h >> 4) * 0x9E3779B97F4A7C15ULL;
    return (Py_ssize_t)(h >> 32) & mask;
}

HOT PyObject *
map_get(PtrMap *m, void *key)
{
    if (m->used == 0) {
        return NULL;
    }
    Py_ssize_t i = ptr_hash(key, m->mask);
    for (;;) {
        Slot *s = &m->slots[i];
        if (s->key == key) {
            return s->value;
        }
        if (s->key == NULL) {
            return NULL;
        }
        i = (i + 1) & m->mask;
    }
}

static int
map_resize(PtrMap *m, Py_ssize_t cap)
{
    Slot *slots = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Slot *old = m->slots;
    Py_ssize_t oldcap = old ? m->mask + 1 : 0;
    m->slots = slots;
    m->mask = cap - 1;
    for (Py_ssize_t j = 0; j < oldcap; j++) {
        if (old[j].key != NULL) {
            Py_ssize_t i = ptr_hash(old[j].key, m->mask);
            while (slots[i].key != NULL) {
                i = (i + 1) & m->mask;
            }
            slots[i] = old[j];
        }
    }
    PyMem_Free(old);
    return 0;
}

/* Store value (a new reference is taken) at key; *replaced receives the old value, to be
 * released by the caller once its own structures are consistent. */
static int
map_set(PtrMap *m, void *key, PyObject *value, PyObject **replaced)
{
    *replaced = NULL;
    if (m->slots == NULL || (m->used + 1) * 2 > m->mask + 1) {
        Py_ssize_t cap = m->slots ? (m->mask + 1) * 2 : 8;
        if (map_resize(m, cap) < 0) {
            return -1;
        }
    }
    Py_ssize_t i = ptr_hash(key, m->mask);
    for (;;) {
        Slot *s = &m->slots[i];
        if (s->key == key) {
            *replaced = s->value;
            s->value = Py_NewRef(value);
            return 0;
        }
        if (s->key == NULL) {
            s->key = key;
            s->value = Py_NewRef(value);
            m->used++;
            return 0;
        }
        i = (i + 1) & m->mask;
    }
}

/* Remove key; return its value (the map's reference, now the caller's) or NULL. */
static PyObject *
map_pop(PtrMap *m, void *key)
{
    if (m->used == 0) {
        return NULL;
    }
    Py_ssize_t i = ptr_hash(key, m->mask);
    for (;;) {
        Slot *s = &m->slots[i];
        if (s->key == NULL) {
            return NULL;
        }
        if (s->key == key) {
            break;
        }
        i = (i + 1) & m->mask;
    }
    PyObject *value = m->slots[i].value;
    m->used--;
    /* backward-shift deletion: keep every probe sequence unbroken */
    Py_ssize_t j = i;
    for (;;) {
        m->slots[i].key = NULL;
        m->slots[i].value = NULL;
        for (;;) {
            j = (j + 1) & m->mask;
            if (m->slots[j].key == NULL) {
                return value;
            }
            Py_ssize_t k = ptr_hash(m->slots[j].key, m->mask);
            /* can slot j move to i? only if its home k is not cyclically in (i, j] */
            if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
                break;
            }
        }
        m->slots[i] = m->slots[j];
        i = j;
    }
}

/* Remove everything; the values are returned in a new list (NULL on memory error, with the
 * map left untouched). */
static PyObject *
map_take_all(PtrMap *m)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t cap = m->slots ? m->mask + 1 : 0;
    for (Py_ssize_t j = 0; j < cap; j++) {
        if (m->slots[j].key != NULL && PyList_Append(out, m->slots[j].value) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    for (Py_ssize_t j = 0; j < cap; j++) {
        if (m->slots[j].key != NULL) {
            PyObject *v = m->slots[j].value;
            m->slots[j].key = NULL;
            m->slots[j].value = NULL;
            Py_DECREF(v); /* the list holds it: no destructor can run here */
        }
    }
    m->used = 0;
    return out;
}

static void
map_free(PtrMap *m)
{
    PyObject *all = NULL;
    if (m->used) {
        all = map_take_all(m);
    }
    PyMem_Free(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->used = 0;
    Py_XDECREF(all);
}

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
            PyObject *v = PyObject_GetAttr(f, s_f_lasti);
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
            line = PyObject_GetAttr(f, s_f_lineno);
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
            line = PyObject_CallFunctionObjArgs(g_line_of, code, offo, NULL);
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
    PyObject *q = PyObject_GetAttr(c->code ? c->code : Py_None, s_co_qualname);
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
    if (g_close_emits_nothing && PyFrame_Check(frame)) {
        PyCodeObject *co = PyFrame_GetCode((PyFrameObject *)frame);
        int flags = co->co_flags;
        Py_DECREF(co);
        if (flags & GEN_FLAGS) {
            Py_INCREF(frame);
            PyObject *r = PyObject_CallMethodNoArgs(frame, s_clear);
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
    if (!configured) {
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

/* --- Site: the dispatch table of one code object ------------------------------------------ */

/* The handler attributes a hit reads (pycore reads them at every hit). */
enum { H_PRE, H_POST, H_ENTRY, H_HANDLER, H_ENTRY_HANDLER, H_COUNT };
static PyObject **h_names[H_COUNT] = {&s_pre_handler, &s_post_handler, &s_entry, &s_handler,
                                      &s_entry_handler};

/* Handler cache: a probe's handlers are read from its __dict__ once and kept until that dict
 * changes, so a cached value is exactly what reading the attribute at the hit would give. Two
 * things bump g_dict_gen: a dict watcher (PyDict_AddWatcher) on every probe dict, for changes
 * through the dict API, and Probe.__setattr__/__delattr__ (through Counters.handlers_changed),
 * for attribute stores, which 3.13 makes into an object's inline values without telling the
 * watchers of its materialised __dict__ (seen on 3.13.0). Without a watcher slot (setup()),
 * or for a class that defines a handler attribute, each hit reads the attribute instead. */
static int g_watcher = -1;

static int
probe_dict_changed(PyDict_WatchEvent event, PyObject *dict, PyObject *key, PyObject *value)
{
    g_dict_gen++;
    return 0;
}

typedef struct {
    PyObject *probe;    /* strong */
    PyObject *pdict;    /* strong: probe.__dict__, where its handlers are read */
    Counters *ctr;      /* strong */
    RetState *rs;       /* strong or NULL (kretprobes: the state armed with this site) */
    int kind;
    int generic;        /* the probe's class defines a handler name: always getattr */
    int fast;           /* handlers come from cache[] (watched plain __dict__, not generic) */
    uint64_t gen;       /* g_dict_gen when cache[] was filled (0: never) */
    PyObject *cache[H_COUNT]; /* strong or NULL (absent from the dict) */
} PEnt;

typedef struct {
    long key; /* offset or line */
    Py_ssize_t n;
    PEnt *items;
} PGroup;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n_entry, n_offs, n_lines, n_rets;
    PEnt *entry;
    PGroup *offs;
    PGroup *lines;
    PEnt *rets;
    int post_insn, post_line, watches_exit;
    int gen_code; /* a generator or coroutine: activations are keyed by frame object */
} Site;

static void
pent_clear(PEnt *e)
{
    for (int i = 0; i < H_COUNT; i++) {
        Py_CLEAR(e->cache[i]);
    }
    Py_CLEAR(e->probe);
    Py_CLEAR(e->pdict);
    Py_CLEAR(e->ctr);
    Py_CLEAR(e->rs);
}

static void
site_dealloc(Site *s)
{
    for (Py_ssize_t i = 0; i < s->n_entry; i++) {
        pent_clear(&s->entry[i]);
    }
    for (Py_ssize_t i = 0; i < s->n_rets; i++) {
        pent_clear(&s->rets[i]);
    }
    PGroup *groups[2] = {s->offs, s->lines};
    Py_ssize_t ns[2] = {s->n_offs, s->n_lines};
    for (int g = 0; g < 2; g++) {
        for (Py_ssize_t i = 0; i < ns[g]; i++) {
            for (Py_ssize_t j = 0; j < groups[g][i].n; j++) {
                pent_clear(&groups[g][i].items[j]);
            }
            PyMem_Free(groups[g][i].items);
        }
        PyMem_Free(groups[g]);
    }
    PyMem_Free(s->entry);
    PyMem_Free(s->rets);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyTypeObject SiteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pyprobes._speedups.Site",
    .tp_basicsize = sizeof(Site),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The dispatch table of one probed code object (built by make_site).",
    .tp_dealloc = (destructor)site_dealloc,
};

static int
pent_init(PEnt *e, PyObject *probe)
{
    PyObject ***names = h_names;
    e->probe = Py_NewRef(probe);
    e->pdict = PyObject_GenericGetDict(probe, NULL);
    if (e->pdict == NULL) {
        return -1;
    }
    if (g_watcher >= 0 && PyDict_CheckExact(e->pdict) && PyDict_Watch(g_watcher, e->pdict) < 0) {
        return -1;
    }
    e->ctr = counters_of(probe);
    if (e->ctr == NULL) {
        return -1;
    }
    PyObject *kind = PyObject_GetAttr(probe, s_kind);
    if (kind == NULL) {
        return -1;
    }
    if (PyUnicode_CompareWithASCIIString(kind, "k") == 0) {
        e->kind = KIND_K;
    }
    else if (PyUnicode_CompareWithASCIIString(kind, "r") == 0) {
        e->kind = KIND_R;
    }
    else {
        e->kind = KIND_J; /* pycore: anything else is called as a jprobe */
    }
    Py_DECREF(kind);
    if (e->kind == KIND_R) {
        PyObject *rs = PyObject_GetAttr(probe, s_rstate);
        if (rs == NULL) {
            return -1;
        }
        if (Py_IS_TYPE(rs, &RetStateType)) {
            e->rs = (RetState *)rs;
        }
        else {
            Py_DECREF(rs); /* None: pycore's "state is None" */
        }
    }
    e->generic = 0;
    for (size_t i = 0; i < H_COUNT; i++) {
        PyObject *cls_attr = PyObject_GetAttr((PyObject *)Py_TYPE(probe), *names[i]);
        if (cls_attr == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
                return -1;
            }
            PyErr_Clear();
        }
        int has = cls_attr != NULL;
        Py_XDECREF(cls_attr);
        e->generic |= has;
    }
    e->fast = !e->generic && g_watcher >= 0 && PyDict_CheckExact(e->pdict);
    return 0;
}

static int
pents_from(PyObject *seq, PEnt **out, Py_ssize_t *n)
{
    PyObject *fast = PySequence_Fast(seq, "probes must be a sequence");
    if (fast == NULL) {
        return -1;
    }
    Py_ssize_t len = PySequence_Fast_GET_SIZE(fast);
    *out = PyMem_Calloc(len ? (size_t)len : 1, sizeof(PEnt));
    if (*out == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    *n = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        (*n)++;
        if (pent_init(&(*out)[i], PySequence_Fast_GET_ITEM(fast, i)) < 0) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static int
pgroup_cmp(const void *a, const void *b)
{
    long x = ((const PGroup *)a)->key, y = ((const PGroup *)b)->key;
    return (x > y) - (x < y);
}

static int
groups_from(PyObject *dict, PGroup **out, Py_ssize_t *n)
{
    if (!PyDict_Check(dict)) {
        PyErr_SetString(PyExc_TypeError, "offsets and lines must be dicts");
        return -1;
    }
    Py_ssize_t len = PyDict_GET_SIZE(dict);
    *out = PyMem_Calloc(len ? (size_t)len : 1, sizeof(PGroup));
    if (*out == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *n = 0;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(dict, &pos, &k, &v)) {
        PGroup *g = &(*out)[*n];
        (*n)++;
        g->key = PyLong_AsLong(k);
        if (g->key == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (pents_from(v, &g->items, &g->n) < 0) {
            return -1;
        }
    }
    qsort(*out, (size_t)*n, sizeof(PGroup), pgroup_cmp);
    return 0;
}

static PGroup *
find_group(PGroup *gs, Py_ssize_t n, long key)
{
    Py_ssize_t lo = 0, hi = n;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (gs[mid].key < key) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return (lo < n && gs[lo].key == key) ? &gs[lo] : NULL;
}

static PyObject *
make_site(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"entry",     "offsets",   "lines",        "returns",
                             "post_insn", "post_line", "watches_exit", NULL};
    PyObject *entry, *offsets, *lines, *returns;
    int post_insn, post_line, watches_exit;
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "pyprobes._speedups.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOppp:make_site", kwlist, &entry, &offsets,
                                     &lines, &returns, &post_insn, &post_line, &watches_exit)) {
        return NULL;
    }
    Site *s = PyObject_New(Site, &SiteType);
    if (s == NULL) {
        return NULL;
    }
    s->n_entry = s->n_offs = s->n_lines = s->n_rets = 0;
    s->entry = s->rets = NULL;
    s->offs = s->lines = NULL;
    s->post_insn = post_insn;
    s->post_line = post_line;
    s->watches_exit = watches_exit;
    s->gen_code = 1; /* until set_site() sees the code object */
    if (pents_from(entry, &s->entry, &s->n_entry) < 0 ||
        groups_from(offsets, &s->offs, &s->n_offs) < 0 ||
        groups_from(lines, &s->lines, &s->n_lines) < 0 ||
        pents_from(returns, &s->rets, &s->n_rets) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return (PyObject *)s;
}

/* The table: code object pointer -> Site (strong). Keyed like pycore's _sites (by id(code)):
 * the code object itself is not referenced. */
static PtrMap sites;

HOT Site *
site_of(PyObject *code)
{
    return (Site *)map_get(&sites, code);
}

static PyObject *
set_site(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_site(code, site) takes 2 arguments");
        return NULL;
    }
    PyObject *old = NULL;
    if (args[1] == Py_None) {
        old = map_pop(&sites, args[0]);
    }
    else {
        if (!Py_IS_TYPE(args[1], &SiteType)) {
            PyErr_SetString(PyExc_TypeError, "site must come from make_site()");
            return NULL;
        }
        if (!PyCode_Check(args[0])) {
            PyErr_SetString(PyExc_TypeError, "set_site() needs a code object");
            return NULL;
        }
        ((Site *)args[1])->gen_code =
            !HAVE_FRAME_TOKEN || (((PyCodeObject *)args[0])->co_flags & GEN_FLAGS) != 0;
        if (map_set(&sites, args[0], args[1], &old) < 0) {
            return NULL;
        }
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *
forget_site(PyObject *mod, PyObject *cid)
{
    void *key = PyLong_AsVoidPtr(cid);
    if (key == NULL && PyErr_Occurred()) {
        return NULL;
    }
    Py_XDECREF(map_pop(&sites, key));
    Py_RETURN_NONE;
}

static PyObject *
clear_sites(PyObject *mod, PyObject *unused)
{
    PyObject *all = map_take_all(&sites);
    if (all == NULL) {
        return NULL;
    }
    Py_DECREF(all);
    Py_CLEAR(ctx_spare);
    Py_RETURN_NONE;
}

static PyObject *
nsites(PyObject *mod, PyObject *unused)
{
    return PyLong_FromSsize_t(sites.used);
}

#include "_program.c"

/* --- handler calls ------------------------------------------------------------------------ */

COLD void
pent_refresh(PEnt *e)
{
    PyObject *fresh[H_COUNT];
    e->gen = g_dict_gen;
    for (int i = 0; i < H_COUNT; i++) {
        fresh[i] = PyDict_GetItemWithError(e->pdict, *h_names[i]); /* interned: no Python code */
        if (fresh[i] == NULL) {
            PyErr_Clear(); /* absent: read with getattr at each hit */
        }
        Py_XINCREF(fresh[i]);
    }
    for (int i = 0; i < H_COUNT; i++) {
        Py_XSETREF(e->cache[i], fresh[i]); /* may run a destructor: the cache is whole */
    }
}

/* A handler attribute of a probe, as reading it at the hit (pycore) gives (new reference). */
HOT PyObject *
probe_attr(PEnt *e, int which)
{
    if (e->fast) {
        if (e->gen != g_dict_gen) {
            pent_refresh(e);
        }
        PyObject *v = e->cache[which];
        if (v != NULL) {
            return Py_NewRef(v);
        }
    }
    else if (!e->generic) {
        PyObject *v = PyDict_GetItemWithError(e->pdict, *h_names[which]);
        if (v != NULL) {
            return Py_NewRef(v);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(e->probe, *h_names[which]);
}

/* shared.fault, called with the exception as the one being handled (as in pycore's except
 * block, so that sys.exc_info() in a fault handler is the handler's exception). 0 or -1. */
static int
call_fault(PyObject *probe, PyObject *ctx, PyObject *exc)
{
    PyObject *old = PyErr_GetHandledException();
    PyErr_SetHandledException(exc);
    PyObject *args[3] = {probe, ctx, exc};
    PyObject *r = PyObject_Vectorcall(g_fault, args, 3, NULL);
    PyErr_SetHandledException(old);
    Py_XDECREF(old);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* After a failed handler call: KeyboardInterrupt stays raised (-1), anything else goes to the
 * fault path (0, or -1 if that raised). */
COLD int
handler_failed(PyObject *probe, PyObject *ctx)
{
    PyObject *exc = PyErr_GetRaisedException();
    if (exc == NULL) {
        return 0;
    }
    if (PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)) {
        PyErr_SetRaisedException(exc);
        return -1;
    }
    Py_INCREF(probe);
    int r = call_fault(probe, ctx, exc);
    Py_DECREF(probe);
    Py_DECREF(exc);
    return r;
}

/* h(a, b). A Python function (the usual handler) is called through its own vectorcall entry,
 * as PyObject_Vectorcall would, minus that function's thread-state lookup and its check of
 * the result (a Python function's result is always consistent with the error indicator). */
HOT PyObject *
call2(PyObject *h, PyObject *a, PyObject *b)
{
    PyObject *buf[3] = {NULL, a, b};
    if (PyFunction_Check(h)) {
        vectorcallfunc f = ((PyFunctionObject *)h)->vectorcall;
        if (f != NULL) {
            return f(h, buf + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        }
    }
    return PyObject_Vectorcall(h, buf + 1, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* pycore._kprobe_pre */
HOT int
kprobe_pre(PEnt *e, PyObject *ctx)
{
    e->ctr->v[0]++;
    PyObject *h = probe_attr(e, H_PRE);
    if (h == NULL) {
        return handler_failed(e->probe, ctx);
    }
    if (Py_IS_TYPE(h, &ProgType)) {
        CtxData *c = CTX(ctx);
        PEnv env = {ctx, 0, 0, Py_None, Py_None, c->code, c->offset, c->lineno, NULL};
        int rc = prog_run((ProgObj *)h, &env);
        Py_DECREF(h);
        return rc < 0 ? handler_failed(e->probe, ctx) : 0;
    }
    if (h != Py_None) {
        PyObject *r = call2(h, e->probe, ctx);
        Py_DECREF(h);
        if (r == NULL) {
            return handler_failed(e->probe, ctx);
        }
        Py_DECREF(r);
        return 0;
    }
    Py_DECREF(h);
    return 0;
}

/* 1 if the kprobe has a post handler now, 0 if not, -1 on a KeyboardInterrupt. */
HOT int
has_post(PEnt *e, PyObject *ctx)
{
    PyObject *h = probe_attr(e, H_POST);
    if (h == NULL) {
        return handler_failed(e->probe, ctx);
    }
    int r = h != Py_None;
    Py_DECREF(h);
    return r;
}

/* pycore._jprobe */
static int
jprobe(PEnt *e, PyObject *ctx)
{
    e->ctr->v[0]++;
    PyObject *args = ctx_get_args(ctx, NULL);
    if (args == NULL) {
        return handler_failed(e->probe, ctx);
    }
    PyObject *pos = NULL, *kw = NULL, *entry = NULL, *r = NULL;
    PyObject *code = CTX(ctx)->code;
    int rc = -1;
    if (code != NULL && PyCode_Check(code)) {
        Py_INCREF(code);
        rc = c_call_args((PyCodeObject *)code, args, &pos, &kw);
        Py_DECREF(code);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "a jprobe hit without a code object");
    }
    Py_DECREF(args);
    if (rc < 0) {
        return handler_failed(e->probe, ctx);
    }
    entry = probe_attr(e, H_ENTRY);
    if (entry == NULL) {
        goto fail;
    }
    r = PyObject_Call(entry, pos, PyDict_GET_SIZE(kw) ? kw : NULL);
    if (r == NULL) {
        goto fail;
    }
    Py_DECREF(r);
    Py_DECREF(entry);
    Py_DECREF(kw);
    Py_DECREF(pos);
    return 0;
fail:
    Py_XDECREF(entry);
    Py_XDECREF(kw);
    Py_XDECREF(pos);
    return handler_failed(e->probe, ctx);
}

/* The entry handler of a kretprobe: 1 if the activation is vetoed (truthy result, or the
 * entry failed: pycore's "an entry that failed leaves no activation to pair"), 0 if it is to
 * be tracked, -1 for a KeyboardInterrupt (or a fault path that raised). */
static int
entry_veto(PEnt *e, PyObject *ri, Hit *hit)
{
    PyObject *eh = probe_attr(e, H_ENTRY_HANDLER);
    if (eh == Py_None) {
        Py_DECREF(eh);
        return 0;
    }
    if (eh == NULL) {
        PyObject *exc = PyErr_GetRaisedException(); /* (no allocation with an error set) */
        PyObject *ctx = hit_ctx(hit);
        if (ctx == NULL) {
            Py_XDECREF(exc);
            return -1;
        }
        PyErr_SetRaisedException(exc);
        return handler_failed(e->probe, ctx) < 0 ? -1 : 1;
    }
    PyObject *ctx = hit_ctx(hit);
    if (ctx == NULL) {
        Py_DECREF(eh);
        return -1;
    }
    PyObject *veto = call2(eh, ri, ctx);
    Py_DECREF(eh);
    if (veto == NULL) {
        return handler_failed(e->probe, ctx) < 0 ? -1 : 1;
    }
    int truth = PyObject_IsTrue(veto);
    Py_DECREF(veto);
    if (truth < 0) {
        /* a truth test that raises is a fault, as in pycore (its bool() is in the guard) */
        return handler_failed(e->probe, ctx) < 0 ? -1 : 1;
    }
    return truth;
}

/* pycore._kret_entry */
static int
kret_entry(PEnt *e, Hit *hit, int gen_code)
{
    RetState *s = e->rs;
    if (s == NULL || s->dead) {
        return 0;
    }
    Py_INCREF(s);
    int rc = 0;
    if (!gen_code && act_used(s)) {
        /* An activation still filed under this interpreter frame is over (this one, starting
         * there, is not filed yet): its end went unseen. Back to the pool. */
        PyObject *stale = act_pop(s, hit->token);
        if (stale != NULL) {
            rs_recycle(s, stale);
        }
    }
    if (s->nfree == 0 && s->nalloc < s->maxactive && rs_grow(s) < 0) {
        PyErr_Clear(); /* no memory for one more: this call is a miss, the program goes on */
    }
    if (s->nfree == 0) {
        long long now = now_ns();
        if (now - s->last_reclaim < RECLAIM_INTERVAL_NS) {
            e->ctr->v[1]++;
            goto done;
        }
        Py_ssize_t freed = rs_reclaim(s);
        if (freed < 0) {
            rc = -1;
            goto done;
        }
        if (freed == 0) {
            s->last_reclaim = now; /* throttle only scans that found nothing to free */
        }
        if (s->nfree == 0) {
            e->ctr->v[1]++;
            goto done;
        }
    }
    PyObject *ri = s->free[--s->nfree]; /* the pool's reference is now ours */
    /* The activation's key. A generator or coroutine is keyed by its frame object, held by
     * the instance (pycore's way): its end may never be signalled (gh-140373, or a close
     * inside a callback), and the frame's refcount then tells that it is over (reclaim). A
     * plain function's activation always ends with PY_RETURN or PY_UNWIND on its own
     * thread, so it is keyed by its interpreter frame (the token), with no frame object
     * to materialise; ri.frame stays None. */
    PyObject *frame;
    void *key;
    if (gen_code) {
        PyObject *ctx = hit_ctx(hit);
        if (ctx == NULL) {
            s->free[s->nfree++] = ri; /* (there is room: it came from there) */
            rc = -1;
            goto done;
        }
        frame = Py_NewRef(ctx_frame(ctx));
        key = (void *)frame; /* (None's address in the impossible case of no frame) */
    }
    else {
        frame = Py_NewRef(Py_None);
        key = hit->token;
    }
    RiData *r = RI(ri);
    Py_XSETREF(r->frame, frame == Py_None ? NULL : Py_NewRef(frame));
    r->thread_id = hit->tid ? hit->tid : PyThread_get_thread_ident();
    if (tsc.on) {
        r->entry_ticks = read_tsc();
        r->entry_raw = 1;
    }
    else {
        r->entry_time_ns = now_ns();
        r->entry_raw = 0;
    }
    int veto = entry_veto(e, ri, hit);
    if (veto != 0) {
        rs_recycle(s, ri);
        Py_DECREF(frame);
        rc = veto < 0 ? -1 : 0;
        goto done;
    }
    e->ctr->v[0]++;
    PyObject *replaced = NULL;
    if (act_set(s, key, ri, &replaced) < 0) {
        PyErr_Clear();
        rs_recycle(s, ri);
        Py_DECREF(frame);
        goto done;
    }
    Py_DECREF(ri); /* the map holds it now */
    Py_DECREF(frame);
    if (replaced != NULL) {
        /* Two live activations never share a key (a frame object held by its instance, or
         * an interpreter frame in use), so the one replaced is over, its end unseen: back to
         * the pool (pycore cannot meet this case: its keys are frames it holds). */
        rs_recycle(s, replaced);
    }
done:
    Py_DECREF(s);
    return rc;
}

/* The context of a return or unwind (one per exit, shared by its return probes). */
static PyObject *
exit_ctx(PyObject *code, long offset, PyObject *frame, void *token, unsigned long tid,
         PyObject *retval, PyObject *exc)
{
    PyObject *ctx = ctx_new_tok(code, offset, -1, frame, token); /* frame NULL: lazy */
    if (ctx != NULL) {
        CtxData *c = CTX(ctx);
        c->thread_id = tid;
        c->retval = retval == Py_None ? NULL : Py_NewRef(retval);
        c->exception = exc == Py_None ? NULL : Py_NewRef(exc);
    }
    return ctx;
}

/* pycore._kret_exit */
static int
kret_exit(Site *site, PyObject *code, long offset, void *key, PyObject *frame, void *token,
          unsigned long tid, PyObject *retval, PyObject *exc)
{
    PyObject *ctx = NULL;
    int rc = 0;
    for (Py_ssize_t i = 0; i < site->n_rets && rc == 0; i++) {
        PEnt *e = &site->rets[i];
        RetState *s = e->rs;
        if (s == NULL || s->dead) {
            continue;
        }
        PyObject *ri = act_pop(s, key); /* the table's reference is now ours */
        if (ri == NULL) {
            continue;
        }
        Py_INCREF(s);
        PyObject *h = probe_attr(e, H_HANDLER);
        if (h != NULL && Py_IS_TYPE(h, &ProgType)) {
            ProgObj *prog = (ProgObj *)h;
            if ((prog->needs & NEED_FRAME) && ctx == NULL &&
                (ctx = exit_ctx(code, offset, frame, token, tid, retval, exc)) == NULL) {
                rc = -1;
            }
            else {
                long long d = (prog->needs & NEED_DURATION) ? ri_duration(RI(ri)) : 0;
                PEnv env = {ctx, 1, d, retval, exc, code, offset, -1, token};
                if (prog_run(prog, &env) < 0) {
                    if (ctx == NULL &&
                        (ctx = exit_ctx(code, offset, frame, token, tid, retval, exc)) == NULL) {
                        rc = -1;
                    }
                    else {
                        rc = handler_failed(e->probe, ctx);
                    }
                }
            }
            Py_DECREF(h);
        }
        else if (h == NULL || h != Py_None) {
            if (ctx == NULL &&
                (ctx = exit_ctx(code, offset, frame, token, tid, retval, exc)) == NULL) {
                Py_XDECREF(h);
                rc = -1;
            }
            else if (h == NULL) {
                rc = handler_failed(e->probe, ctx);
            }
            else {
                PyObject *r = call2(h, ri, ctx);
                if (r == NULL) {
                    rc = handler_failed(e->probe, ctx);
                }
                Py_XDECREF(r);
                Py_DECREF(h);
            }
        }
        else {
            Py_DECREF(h);
        }
        rs_recycle(s, ri);
        Py_DECREF(s);
    }
    if (ctx != NULL) {
        if (Py_REFCNT(ctx) > 1) {
            /* A handler kept the context: give it the frame now, while the probed frame is
             * the current one (pycore's return context always holds its frame). */
            ctx_frame(ctx);
        }
        ctx_release(ctx);
    }
    return rc;
}

/* pycore._fire_posts */
static int
fire_posts(PyObject *entry)
{
    if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3) {
        return 0;
    }
    PyObject *posts = PyTuple_GET_ITEM(entry, 1);
    PyObject *ctx = PyTuple_GET_ITEM(entry, 2);
    if (!PyList_Check(posts)) {
        return 0;
    }
    Py_INCREF(entry); /* holds posts and ctx */
    int rc = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(posts); i++) {
        PyObject *p = Py_NewRef(PyList_GET_ITEM(posts, i));
        PyObject *h = PyObject_GetAttr(p, s_post_handler);
        if (h == NULL) {
            rc = handler_failed(p, ctx);
        }
        else if (h != Py_None) {
            PyObject *buf[4] = {NULL, p, ctx, g_zero};
            PyObject *r = PyObject_Vectorcall(h, buf + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (r == NULL) {
                rc = handler_failed(p, ctx);
            }
            else {
                Py_DECREF(r);
            }
        }
        Py_XDECREF(h);
        Py_DECREF(p);
        if (rc < 0) {
            break;
        }
    }
    Py_DECREF(entry);
    return rc;
}

/* pycore._defer_posts */
static int
defer_posts(PyObject *posts, PyObject *ctx, PyObject *pending)
{
    PyObject *frame = ctx_frame(ctx);
    if (frame == Py_None) {
        return 0;
    }
    PyObject *key = PyLong_FromVoidPtr(frame);
    if (key == NULL) {
        return -1;
    }
    PyObject *entry = PyTuple_Pack(3, frame, posts, ctx);
    if (entry == NULL) {
        Py_DECREF(key);
        return -1;
    }
    int r = PyDict_SetItem(pending, key, entry);
    Py_DECREF(entry);
    Py_DECREF(key);
    return r;
}

/* pending.pop(id(frame), None) as a new reference (NULL if absent; check PyErr_Occurred). */
static PyObject *
pending_pop(PyObject *pending, PyObject *frame)
{
    PyObject *key = PyLong_FromVoidPtr(frame);
    if (key == NULL) {
        return NULL;
    }
    PyObject *v = PyDict_GetItemWithError(pending, key);
    if (v != NULL) {
        Py_INCREF(v);
        if (PyDict_DelItem(pending, key) < 0) {
            Py_CLEAR(v);
        }
    }
    Py_DECREF(key);
    return v;
}

/* pycore._end_posts */
static int
end_posts(PyObject *frame, int fire)
{
    PyObject *pendings[2] = {g_pending_insn, g_pending_line};
    for (int i = 0; i < 2; i++) {
        PyObject *entry = pending_pop(pendings[i], frame);
        if (entry == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            continue;
        }
        int rc = fire ? fire_posts(entry) : 0;
        Py_DECREF(entry);
        if (rc < 0) {
            return -1;
        }
    }
    return 0;
}

/* pycore._run_kprobes */
static int
run_kprobes(PGroup *g, PyObject *ctx, PyObject *pending)
{
    PyObject *posts = NULL;
    int rc = 0;
    for (Py_ssize_t i = 0; i < g->n; i++) {
        PEnt *e = &g->items[i];
        if (kprobe_pre(e, ctx) < 0) {
            rc = -1;
            break;
        }
        int hp = has_post(e, ctx);
        if (hp < 0) {
            rc = -1;
            break;
        }
        if (hp) {
            if (posts == NULL && (posts = PyList_New(0)) == NULL) {
                rc = -1;
                break;
            }
            if (PyList_Append(posts, e->probe) < 0) {
                rc = -1;
                break;
            }
        }
    }
    if (rc == 0 && posts != NULL) {
        rc = defer_posts(posts, ctx, pending);
    }
    Py_XDECREF(posts);
    return rc;
}

/* --- pyprobes' own threads ---------------------------------------------------------------------
 * Hits on the threads pyprobes runs (the event writer, the agent, timers) are not the
 * program's: no probe fires and nothing is counted there (pycore: set_own_threads). The idents
 * are replaced whole by set_own_threads, under the GIL; with none set a hit pays one load. */

#define MAX_OWN_THREADS 64
static unsigned long g_own_threads[MAX_OWN_THREADS];
static int g_n_own_threads;

static inline int
on_own_thread(void)
{
    if (g_n_own_threads == 0) {
        return 0;
    }
    unsigned long me = PyThread_get_thread_ident();
    for (int i = 0; i < g_n_own_threads; i++) {
        if (g_own_threads[i] == me) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
set_own_threads(PyObject *mod, PyObject *idents)
{
    PyObject *seq = PySequence_Fast(idents, "set_own_threads() takes a sequence of thread idents");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_OWN_THREADS) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "at most %d own threads, not %zd",
                            MAX_OWN_THREADS, n);
    }
    unsigned long got[MAX_OWN_THREADS];
    for (Py_ssize_t i = 0; i < n; i++) {
        got[i] = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (got[i] == (unsigned long)-1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    memcpy(g_own_threads, got, (size_t)n * sizeof(got[0]));
    g_n_own_threads = (int)n;
    Py_RETURN_NONE;
}

/* --- callbacks -----------------------------------------------------------------------------
 * Registered with sys.monitoring as Callback objects: callables with their own vectorcall
 * entry point, which the interpreter calls directly (a builtin function would add a
 * recursion check and a thread-state lookup per event). */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    const char *name;
} Callback;

static PyObject *
bad_call(PyObject *self, int n)
{
    PyErr_Format(PyExc_TypeError, "%s() takes exactly %d positional arguments",
                 ((Callback *)self)->name, n);
    return NULL;
}

/* The end of a callback that failed: KeyboardInterrupt belongs to the program (NULL); anything
 * else is ours and must not reach it. */
COLD PyObject *
callback_failed(void)
{
    if (!PyErr_Occurred()) {
        Py_RETURN_NONE;
    }
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        return NULL;
    }
    PyErr_WriteUnraisable(NULL);
    Py_RETURN_NONE;
}

static PyObject *
on_start(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        return bad_call(self, 2);
    }
    Site *site = site_of(args[0]);
    if (site == NULL || on_own_thread()) {
        Py_RETURN_NONE;
    }
    Py_INCREF(site);
    int rc = 0;
    PyObject *posts = NULL, *ctx = NULL;
    Hit hit;
    hit_init(&hit, args[0]);
    for (Py_ssize_t i = 0; i < site->n_entry && rc == 0; i++) {
        PEnt *e = &site->entry[i];
        if (e->kind != KIND_R && (ctx = hit_ctx(&hit)) == NULL) {
            rc = -1;
            break;
        }
        switch (e->kind) {
        case KIND_K:
            rc = kprobe_pre(e, ctx);
            if (rc == 0) {
                int hp = has_post(e, ctx);
                if (hp < 0) {
                    rc = -1;
                }
                else if (hp) {
                    if (posts == NULL && (posts = PyList_New(0)) == NULL) {
                        rc = -1;
                    }
                    else if (PyList_Append(posts, e->probe) < 0) {
                        rc = -1;
                    }
                }
            }
            break;
        case KIND_R:
            rc = kret_entry(e, &hit, site->gen_code);
            break;
        default:
            rc = jprobe(e, ctx);
            break;
        }
    }
    if (rc == 0 && posts != NULL) {
        rc = defer_posts(posts, ctx, g_pending_insn);
    }
    Py_XDECREF(posts);
    if (hit.ctx != NULL) {
        ctx_seal(hit.ctx);
        ctx_release(hit.ctx);
    }
    Py_DECREF(site);
    if (rc < 0) {
        return callback_failed();
    }
    Py_RETURN_NONE;
}

static PyObject *
disable_here(PyObject *code)
{
    PyObject *cid = PyLong_FromVoidPtr(code);
    if (cid == NULL || PySet_Add(g_disabled_codes, cid) < 0) {
        Py_XDECREF(cid);
        return callback_failed();
    }
    Py_DECREF(cid);
    return Py_NewRef(g_DISABLE);
}

/* INSTRUCTION and LINE: the same shape over offsets or lines. */
static PyObject *
on_place(PyObject *code, PyObject *where, int is_line)
{
    Site *site = site_of(code);
    if (site == NULL) {
        /* (events on before the table: ccore.publish) recorded, so that filing the table
         * restarts what this DISABLE turned off */
        return configured ? disable_here(code) : Py_NewRef(Py_None);
    }
    int waits = is_line ? site->post_line : site->post_insn;
    PyObject *pending = is_line ? g_pending_line : g_pending_insn;
    Py_INCREF(site);
    int rc = 0;
    if (waits && PyDict_GET_SIZE(pending)) {
        PyFrameObject *f = PyEval_GetFrame();
        if (f != NULL) {
            PyObject *entry = pending_pop(pending, (PyObject *)f);
            if (entry != NULL) {
                rc = fire_posts(entry);
                Py_DECREF(entry);
            }
            else if (PyErr_Occurred()) {
                rc = -1;
            }
        }
        if (rc < 0) {
            Py_DECREF(site);
            return callback_failed();
        }
    }
    long key = as_long(where);
    if (key == -1 && PyErr_Occurred()) {
        Py_DECREF(site);
        return callback_failed();
    }
    PGroup *g = is_line ? find_group(site->lines, site->n_lines, key)
                        : find_group(site->offs, site->n_offs, key);
    if (g == NULL) {
        Py_DECREF(site);
        if (waits) {
            Py_RETURN_NONE;
        }
        return disable_here(code);
    }
    if (on_own_thread()) {
        Py_DECREF(site);
        Py_RETURN_NONE;
    }
    PyObject *ctx = is_line ? ctx_new(code, -1, key, NULL) : ctx_new(code, key, -1, NULL);
    if (ctx == NULL) {
        Py_DECREF(site);
        return callback_failed();
    }
    rc = run_kprobes(g, ctx, pending);
    ctx_seal(ctx);
    ctx_release(ctx);
    Py_DECREF(site);
    if (rc < 0) {
        return callback_failed();
    }
    Py_RETURN_NONE;
}

static PyObject *
on_instruction(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        return bad_call(self, 2);
    }
    return on_place(args[0], args[1], 0);
}

static PyObject *
on_line(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        return bad_call(self, 2);
    }
    return on_place(args[0], args[1], 1);
}

/* PY_RETURN (exc == NULL) and PY_UNWIND (retval == NULL) */
static PyObject *
on_leave(PyObject *code, PyObject *offset, PyObject *retval, PyObject *exc)
{
    Site *site = site_of(code);
    if (site == NULL || (exc != NULL && !site->watches_exit)) {
        Py_RETURN_NONE;
    }
    int posts = site->post_insn || site->post_line;
    PyObject *frame = NULL; /* the frame object, fetched only when needed */
    if (posts || site->gen_code) {
        PyFrameObject *f = PyEval_GetFrame();
        if (f == NULL) {
            Py_RETURN_NONE;
        }
        frame = Py_NewRef((PyObject *)f);
    }
    Py_INCREF(site);
    int rc = 0;
    if (posts) {
        rc = end_posts(frame, exc == NULL);
    }
    if (rc == 0 && site->n_rets) {
        long off = as_long(offset);
        if (off == -1 && PyErr_Occurred()) {
            rc = -1;
        }
        else {
#if HAVE_FRAME_TOKEN
            PyThreadState *ts = CURRENT_TSTATE();
            void *token = TOKEN_OF(ts);
            unsigned long tid = ts->thread_id;
#else
            void *token = NULL;
            unsigned long tid = 0;
#endif
            void *key = site->gen_code ? (void *)frame : token;
            rc = kret_exit(site, code, off, key, site->gen_code ? frame : NULL, token, tid,
                           retval ? retval : Py_None, exc ? exc : Py_None);
        }
    }
    Py_XDECREF(frame);
    Py_DECREF(site);
    if (rc < 0) {
        return callback_failed();
    }
    Py_RETURN_NONE;
}

static PyObject *
on_return(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        return bad_call(self, 3);
    }
    return on_leave(args[0], args[1], args[2], NULL);
}

static PyObject *
on_unwind(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        return bad_call(self, 3);
    }
    return on_leave(args[0], args[1], NULL, args[2]);
}

static PyObject *
on_yield(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        return bad_call(self, 3);
    }
    Site *site = site_of(args[0]);
    if (site == NULL || !(site->post_insn || site->post_line)) {
        Py_RETURN_NONE;
    }
    PyFrameObject *f = PyEval_GetFrame();
    if (f == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(site);
    PyObject *frame = Py_NewRef((PyObject *)f);
    int rc = end_posts(frame, 1);
    Py_DECREF(frame);
    Py_DECREF(site);
    if (rc < 0) {
        return callback_failed();
    }
    Py_RETURN_NONE;
}

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
    if (configured) {
        PyErr_SetString(PyExc_RuntimeError, "pyprobes._speedups.setup() was called already");
        return NULL;
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
    g_DISABLE = Py_NewRef(disable);
    g_fault = Py_NewRef(fault);
    g_line_of = Py_NewRef(line_of);
    g_pending_insn = Py_NewRef(pins);
    g_pending_line = Py_NewRef(pline);
    g_disabled_codes = Py_NewRef(disabled);
    g_close_emits_nothing = close_emits_nothing;
    g_watcher = PyDict_AddWatcher(probe_dict_changed);
    if (g_watcher < 0) {
        PyErr_Clear(); /* no watcher slot left: handlers are read from the dict at every hit */
    }
    configured = 1;
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
    g_close_emits_nothing = v;
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

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pyprobes._speedups",
    .m_doc = "The C dispatch core of pyprobes (see pyprobes.engine.ccore).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                                                     \
    do {                                                                                      \
        var = PyUnicode_InternFromString(text);                                               \
        if (var == NULL) {                                                                    \
            return NULL;                                                                      \
        }                                                                                     \
    } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    INTERN(s_pre_handler, "pre_handler");
    INTERN(s_post_handler, "post_handler");
    INTERN(s_entry, "entry");
    INTERN(s_handler, "handler");
    INTERN(s_entry_handler, "entry_handler");
    INTERN(s_fault_handler, "fault_handler");
    INTERN(s_kind, "kind");
    INTERN(s_rstate, "_rstate");
    INTERN(s_counters, "_counters");
    INTERN(s_f_lasti, "f_lasti");
    INTERN(s_f_lineno, "f_lineno");
    INTERN(s_clear, "clear");
    INTERN(s_co_qualname, "co_qualname");
    g_zero = PyLong_FromLong(0);
    if (g_zero == NULL) {
        return NULL;
    }
    if (PyType_Ready(&CountersType) < 0 || PyType_Ready(&CallbackType) < 0 ||
        PyType_Ready(&RetStateType) < 0 || PyType_Ready(&SiteType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL) {
        return NULL;
    }
    if (prog_module_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* Free-threaded builds: this core relies on the GIL (static tables, counters, the spare
     * context), and says so. pyprobes refuses such builds before importing it (tool.py). */
    if (PyUnstable_Module_SetGIL(m, Py_MOD_GIL_USED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    if (PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0 ||
        PyModule_AddObjectRef(m, "RetState", (PyObject *)&RetStateType) < 0 ||
        PyModule_AddObjectRef(m, "Site", (PyObject *)&SiteType) < 0 ||
        PyModule_AddIntConstant(m, "HAVE_FRAME_TOKEN", HAVE_FRAME_TOKEN) < 0) {
        Py_DECREF(m);
        return NULL;
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
            Py_DECREF(m);
            return NULL;
        }
        cb->vectorcall = cbs[i].fn;
        cb->name = cbs[i].name;
        if (PyModule_AddObject(m, cbs[i].name, (PyObject *)cb) < 0) {
            Py_DECREF(cb);
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}

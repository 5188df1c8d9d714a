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
        "(isLkONNONNNO)", r->probe, r->is_return ? "r" : "p", r->time_ns, r->tid, r->tname,
        vals, r->is_return ? Py_NewRef(r->retval) : Py_NewRef(Py_None),
        r->exc != NULL ? r->exc : Py_None, duration, location, site,
        r->is_async ? Py_True : Py_False);
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

/* {probe: lost} since the last read, and the counters start over. */
static PyObject *
ring_take_lost(RingObj *ring)
{
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d != NULL && i < ring->nprobes; i++) {
        if (ring->lost[i] == 0) {
            continue;
        }
        PyObject *k = PyLong_FromSsize_t(i), *v = PyLong_FromLongLong(ring->lost[i]);
        if (k == NULL || v == NULL || PyDict_SetItem(d, k, v) < 0) {
            Py_CLEAR(d);
        }
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (d != NULL) {
            ring->lost[i] = 0;
        }
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

/* --- JSON Lines, as output/render_json.py spells them --------------------------------------
 * In three steps, a chunk of records at a time, so that the writing runs with the GIL released
 * and the program's threads run meanwhile:
 *   1. with the GIL, each record is flattened (Flat: C numbers, and pointers to the data of the
 *      strs the record and the probe's statics hold; a float rendered by repr's own function)
 *      or marked for the fallback, when this fast path cannot spell it exactly;
 *   2. without the GIL, the flat records are written into raw memory (PyMem_Raw*): no object
 *      is touched but through those pointers, and the swapped-out records, which nobody else
 *      reads or frees, keep every object alive until step 3;
 *   3. with the GIL, the fallback renders the marked records in their places. */

#define JSON_CHUNK 2048

typedef struct {
    char *p;
    Py_ssize_t n, cap;
} Buf;

/* Room for `more` bytes: 0, or -1 (out of memory, no error set: it may run without the GIL). */
static int
buf_grow(Buf *b, Py_ssize_t more)
{
    if (b->n + more <= b->cap) {
        return 0;
    }
    Py_ssize_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->n + more) {
        cap *= 2;
    }
    char *p = PyMem_RawRealloc(b->p, cap);
    if (p == NULL) {
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int
buf_put(Buf *b, const char *s, Py_ssize_t n)
{
    if (buf_grow(b, n) < 0) {
        return -1;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}

#define BUF_LIT(b, s) buf_put((b), (s), (Py_ssize_t)sizeof(s) - 1)

/* A decimal integer, as int.__repr__ writes it. */
static int
buf_int(Buf *b, long long v)
{
    if (buf_grow(b, 24) < 0) {
        return -1;
    }
    static const char pairs[201] = "00010203040506070809101112131415161718192021222324252627282930"
                                   "31323334353637383940414243444546474849505152535455565758596061"
                                   "62636465666768697071727374757677787980818283848586878889909192"
                                   "93949596979899";
    char t[24];
    char *e = t + sizeof t, *d = e;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    while (u >= 100) { /* two digits at a time */
        unsigned r = (unsigned)(u % 100);
        u /= 100;
        d -= 2;
        memcpy(d, pairs + 2 * r, 2);
    }
    if (u >= 10) {
        d -= 2;
        memcpy(d, pairs + 2 * u, 2);
    }
    else {
        *--d = (char)('0' + u);
    }
    if (v < 0) {
        *--d = '-';
    }
    memcpy(b->p + b->n, d, e - d);
    b->n += e - d;
    return 0;
}

typedef struct {
    const char *s;
    Py_ssize_t n;
} Str;

/* An exact ASCII str's data: 1, or 0 when it is not one (nothing set). */
static inline int
str_ascii(PyObject *o, Str *out)
{
    if (o == NULL || !PyUnicode_CheckExact(o) || !PyUnicode_IS_ASCII(o)) {
        return 0;
    }
    out->s = (const char *)PyUnicode_1BYTE_DATA(o);
    out->n = PyUnicode_GET_LENGTH(o);
    return 1;
}

/* ASCII text as sanitize.dumps writes a str's body: json escapes C0, '"' and '\\', dumps
 * also DEL. */
static int
buf_esc(Buf *b, Str s)
{
    if (buf_grow(b, s.n * 6) < 0) {
        return -1;
    }
    const unsigned char *d = (const unsigned char *)s.s;
    char *o = b->p + b->n;
    static const char hex[] = "0123456789abcdef";
    for (Py_ssize_t i = 0; i < s.n; i++) {
        unsigned char c = d[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
            *o++ = (char)c;
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    b->n = o - b->p;
    return 0;
}

static int
buf_qstr(Buf *b, Str s)
{
    return BUF_LIT(b, "\"") < 0 || buf_esc(b, s) < 0 ? -1 : BUF_LIT(b, "\"");
}

/* The last text escaped for one field: a record's file, thread name or site is most often the
 * one before it, whose escaped bytes are then copied from where they were written. */
typedef struct {
    const char *src;
    Py_ssize_t srcn, at, n;
} EscMemo;

static int
buf_esc_memo(Buf *b, Str s, EscMemo *m)
{
    if (m->src == s.s && m->srcn == s.n) {
        if (buf_grow(b, m->n) < 0) {
            return -1;
        }
        memcpy(b->p + b->n, b->p + m->at, m->n);
        b->n += m->n;
        return 0;
    }
    Py_ssize_t at = b->n;
    if (buf_esc(b, s) < 0) {
        return -1;
    }
    *m = (EscMemo){s.s, s.n, at, b->n - at};
    return 0;
}

/* A value as JSON writes it: a literal (null, true, false), an int, an ASCII str, or a float's
 * repr kept in the chunk's arena (at offset i, n bytes). */
enum { JV_LIT, JV_INT, JV_STR, JV_FLOAT };
typedef struct {
    int tag;
    Str s;
    long long i;
} JVal;

/* One record, flat: everything step 2 reads. */
typedef struct {
    int fallback, is_return, is_async, nvals;
    Str prefix; /* the probe's JSON up to "location": (UTF-8, written as it is) */
    Str file;   /* the location's file (.s NULL: the location is "?") */
    long line;
    long long time_ns, tid, duration;
    Str tname;
    Str keys[REC_MAXV]; /* '"name":' (UTF-8, as it is) */
    JVal vals[REC_MAXV];
    JVal retval;
    Str exc;         /* .s NULL: null */
    Str module, qual; /* the site (module.s NULL: the site is "?") */
} Flat;

/* `v` flattened: 0, 1 (this fast path does not spell it), -1 error. */
static int
flat_value(PyObject *v, JVal *out, Buf *arena)
{
    if (v == Py_None || v == Py_True || v == Py_False) {
        out->tag = JV_LIT;
        out->s.s = v == Py_None ? "null" : (v == Py_True ? "true" : "false");
        out->s.n = (Py_ssize_t)strlen(out->s.s);
        return 0;
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        out->tag = JV_INT;
        out->i = PyLong_AsLongLongAndOverflow(v, &overflow);
        return overflow ? 1 : 0;
    }
    if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        if (!isfinite(x)) {
            return 1;
        }
        char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (r == NULL) {
            return -1;
        }
        out->tag = JV_FLOAT;
        out->i = arena->n;
        out->s.n = (Py_ssize_t)strlen(r);
        int rc = buf_put(arena, r, out->s.n);
        PyMem_Free(r);
        if (rc < 0) {
            PyErr_NoMemory();
        }
        return rc;
    }
    out->tag = JV_STR;
    return str_ascii(v, &out->s) ? 0 : 1;
}

/* A str of the probe's statics, as UTF-8 (cached by the str: valid while it lives). */
static int
flat_utf8(PyObject *o, Str *out)
{
    if (!PyUnicode_Check(o)) {
        return 1;
    }
    out->s = PyUnicode_AsUTF8AndSize(o, &out->n);
    return out->s == NULL ? -1 : 0;
}

/* Step 1 for one record. `st` is the probe's (prefix, keys): the JSON text up to "location":
 * and each fetch arg's '"name":'. 0, 1 (the fallback's), -1 error. */
static int
rec_flat(Rec *r, PyObject *st, Flat *f, Buf *arena)
{
    int rc;
#define STEP(e)                                                                                 \
    do {                                                                                        \
        if ((rc = (e)) != 0) {                                                                  \
            return rc;                                                                          \
        }                                                                                       \
    } while (0)
    if (st == NULL || !PyTuple_Check(st) || PyTuple_GET_SIZE(st) != 2 ||
        !PyTuple_Check(PyTuple_GET_ITEM(st, 1))) {
        return 1;
    }
    PyObject *keys = PyTuple_GET_ITEM(st, 1);
    if (PyTuple_GET_SIZE(keys) != r->nvals) {
        return 1;
    }
    f->is_return = r->is_return;
    f->is_async = r->is_async;
    f->nvals = r->nvals;
    STEP(flat_utf8(PyTuple_GET_ITEM(st, 0), &f->prefix));
    PyCodeObject *co = (PyCodeObject *)r->code;
    f->file.s = NULL;
    if (co != NULL) {
        STEP(str_ascii(co->co_filename, &f->file) ? 0 : 1);
        f->line = rec_line(r);
    }
    f->time_ns = r->time_ns;
    f->tid = (long long)r->tid;
    STEP(str_ascii(r->tname, &f->tname) ? 0 : 1);
    for (int i = 0; i < r->nvals; i++) {
        STEP(flat_utf8(PyTuple_GET_ITEM(keys, i), &f->keys[i]));
        STEP(flat_value(r->vals[i], &f->vals[i], arena));
    }
    if (r->is_return) {
        STEP(flat_value(r->retval, &f->retval, arena));
        f->exc.s = NULL;
        if (r->exc != NULL) {
            STEP(str_ascii(r->exc, &f->exc) ? 0 : 1);
        }
        f->duration = r->duration;
        f->module.s = NULL;
        if (co != NULL) {
            if (r->module == NULL) {
                return 1; /* the reference writes "?:..." */
            }
            STEP(str_ascii(r->module, &f->module) && str_ascii(co->co_qualname, &f->qual) ? 0
                                                                                            : 1);
        }
    }
    return 0;
#undef STEP
}

static int
buf_jval(Buf *b, const JVal *v, const char *arena)
{
    switch (v->tag) {
    case JV_LIT: return buf_put(b, v->s.s, v->s.n);
    case JV_INT: return buf_int(b, v->i);
    case JV_FLOAT: return buf_put(b, arena + v->i, v->s.n);
    default: return buf_qstr(b, v->s);
    }
}

/* What step 2 keeps from one record to the next (within a chunk: step 3 moves lines). */
typedef struct {
    Str pid; /* ',"pid":N' */
    EscMemo file, tname, module, qual;
} Memo;

/* Step 2 for one record: its line. 0, or -1 (out of memory). No GIL needed. */
static int
flat_json(Buf *b, const Flat *f, Memo *memo, const char *arena)
{
#define STEP(e)                                                                                 \
    do {                                                                                        \
        if ((e) < 0) {                                                                          \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)
    STEP(buf_put(b, f->prefix.s, f->prefix.n));
    if (f->file.s == NULL) {
        STEP(BUF_LIT(b, "\"?\""));
    }
    else {
        STEP(BUF_LIT(b, "\""));
        STEP(buf_esc_memo(b, f->file, &memo->file));
        STEP(BUF_LIT(b, ":"));
        STEP(buf_int(b, f->line));
        STEP(BUF_LIT(b, "\""));
    }
    STEP(BUF_LIT(b, ",\"time_ns\":"));
    STEP(buf_int(b, f->time_ns));
    STEP(buf_put(b, memo->pid.s, memo->pid.n));
    STEP(BUF_LIT(b, ",\"thread_id\":"));
    STEP(buf_int(b, f->tid));
    STEP(BUF_LIT(b, ",\"thread_name\":\""));
    STEP(buf_esc_memo(b, f->tname, &memo->tname));
    STEP(BUF_LIT(b, "\""));
    STEP(BUF_LIT(b, ",\"args\":{"));
    for (int i = 0; i < f->nvals; i++) {
        if (i > 0) {
            STEP(BUF_LIT(b, ","));
        }
        STEP(buf_put(b, f->keys[i].s, f->keys[i].n));
        STEP(buf_jval(b, &f->vals[i], arena));
    }
    STEP(BUF_LIT(b, "}"));
    if (f->is_return) {
        STEP(BUF_LIT(b, ",\"retval\":"));
        STEP(buf_jval(b, &f->retval, arena));
        STEP(BUF_LIT(b, ",\"exception\":"));
        STEP(f->exc.s != NULL ? buf_qstr(b, f->exc) : BUF_LIT(b, "null"));
        STEP(BUF_LIT(b, ",\"duration_ns\":"));
        STEP(buf_int(b, f->duration));
        STEP(BUF_LIT(b, ",\"site\":"));
        if (f->module.s == NULL) {
            STEP(BUF_LIT(b, "\"?\""));
        }
        else {
            STEP(BUF_LIT(b, "\""));
            STEP(buf_esc_memo(b, f->module, &memo->module));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_esc_memo(b, f->qual, &memo->qual));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_int(b, f->line));
            STEP(BUF_LIT(b, "\""));
        }
        STEP(f->is_async ? BUF_LIT(b, ",\"is_async\":true") : BUF_LIT(b, ",\"is_async\":false"));
    }
    return BUF_LIT(b, "}\n");
#undef STEP
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

/* Step 3 for a chunk with records the fallback renders: the chunk's text (from `from` in `b`,
 * record k's line between ends[k-1] and ends[k]) rebuilt with the fallback's lines in place. */
static int
chunk_fallbacks(Buf *b, Py_ssize_t from, Rec *recs, Flat *flat, Py_ssize_t *ends, Py_ssize_t n,
                PyObject *fallback)
{
    Buf out = {NULL, 0, 0};
    Py_ssize_t at = from;
    for (Py_ssize_t k = 0; k < n; k++) {
        int rc = 0;
        if (!flat[k].fallback) {
            rc = buf_put(&out, b->p + at, ends[k] - at);
        }
        else {
            PyObject *t = rec_tuple(&recs[k]);
            PyObject *line = t != NULL ? PyObject_CallOneArg(fallback, t) : NULL;
            Py_XDECREF(t);
            Py_ssize_t len;
            const char *u;
            if (line == NULL || !PyUnicode_Check(line) ||
                (u = PyUnicode_AsUTF8AndSize(line, &len)) == NULL) {
                if (line != NULL && !PyErr_Occurred()) {
                    PyErr_SetString(PyExc_TypeError, "fallback gives a str");
                }
                Py_XDECREF(line);
                PyMem_RawFree(out.p);
                return -1;
            }
            rc = buf_put(&out, u, len);
            Py_DECREF(line);
        }
        if (rc < 0) {
            PyMem_RawFree(out.p);
            PyErr_NoMemory();
            return -1;
        }
        at = ends[k];
    }
    b->n = from;
    int rc = buf_put(b, out.p, out.n);
    PyMem_RawFree(out.p);
    if (rc < 0) {
        PyErr_NoMemory();
    }
    return rc;
}

/* take_json(statics, pid, fallback, keep=False, utf8=False)
 *   -> (text, counts, lost, records or None); with utf8, the text as UTF-8 bytes (no decoding:
 *   a file opened as UTF-8 takes them as they are). */
static PyObject *
ring_take_json(RingObj *ring, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"statics", "pid", "fallback", "keep", "utf8", NULL};
    PyObject *statics, *fallback;
    long long pid;
    int keep = 0, utf8 = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!LO|pp:take_json", kwlist, &PyTuple_Type,
                                     &statics, &pid, &fallback, &keep, &utf8)) {
        return NULL;
    }
    Py_ssize_t n;
    Rec *full = ring_swap(ring, &n);
    Buf b = {NULL, 0, 0}, arena = {NULL, 0, 0};
    char pidtext[40];
    snprintf(pidtext, sizeof pidtext, ",\"pid\":%lld", pid);
    PyObject *memo_code = NULL; /* borrowed: a record holds it */
    long memo_offset = 0, memo_line = 0;
    Py_ssize_t nprobes = ring->nprobes;
    long long *counts = PyMem_Calloc(nprobes > 0 ? nprobes : 1, sizeof(long long));
    Flat *flat = PyMem_RawMalloc(JSON_CHUNK * sizeof(Flat));
    Py_ssize_t *ends = PyMem_RawMalloc(JSON_CHUNK * sizeof(Py_ssize_t));
    PyObject *kept = keep ? PyList_New(0) : Py_NewRef(Py_None);
    PyObject *result = NULL, *text = NULL, *lost = NULL, *cdict = NULL;
    if (counts == NULL || flat == NULL || ends == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (kept == NULL) {
        goto done;
    }
    for (Py_ssize_t at = 0; at < n; at += JSON_CHUNK) {
        Py_ssize_t m = n - at < JSON_CHUNK ? n - at : JSON_CHUNK;
        Rec *recs = full + at;
        int fallbacks = 0;
        arena.n = 0;
        for (Py_ssize_t k = 0; k < m; k++) { /* step 1 */
            Rec *r = &recs[k];
            if (r->lineno < 0 && r->code != NULL) { /* a site's line, found once in a row */
                if (r->code == memo_code && r->offset == memo_offset) {
                    r->lineno = memo_line;
                }
                else {
                    memo_code = r->code;
                    memo_offset = r->offset;
                    memo_line = rec_line(r);
                }
            }
            PyObject *st = r->probe < PyTuple_GET_SIZE(statics) ? PyTuple_GET_ITEM(statics, r->probe)
                                                                : NULL;
            int rc = rec_flat(r, st, &flat[k], &arena);
            if (rc < 0) {
                goto done;
            }
            flat[k].fallback = rc;
            fallbacks += rc;
            if (r->probe >= 0 && r->probe < nprobes) {
                counts[r->probe]++;
            }
            if (keep) {
                PyObject *t = rec_tuple(r);
                if (t == NULL || PyList_Append(kept, t) < 0) {
                    Py_XDECREF(t);
                    goto done;
                }
                Py_DECREF(t);
            }
        }
        Py_ssize_t from = b.n;
        int failed = 0;
        Memo memo = {{pidtext, (Py_ssize_t)strlen(pidtext)}};
        Py_BEGIN_ALLOW_THREADS /* step 2 */
        for (Py_ssize_t k = 0; k < m && !failed; k++) {
            if (!flat[k].fallback) {
                failed = flat_json(&b, &flat[k], &memo, arena.p) < 0;
            }
            ends[k] = b.n;
        }
        Py_END_ALLOW_THREADS
        if (failed) {
            PyErr_NoMemory();
            goto done;
        }
        if (fallbacks && chunk_fallbacks(&b, from, recs, flat, ends, m, fallback) < 0) { /* 3 */
            goto done;
        }
    }
    text = utf8 ? PyBytes_FromStringAndSize(b.p ? b.p : "", b.n)
                : PyUnicode_DecodeUTF8(b.p ? b.p : "", b.n, "surrogatepass");
    cdict = counts_dict(counts, nprobes);
    lost = ring_take_lost(ring);
    if (text != NULL && cdict != NULL && lost != NULL) {
        result = PyTuple_Pack(4, text, cdict, lost, kept);
    }
done:
    if (full != NULL) {
        ring_give_back(ring, full, n);
    }
    PyMem_RawFree(b.p);
    PyMem_RawFree(arena.p);
    PyMem_RawFree(flat);
    PyMem_RawFree(ends);
    PyMem_Free(counts);
    Py_XDECREF(text);
    Py_XDECREF(cdict);
    Py_XDECREF(lost);
    Py_XDECREF(kept);
    return result;
}

/* --- the object ---------------------------------------------------------------------------- */

/* Ring(capacity, render, exception_text, wake=None) */
static PyObject *
ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "render", "exception_text", "wake", NULL};
    Py_ssize_t cap;
    PyObject *render, *exc_text, *wake = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nOO|O:Ring", kwlist, &cap, &render, &exc_text,
                                     &wake)) {
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
    return 0;
}

static int
ring_tp_clear(RingObj *ring)
{
    Py_CLEAR(ring->render);
    Py_CLEAR(ring->exc_text);
    Py_CLEAR(ring->wake);
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
    .tp_doc = "Ring(capacity, render, exception_text, wake=None): programs' event records.",
    .tp_new = ring_new,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_traverse = (traverseproc)ring_traverse,
    .tp_clear = (inquiry)ring_tp_clear,
    .tp_methods = ring_methods,
    .tp_getset = ring_getset,
};

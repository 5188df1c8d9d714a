/* --- RENDERING: records as JSON Lines, text lines or Chrome trace events, as
 * output/render_json.py, render_text.py and render_chrome.py spell them. Included by
 * _records.c.
 *
 * In three steps, a chunk of records at a time, so that the writing runs with the GIL released
 * and the program's threads run meanwhile:
 *   1. with the GIL, each record is flattened (Flat: C numbers, and pointers to the data of the
 *      strs the record and the probe's statics hold; a float rendered by repr's own function)
 *      or marked for the fallback, when this fast path cannot spell it exactly;
 *   2. without the GIL, the flat records are written into raw memory (PyMem_Raw*): no object
 *      is touched but through those pointers, and the swapped-out records, which nobody else
 *      reads or frees, keep every object alive until step 3;
 *   3. with the GIL, the fallback renders the marked records in their places.
 * The fast path takes ASCII text only (a record with other text goes to the fallback), and
 * writes numbers without printf (locale-free: a program may set LC_NUMERIC). */

#define LINES_CHUNK 2048
enum { FMT_JSON, FMT_TEXT, FMT_CHROME };

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

/* An unsigned decimal, `width` digits at least (zero-padded). */
static int
buf_uint(Buf *b, unsigned long long u, int width)
{
    static const char pairs[201] = "00010203040506070809101112131415161718192021222324252627282930"
                                   "31323334353637383940414243444546474849505152535455565758596061"
                                   "62636465666768697071727374757677787980818283848586878889909192"
                                   "93949596979899";
    if (buf_grow(b, 24) < 0) {
        return -1;
    }
    char t[24];
    char *e = t + sizeof t, *d = e;
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
    while (e - d < width) {
        *--d = '0';
    }
    memcpy(b->p + b->n, d, e - d);
    b->n += e - d;
    return 0;
}

/* A decimal integer, as int.__repr__ writes it. */
static int
buf_int(Buf *b, long long v)
{
    if (v < 0 && BUF_LIT(b, "-") < 0) {
        return -1;
    }
    return buf_uint(b, v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v, 1);
}

#ifdef __SIZEOF_INT128__
#define HAVE_FIXED 1
/* round(d * 10**digits) exactly, ties to even, as format(d, ".Nf") rounds; 0 <= d < 2**53. */
static unsigned long long
fixed_scaled(double d, int digits)
{
    static const unsigned long long pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    int e;
    double m = frexp(d, &e); /* d = m * 2**e, 0.5 <= m < 1 (m = 0 for 0) */
    unsigned long long mant = (unsigned long long)ldexp(m, 53);
    e -= 53; /* d = mant * 2**e exactly */
    unsigned __int128 p = (unsigned __int128)mant * pow10[digits];
    if (e >= 0) {
        return (unsigned long long)(p << e);
    }
    int k = -e;
    if (k >= 100) {
        return 0; /* below a quarter */
    }
    unsigned __int128 q = p >> k, rem = p - (q << k), half = (unsigned __int128)1 << (k - 1);
    if (rem > half || (rem == half && (q & 1))) {
        q++;
    }
    return (unsigned long long)q;
}

/* The scaled value of fixed_scaled written with `digits` decimals ("12.300000"). */
static int
buf_fixed(Buf *b, unsigned long long q, int digits)
{
    static const unsigned long long pow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    if (buf_uint(b, q / pow10[digits], 1) < 0 || BUF_LIT(b, ".") < 0) {
        return -1;
    }
    return buf_uint(b, q % pow10[digits], digits);
}
#else
#define HAVE_FIXED 0
#endif

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

static const char hexdigits[] = "0123456789abcdef";

/* ASCII text as sanitize.dumps writes a str's body: json escapes C0, '"' and '\\', dumps
 * also DEL. */
static int
buf_esc_json(Buf *b, Str s)
{
    if (buf_grow(b, s.n * 6) < 0) {
        return -1;
    }
    const unsigned char *d = (const unsigned char *)s.s;
    char *o = b->p + b->n;
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
            *o++ = hexdigits[c >> 4];
            *o++ = hexdigits[c & 15];
        }
    }
    b->n = o - b->p;
    return 0;
}

/* ASCII text with Python's escapes for what is not printable (C0, DEL: \n, \r, \t, \xNN).
 * With a quote: as repr() writes a str's body (the quote and backslash escaped too);
 * without (0): as sanitize.terminal_safe leaves it. */
static int
buf_esc_py(Buf *b, Str s, char quote)
{
    if (buf_grow(b, s.n * 4) < 0) {
        return -1;
    }
    const unsigned char *d = (const unsigned char *)s.s;
    char *o = b->p + b->n;
    for (Py_ssize_t i = 0; i < s.n; i++) {
        unsigned char c = d[i];
        if (quote && (c == (unsigned char)quote || c == '\\')) {
            *o++ = '\\';
            *o++ = (char)c;
        }
        else if (c >= 0x20 && c != 0x7f) {
            *o++ = (char)c;
        }
        else {
            *o++ = '\\';
            switch (c) {
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                *o++ = 'x';
                *o++ = hexdigits[c >> 4];
                *o++ = hexdigits[c & 15];
            }
        }
    }
    b->n = o - b->p;
    return 0;
}

static int
buf_esc_term(Buf *b, Str s)
{
    return buf_esc_py(b, s, 0);
}

/* An ASCII str as repr() writes it: in single quotes, unless only double ones are free. */
static int
buf_repr(Buf *b, Str s)
{
    char quote = '\'';
    if (memchr(s.s, '\'', s.n) != NULL && memchr(s.s, '"', s.n) == NULL) {
        quote = '"';
    }
    if (buf_put(b, &quote, 1) < 0 || buf_esc_py(b, s, quote) < 0) {
        return -1;
    }
    return buf_put(b, &quote, 1);
}

static int
buf_qstr(Buf *b, Str s)
{
    return BUF_LIT(b, "\"") < 0 || buf_esc_json(b, s) < 0 ? -1 : BUF_LIT(b, "\"");
}

/* The last text escaped for one field: a record's file, thread name or site is most often the
 * one before it, whose escaped bytes are then copied from where they were written. */
typedef struct {
    const char *src;
    Py_ssize_t srcn, at, n;
} EscMemo;

static int
buf_esc_memo(Buf *b, Str s, EscMemo *m, int (*esc)(Buf *, Str))
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
    if (esc(b, s) < 0) {
        return -1;
    }
    *m = (EscMemo){s.s, s.n, at, b->n - at};
    return 0;
}

/* A value as the formats spell it: None, a bool, an int, an ASCII str, or text kept in the
 * chunk's arena (at offset i, s.n bytes): a float's repr, or a container's JSON. */
enum { JV_NONE, JV_TRUE, JV_FALSE, JV_INT, JV_STR, JV_FLOAT, JV_JSON };
typedef struct {
    int tag;
    Str s;
    long long i;
} JVal;

/* What a probe's records share (its statics), for both formats. */
typedef struct {
    int ok;      /* 0: its records go to the fallback */
    int n;       /* fetch args */
    Str a;       /* JSON: its text up to "location": (UTF-8, written as it is); text: the event */
    Str probe;   /* text: the probe */
    Str keys[REC_MAXV]; /* JSON: '"name":' (UTF-8); text: the name (ASCII) */
    char dur[REC_MAXV]; /* text: the field is $duration */
    char ret[REC_MAXV]; /* text: the field is $retval */
    char has_exc;       /* text: a field is $exception */
    Str ev;             /* chrome: the event's name as JSON */
    int cflags;         /* chrome: which of "event", "retval", "exception" are fetch args */
} PInfo;

/* Chrome: a fetch arg of that name wins over the event's own (args.setdefault). */
#define CH_EVENT 1
#define CH_RETVAL 2
#define CH_EXC 4

/* One record, flat: everything step 2 reads. */
typedef struct {
    int fallback, is_return, is_async, nvals, raised;
    int has_link;        /* JSON: "activation" (--otlp), its numbers in link */
    long long link[3];
    PInfo *pi;
    Str file; /* the location's file (.s NULL: the location is "?") */
    long line;
    long long time_ns, tid, duration;
    Str tname;
    JVal vals[REC_MAXV];
    JVal retval;
    Str exc;           /* JSON: the exception's text; text: its type (.s NULL: none) */
    Str module, qual;  /* the site (module.s NULL: the site is "?") */
    /* chrome, from step 1 (which keeps the renderer's state, in the order of the records) */
    int comma, meta;   /* a ",\n" first; a thread_name event first */
    long long ctid, async_id;
    Py_ssize_t ts, ts_n, dur, dur_n, ets, ets_n; /* floats' reprs in the arena */
    Py_ssize_t fb, fb_n; /* the fallback's text in the arena (when .fallback) */
} Flat;

/* repr(x) of a finite float into `b`: 0, or -1 with an error. */
static int
buf_float_repr(Buf *b, double x)
{
    char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (r == NULL) {
        return -1;
    }
    int rc = buf_put(b, r, (Py_ssize_t)strlen(r));
    PyMem_Free(r);
    if (rc < 0) {
        PyErr_NoMemory();
    }
    return rc;
}

#define JSON_MAX_DEPTH 32

/* A rendered container (the capture rules' plain data: lists, tuples, dicts with str keys,
 * and scalars) as sanitize.dumps writes it, with `readable` separators (", ", ": ") or compact
 * ones: 0, 1 (not this fast path's: the buffer is left where it was), -1 error. With the GIL:
 * the objects are exact builtin types, so no code of the program runs. */
static int
buf_json_data(Buf *b, PyObject *v, int readable, int depth)
{
    Py_ssize_t mark = b->n;
    int rc = 0;
    Str s;
    if (v == Py_None) {
        rc = BUF_LIT(b, "null");
    }
    else if (v == Py_True || v == Py_False) {
        rc = v == Py_True ? BUF_LIT(b, "true") : BUF_LIT(b, "false");
    }
    else if (PyLong_CheckExact(v)) {
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        rc = overflow ? 1 : buf_int(b, x);
    }
    else if (PyFloat_CheckExact(v)) {
        double x = PyFloat_AS_DOUBLE(v);
        rc = isfinite(x) ? buf_float_repr(b, x) : 1;
        if (rc < 0) {
            return -1;
        }
    }
    else if (str_ascii(v, &s)) {
        rc = buf_qstr(b, s);
    }
    else if (depth >= JSON_MAX_DEPTH) {
        rc = 1;
    }
    else if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        PyObject **items = PySequence_Fast_ITEMS(v);
        Py_ssize_t n = PySequence_Fast_GET_SIZE(v);
        rc = BUF_LIT(b, "[");
        for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
            if (i > 0) {
                rc = readable ? BUF_LIT(b, ", ") : BUF_LIT(b, ",");
            }
            if (rc == 0) {
                rc = buf_json_data(b, items[i], readable, depth + 1);
            }
        }
        if (rc == 0) {
            rc = BUF_LIT(b, "]");
        }
    }
    else if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0, i = 0;
        PyObject *key, *value;
        rc = BUF_LIT(b, "{");
        while (rc == 0 && PyDict_Next(v, &pos, &key, &value)) {
            if (i++ > 0) {
                rc = readable ? BUF_LIT(b, ", ") : BUF_LIT(b, ",");
            }
            if (rc == 0) {
                rc = str_ascii(key, &s) ? buf_qstr(b, s) : 1;
            }
            if (rc == 0) {
                rc = readable ? BUF_LIT(b, ": ") : BUF_LIT(b, ":");
            }
            if (rc == 0) {
                rc = buf_json_data(b, value, readable, depth + 1);
            }
        }
        if (rc == 0) {
            rc = BUF_LIT(b, "}");
        }
    }
    else {
        rc = 1;
    }
    if (rc != 0) {
        b->n = mark;
        if (rc < 0 && !PyErr_Occurred()) {
            PyErr_NoMemory();
        }
    }
    return rc;
}

/* `v` flattened (`readable`: a container's JSON as text lines write it): 0, 1 (this fast path
 * does not spell it), -1 error. */
static int
flat_value(PyObject *v, JVal *out, Buf *arena, int readable)
{
    if (v == Py_None || v == Py_True || v == Py_False) {
        out->tag = v == Py_None ? JV_NONE : (v == Py_True ? JV_TRUE : JV_FALSE);
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
        out->tag = JV_FLOAT;
        out->i = arena->n;
        int rc = buf_float_repr(arena, x);
        out->s.n = arena->n - out->i;
        return rc;
    }
    if (str_ascii(v, &out->s)) {
        out->tag = JV_STR;
        return 0;
    }
    out->tag = JV_JSON;
    out->i = arena->n;
    int rc = buf_json_data(arena, v, readable, 0);
    out->s.n = arena->n - out->i;
    return rc;
}

/* str.isspace() for an ASCII character. */
static inline int
ascii_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* render_text's _exception_type: the text before the first "(", then before the first ":",
 * stripped; "?" when nothing is left. */
static Str
exc_type(Str s)
{
    const char *p = memchr(s.s, '(', s.n);
    Py_ssize_t n = p != NULL ? p - s.s : s.n;
    p = memchr(s.s, ':', n);
    n = p != NULL ? p - s.s : n;
    const char *a = s.s;
    while (n > 0 && ascii_space((unsigned char)a[0])) {
        a++;
        n--;
    }
    while (n > 0 && ascii_space((unsigned char)a[n - 1])) {
        n--;
    }
    return n > 0 ? (Str){a, n} : (Str){"?", 1};
}

/* A str of the probe's statics as UTF-8 (cached by the str: valid while it lives); `ascii`:
 * only an ASCII one. 0, 1 (not one), -1 error. */
static int
static_str(PyObject *o, Str *out, int ascii)
{
    if (!PyUnicode_Check(o)) {
        return 1;
    }
    if (ascii) {
        return str_ascii(o, out) ? 0 : 1;
    }
    out->s = PyUnicode_AsUTF8AndSize(o, &out->n);
    return out->s == NULL ? -1 : 0;
}

/* The probes' PInfo from the statics: per probe, JSON (prefix, keys), text (event, probe,
 * names). A probe whose statics are not as expected has ok = 0. 0, or -1 error. */
static int
pinfo_from(PyObject *statics, PInfo *out, Py_ssize_t n, int fmt)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PInfo *pi = &out[i];
        memset(pi, 0, sizeof *pi);
        PyObject *st = i < PyTuple_GET_SIZE(statics) ? PyTuple_GET_ITEM(statics, i) : NULL;
        Py_ssize_t want = fmt == FMT_JSON ? 2 : (fmt == FMT_TEXT ? 3 : 5);
        if (st == NULL || !PyTuple_Check(st) || PyTuple_GET_SIZE(st) != want) {
            continue;
        }
        PyObject *names = PyTuple_GET_ITEM(st, want - 1);
        if (!PyTuple_Check(names) || PyTuple_GET_SIZE(names) > REC_MAXV) {
            continue;
        }
        int ascii = fmt == FMT_TEXT, rc = static_str(PyTuple_GET_ITEM(st, 0), &pi->a, ascii);
        if (rc == 0 && fmt != FMT_JSON) {
            rc = static_str(PyTuple_GET_ITEM(st, 1), &pi->probe, ascii);
        }
        if (rc == 0 && fmt == FMT_CHROME) {
            rc = static_str(PyTuple_GET_ITEM(st, 2), &pi->ev, 0);
            pi->cflags = (int)PyLong_AsLong(PyTuple_GET_ITEM(st, 3));
            if (pi->cflags == -1 && PyErr_Occurred()) {
                return -1;
            }
        }
        pi->n = (int)PyTuple_GET_SIZE(names);
        for (int k = 0; k < pi->n && rc == 0; k++) {
            PyObject *name = PyTuple_GET_ITEM(names, k);
            rc = static_str(name, &pi->keys[k], ascii);
            if (rc == 0 && fmt == FMT_TEXT) {
                pi->dur[k] = PyUnicode_CompareWithASCIIString(name, "$duration") == 0;
                pi->ret[k] = PyUnicode_CompareWithASCIIString(name, "$retval") == 0;
                pi->has_exc |= PyUnicode_CompareWithASCIIString(name, "$exception") == 0;
            }
        }
        if (rc < 0) {
            return -1;
        }
        pi->ok = rc == 0;
    }
    return 0;
}

/* A record's activation link, (n, parent, root, trace id, span id) of exact ints, as JSON
 * writes it when the root took no program span (the trace and span ids 0: written "", "");
 * else 1: the fallback writes it (output.records.activation_json). */
static int
flat_link(PyObject *link, Flat *f)
{
    if (!PyTuple_CheckExact(link) || PyTuple_GET_SIZE(link) != 5) {
        return 1;
    }
    for (int i = 0; i < 5; i++) {
        PyObject *v = PyTuple_GET_ITEM(link, i);
        if (!PyLong_CheckExact(v)) {
            return 1;
        }
        int overflow;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || x < 0 || (i >= 3 && x != 0)) {
            return 1; /* (no error is set: an exact int) */
        }
        if (i < 3) {
            f->link[i] = x;
        }
    }
    f->has_link = 1;
    return 0;
}

/* Step 1 for one record: 0, 1 (the fallback's), -1 error. */
static int
rec_flat(Rec *r, PInfo *pi, Flat *f, Buf *arena, int fmt)
{
    int rc;
#define STEP(e)                                                                                 \
    do {                                                                                        \
        if ((rc = (e)) != 0) {                                                                  \
            return rc;                                                                          \
        }                                                                                       \
    } while (0)
    if (pi == NULL || !pi->ok || pi->n != r->nvals) {
        return 1;
    }
    f->has_link = 0;
    if (r->link != NULL && fmt == FMT_JSON) { /* --otlp's "activation" */
        STEP(flat_link(r->link, f));
    }
    f->pi = pi;
    f->is_return = r->is_return;
    f->is_async = r->is_async;
    f->nvals = r->nvals;
    f->raised = r->is_return && r->exc != NULL;
    PyCodeObject *co = (PyCodeObject *)r->code;
    f->file.s = NULL;
    if (co != NULL && fmt != FMT_CHROME) { /* (chrome shows no location) */
        if (fmt == FMT_JSON) { /* (text shows no file) */
            STEP(str_ascii(co->co_filename, &f->file) ? 0 : 1);
        }
        f->line = rec_line(r);
    }
    f->time_ns = r->time_ns;
    f->tid = (long long)r->tid;
    STEP(str_ascii(r->tname, &f->tname) ? 0 : 1);
    for (int i = 0; i < r->nvals; i++) {
        STEP(flat_value(r->vals[i], &f->vals[i], arena, fmt == FMT_TEXT));
        if (fmt == FMT_TEXT && pi->dur[i] && f->vals[i].tag >= JV_FLOAT) {
            return 1; /* (a duration is an int) */
        }
    }
    f->exc.s = NULL;
    if (r->is_return) {
        STEP(flat_value(r->retval, &f->retval, arena, fmt == FMT_TEXT));
        if (r->exc != NULL) {
            STEP(str_ascii(r->exc, &f->exc) ? 0 : 1);
            if (fmt == FMT_TEXT) {
                f->exc = exc_type(f->exc);
            }
        }
        f->duration = r->duration;
        f->module.s = NULL;
        if (co != NULL && fmt != FMT_CHROME) {
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

/* What step 2 keeps from one record to the next (within a chunk: step 3 moves lines). */
typedef struct {
    Str pid; /* JSON: ',"pid":N'; text: '-N [' */
    EscMemo file, tname, module, qual, probe, event;
} Memo;

#define STEP(e)                                                                                 \
    do {                                                                                        \
        if ((e) < 0) {                                                                          \
            return -1;                                                                          \
        }                                                                                       \
    } while (0)

static int
json_value(Buf *b, const JVal *v, const char *arena)
{
    switch (v->tag) {
    case JV_NONE: return BUF_LIT(b, "null");
    case JV_TRUE: return BUF_LIT(b, "true");
    case JV_FALSE: return BUF_LIT(b, "false");
    case JV_INT: return buf_int(b, v->i);
    case JV_FLOAT:
    case JV_JSON: return buf_put(b, arena + v->i, v->s.n);
    default: return buf_qstr(b, v->s);
    }
}

/* Step 2 for one record, JSON: its line. 0, or -1 (out of memory). No GIL needed. */
static int
flat_json(Buf *b, const Flat *f, Memo *memo, const char *arena)
{
    const PInfo *pi = f->pi;
    STEP(buf_put(b, pi->a.s, pi->a.n));
    if (f->file.s == NULL) {
        STEP(BUF_LIT(b, "\"?\""));
    }
    else {
        STEP(BUF_LIT(b, "\""));
        STEP(buf_esc_memo(b, f->file, &memo->file, buf_esc_json));
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
    STEP(buf_esc_memo(b, f->tname, &memo->tname, buf_esc_json));
    STEP(BUF_LIT(b, "\",\"args\":{"));
    for (int i = 0; i < f->nvals; i++) {
        if (i > 0) {
            STEP(BUF_LIT(b, ","));
        }
        STEP(buf_put(b, pi->keys[i].s, pi->keys[i].n));
        STEP(json_value(b, &f->vals[i], arena));
    }
    STEP(BUF_LIT(b, "}"));
    if (f->is_return) {
        STEP(BUF_LIT(b, ",\"retval\":"));
        STEP(json_value(b, &f->retval, arena));
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
            STEP(buf_esc_memo(b, f->module, &memo->module, buf_esc_json));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_esc_memo(b, f->qual, &memo->qual, buf_esc_json));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_int(b, f->line));
            STEP(BUF_LIT(b, "\""));
        }
        STEP(f->is_async ? BUF_LIT(b, ",\"is_async\":true") : BUF_LIT(b, ",\"is_async\":false"));
    }
    if (f->has_link) {
        STEP(BUF_LIT(b, ",\"activation\":["));
        for (int i = 0; i < 3; i++) {
            STEP(buf_int(b, f->link[i]));
            STEP(BUF_LIT(b, ","));
        }
        STEP(BUF_LIT(b, "\"\",\"\"]"));
    }
    return BUF_LIT(b, "}\n");
}

#if HAVE_FIXED
/* units.format_duration of an int number of ns: 850ns, 12.3us, 1.2ms, 2.50s. */
static int
text_duration(Buf *b, long long v)
{
    unsigned long long a = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0) {
        STEP(BUF_LIT(b, "-"));
    }
    if (a < 1000) {
        STEP(buf_uint(b, a, 1));
        return BUF_LIT(b, "ns");
    }
    unsigned long long q = fixed_scaled((double)a / 1e3, 1);
    if (q < 10000) {
        STEP(buf_fixed(b, q, 1));
        return BUF_LIT(b, "us");
    }
    q = fixed_scaled((double)a / 1e6, 1);
    if (q < 10000) {
        STEP(buf_fixed(b, q, 1));
        return BUF_LIT(b, "ms");
    }
    STEP(buf_fixed(b, fixed_scaled((double)a / 1e9, 2), 2));
    return BUF_LIT(b, "s");
}

static int
text_value(Buf *b, const JVal *v, int duration, const char *arena)
{
    switch (v->tag) {
    case JV_NONE: return BUF_LIT(b, "None");
    case JV_TRUE: return BUF_LIT(b, "True");
    case JV_FALSE: return BUF_LIT(b, "False");
    case JV_INT: return duration ? text_duration(b, v->i) : buf_int(b, v->i);
    case JV_FLOAT:
    case JV_JSON: return buf_put(b, arena + v->i, v->s.n);
    default: return buf_repr(b, v->s);
    }
}

/* Step 2 for one record, text: '{thread}-{pid} [{tid}] {secs}: {event}: ({where}) k=v ...'
 * with ' raised=TYPE' for a return that raised. 0, or -1 (out of memory). No GIL needed. */
static int
flat_text(Buf *b, const Flat *f, Memo *memo, const char *arena)
{
    const PInfo *pi = f->pi;
    STEP(buf_esc_memo(b, f->tname, &memo->tname, buf_esc_term));
    STEP(buf_put(b, memo->pid.s, memo->pid.n));
    STEP(buf_int(b, f->tid));
    STEP(BUF_LIT(b, "] "));
    long long t = f->time_ns;
    if (t < 0) {
        STEP(BUF_LIT(b, "-"));
    }
    double secs = (double)t / 1e9;
    STEP(buf_fixed(b, fixed_scaled(secs < 0 ? -secs : secs, 6), 6));
    STEP(BUF_LIT(b, ": "));
    STEP(buf_esc_memo(b, pi->a, &memo->event, buf_esc_term));
    STEP(BUF_LIT(b, ": ("));
    if (f->is_return) {
        if (f->module.s == NULL) {
            STEP(BUF_LIT(b, "?"));
        }
        else {
            STEP(buf_esc_memo(b, f->module, &memo->module, buf_esc_term));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_esc_memo(b, f->qual, &memo->qual, buf_esc_term));
            STEP(BUF_LIT(b, ":"));
            STEP(buf_int(b, f->line));
        }
        STEP(BUF_LIT(b, " <- "));
    }
    STEP(buf_esc_memo(b, pi->probe, &memo->probe, buf_esc_term));
    STEP(BUF_LIT(b, ")"));
    for (int i = 0; i < f->nvals; i++) {
        if (f->raised && pi->ret[i]) {
            continue; /* a return that raised has no value */
        }
        STEP(BUF_LIT(b, " "));
        STEP(buf_esc_term(b, pi->keys[i]));
        STEP(BUF_LIT(b, "="));
        STEP(text_value(b, &f->vals[i], pi->dur[i], arena));
    }
    if (f->raised && !pi->has_exc) {
        STEP(BUF_LIT(b, " raised="));
        STEP(buf_esc_term(b, f->exc));
    }
    return BUF_LIT(b, "\n");
}
#endif
/* --- Chrome trace events ----------------------------------------------------------------- */

/* a / 1000 as Python's int true division gives it: the double nearest the exact quotient
 * (ties to even). Below 2**53 that is one division of exact doubles (as CPython does it). */
static double
div1000(long long a)
{
    int neg = a < 0;
    unsigned long long u = neg ? 0ull - (unsigned long long)a : (unsigned long long)a;
    double d;
    if (u < (1ull << 53)) {
        d = (double)u / 1000.0;
    }
    else {
        int e = bit_length(u / 1000); /* 44..54: the quotient's bits */
        int s = 53 - e;                /* scale the quotient to 53 bits */
        unsigned __int128 n = s >= 0 ? (unsigned __int128)u << s : u;
        unsigned __int128 dv = s >= 0 ? 1000 : (unsigned __int128)1000 << -s;
        unsigned long long m = (unsigned long long)(n / dv);
        unsigned __int128 rem = n % dv;
        if (rem * 2 > dv || (rem * 2 == dv && (m & 1))) {
            m++;
        }
        d = ldexp((double)m, e - 53);
    }
    return neg ? -d : d;
}

/* The renderer's state (render_chrome.ChromeRenderer), kept in record order by step 1. */
typedef struct {
    PyObject *renderer;       /* borrowed */
    PyObject *names, *tids;   /* strong: its _thread_names and _tids dicts */
    long long async_ids, pid; /* its _async_ids; os.getpid() */
    int first;                /* its _first */
    long long memo_tid;       /* the last record's thread, whose name is memo_name's */
    PyObject *memo_name;      /* borrowed (a record holds it); NULL: none */
} Chrome;

#define MAX_TID 2147483647LL

static int
chrome_load(Chrome *c)
{
    PyObject *first = PyObject_GetAttrString(c->renderer, "_first");
    PyObject *ids = PyObject_GetAttrString(c->renderer, "_async_ids");
    c->names = PyObject_GetAttrString(c->renderer, "_thread_names");
    c->tids = PyObject_GetAttrString(c->renderer, "_tids");
    int rc = -1;
    if (first != NULL && ids != NULL && c->names != NULL && c->tids != NULL &&
        PyDict_Check(c->names) && PyDict_Check(c->tids)) {
        c->first = PyObject_IsTrue(first);
        c->async_ids = PyLong_AsLongLong(ids);
        rc = (c->first < 0 || PyErr_Occurred()) ? -1 : 0;
    }
    else if (!PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "take_chrome takes a ChromeRenderer");
    }
    Py_XDECREF(first);
    Py_XDECREF(ids);
    c->memo_name = NULL;
    return rc;
}

/* The renderer's _first and _async_ids as step 1 has them: 0, or -1. */
static int
chrome_store(Chrome *c)
{
    PyObject *ids = PyLong_FromLongLong(c->async_ids);
    int rc = ids == NULL ? -1 : PyObject_SetAttrString(c->renderer, "_async_ids", ids);
    Py_XDECREF(ids);
    if (rc == 0) {
        rc = PyObject_SetAttrString(c->renderer, "_first", c->first ? Py_True : Py_False);
    }
    return rc;
}

/* A (pid, thread_id) key of the renderer's dicts (new reference). */
static PyObject *
chrome_key(Chrome *c, long long tid)
{
    return Py_BuildValue("(LL)", c->pid, tid);
}

/* Step 1's chrome part for a record flat_chrome writes: 0, or -1 with an error. */
static int
chrome_flat(Chrome *c, Rec *r, Flat *f, Buf *arena)
{
    long long tid = f->tid;
    f->ctid = tid;
    if (tid < 0 || tid > MAX_TID) { /* a small number per trace, as ChromeRenderer._tid */
        PyObject *key = chrome_key(c, tid);
        PyObject *got = key != NULL ? PyDict_GetItemWithError(c->tids, key) : NULL;
        if (got == NULL && !PyErr_Occurred() && key != NULL) {
            PyObject *n = PyLong_FromSsize_t(PyDict_GET_SIZE(c->tids) + 1);
            if (n == NULL || PyDict_SetItem(c->tids, key, n) < 0) {
                Py_XDECREF(n);
                Py_DECREF(key);
                return -1;
            }
            got = n;
            Py_DECREF(n); /* (the dict holds it) */
        }
        Py_XDECREF(key);
        if (got == NULL || (f->ctid = PyLong_AsLongLong(got)) == -1) {
            return -1;
        }
    }
    f->meta = 0;
    if (c->memo_name != r->tname || c->memo_tid != tid) {
        PyObject *key = chrome_key(c, tid);
        if (key == NULL) {
            return -1;
        }
        PyObject *had = PyDict_GetItemWithError(c->names, key); /* borrowed */
        int same = had != NULL && PyUnicode_CheckExact(had) &&
                   PyUnicode_Compare(had, r->tname) == 0;
        if (PyErr_Occurred() || (!same && PyDict_SetItem(c->names, key, r->tname) < 0)) {
            Py_DECREF(key);
            return -1;
        }
        Py_DECREF(key);
        f->meta = !same;
        c->memo_tid = tid;
        c->memo_name = r->tname;
    }
    f->comma = !c->first;
    c->first = 0;
    f->dur_n = f->ets_n = 0;
    int slice = f->is_return && f->duration >= 0;
    f->ts = arena->n;
    if (buf_float_repr(arena, div1000(slice ? f->time_ns - f->duration : f->time_ns)) < 0) {
        return -1;
    }
    f->ts_n = arena->n - f->ts;
    if (slice && f->is_async) {
        f->async_id = ++c->async_ids;
        f->ets = arena->n;
        if (buf_float_repr(arena, div1000(f->time_ns)) < 0) {
            return -1;
        }
        f->ets_n = arena->n - f->ets;
    }
    else if (slice) {
        f->dur = arena->n;
        if (buf_float_repr(arena, div1000(f->duration)) < 0) {
            return -1;
        }
        f->dur_n = arena->n - f->dur;
    }
    return 0;
}

/* Step 1 for a record the fallback renders (now: the renderer's state moves in order):
 * its text into the arena. 0, or -1 with an error. */
static int
chrome_fallback(Chrome *c, Rec *r, Flat *f, Buf *arena, PyObject *fallback)
{
    if (chrome_store(c) < 0) {
        return -1;
    }
    PyObject *t = rec_tuple(r);
    PyObject *text = t != NULL ? PyObject_CallOneArg(fallback, t) : NULL;
    Py_XDECREF(t);
    Py_ssize_t len;
    const char *u = NULL;
    if (text != NULL && PyUnicode_Check(text)) {
        u = PyUnicode_AsUTF8AndSize(text, &len);
    }
    else if (text != NULL) {
        PyErr_SetString(PyExc_TypeError, "fallback gives a str");
    }
    int rc = -1;
    if (u != NULL) {
        f->fb = arena->n;
        rc = buf_put(arena, u, len);
        f->fb_n = len;
        if (rc < 0) {
            PyErr_NoMemory();
        }
    }
    Py_XDECREF(text);
    if (rc == 0) { /* what the renderer did, step 1 goes on from */
        Py_CLEAR(c->names);
        Py_CLEAR(c->tids);
        rc = chrome_load(c);
    }
    return rc;
}

static int
chrome_args(Buf *b, const Flat *f, const char *arena)
{
    const PInfo *pi = f->pi;
    STEP(BUF_LIT(b, ",\"args\":{"));
    for (int i = 0; i < f->nvals; i++) {
        if (i > 0) {
            STEP(BUF_LIT(b, ","));
        }
        STEP(buf_put(b, pi->keys[i].s, pi->keys[i].n));
        STEP(json_value(b, &f->vals[i], arena));
    }
    int any = f->nvals > 0;
    if (!(pi->cflags & CH_EVENT)) {
        STEP(any ? BUF_LIT(b, ",\"event\":") : BUF_LIT(b, "\"event\":"));
        STEP(buf_put(b, pi->ev.s, pi->ev.n));
        any = 1;
    }
    if (f->is_return && !(pi->cflags & CH_RETVAL)) {
        STEP(any ? BUF_LIT(b, ",\"retval\":") : BUF_LIT(b, "\"retval\":"));
        STEP(json_value(b, &f->retval, arena));
        any = 1;
    }
    if (f->is_return && !(pi->cflags & CH_EXC)) {
        STEP(any ? BUF_LIT(b, ",\"exception\":") : BUF_LIT(b, "\"exception\":"));
        STEP(f->exc.s != NULL ? buf_qstr(b, f->exc) : BUF_LIT(b, "null"));
    }
    return BUF_LIT(b, "}");
}

/* Step 2 for one record, chrome: its objects, each after ",\n" but the trace's first. */
static int
flat_chrome(Buf *b, const Flat *f, Memo *memo, const char *arena)
{
    if (f->fallback) {
        return buf_put(b, arena + f->fb, f->fb_n);
    }
    const PInfo *pi = f->pi;
    if (f->comma) {
        STEP(BUF_LIT(b, ",\n"));
    }
    if (f->meta) {
        STEP(BUF_LIT(b, "{\"name\":\"thread_name\",\"ph\":\"M\""));
        STEP(buf_put(b, memo->pid.s, memo->pid.n));
        STEP(BUF_LIT(b, ",\"tid\":"));
        STEP(buf_int(b, f->ctid));
        STEP(BUF_LIT(b, ",\"args\":{\"name\":\""));
        STEP(buf_esc_memo(b, f->tname, &memo->tname, buf_esc_json));
        STEP(BUF_LIT(b, "\"}},\n"));
    }
    int slice = f->is_return && f->duration >= 0;
    if (slice && f->is_async) {
        STEP(buf_put(b, pi->probe.s, pi->probe.n));
        STEP(BUF_LIT(b, ",\"id\":"));
        STEP(buf_int(b, f->async_id));
        STEP(BUF_LIT(b, ",\"ph\":\"b\",\"ts\":"));
    }
    else {
        STEP(buf_put(b, pi->a.s, pi->a.n));
        STEP(slice ? BUF_LIT(b, ",\"ph\":\"X\",\"ts\":")
                   : BUF_LIT(b, ",\"ph\":\"i\",\"s\":\"t\",\"ts\":"));
    }
    STEP(buf_put(b, arena + f->ts, f->ts_n));
    if (f->dur_n) {
        STEP(BUF_LIT(b, ",\"dur\":"));
        STEP(buf_put(b, arena + f->dur, f->dur_n));
    }
    STEP(buf_put(b, memo->pid.s, memo->pid.n));
    STEP(BUF_LIT(b, ",\"tid\":"));
    STEP(buf_int(b, f->ctid));
    STEP(chrome_args(b, f, arena));
    STEP(BUF_LIT(b, "}"));
    if (f->ets_n) {
        STEP(BUF_LIT(b, ",\n"));
        STEP(buf_put(b, pi->probe.s, pi->probe.n));
        STEP(BUF_LIT(b, ",\"id\":"));
        STEP(buf_int(b, f->async_id));
        STEP(BUF_LIT(b, ",\"ph\":\"e\",\"ts\":"));
        STEP(buf_put(b, arena + f->ets, f->ets_n));
        STEP(buf_put(b, memo->pid.s, memo->pid.n));
        STEP(BUF_LIT(b, ",\"tid\":"));
        STEP(buf_int(b, f->ctid));
        STEP(BUF_LIT(b, "}"));
    }
    return 0;
}

#undef STEP

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

/* take_json / take_text(statics, pid, fallback, keep=False, utf8=False)
 *   -> (text, {probe: n}, {probe: lost}, records or None); with utf8, the text as UTF-8 bytes
 *   (no decoding: a file opened as UTF-8 takes them as they are).
 * take_chrome(statics, pid, renderer, fallback, keep=False, utf8=False): the same, as the
 *   ChromeRenderer `renderer` writes them, its state kept (the fallback renders with it). */
static PyObject *
ring_take_lines(RingObj *ring, PyObject *args, PyObject *kwds, int fmt)
{
    static char *kwlist[] = {"statics", "pid", "fallback", "keep", "utf8", NULL};
    static char *kwlist_chrome[] = {"statics", "pid", "renderer", "fallback", "keep", "utf8",
                                    NULL};
    PyObject *statics, *fallback;
    long long pid;
    int keep = 0, utf8 = 0;
    Chrome chrome = {NULL};
    if (fmt == FMT_CHROME) {
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!LOO|pp:take_chrome", kwlist_chrome,
                                         &PyTuple_Type, &statics, &pid, &chrome.renderer,
                                         &fallback, &keep, &utf8)) {
            return NULL;
        }
        chrome.pid = pid;
        if (chrome_load(&chrome) < 0) {
            Py_XDECREF(chrome.names);
            Py_XDECREF(chrome.tids);
            return NULL;
        }
    }
    else if (!PyArg_ParseTupleAndKeywords(args, kwds,
                                          fmt == FMT_JSON ? "O!LO|pp:take_json"
                                                          : "O!LO|pp:take_text",
                                          kwlist, &PyTuple_Type, &statics, &pid, &fallback,
                                          &keep, &utf8)) {
        return NULL;
    }
    Py_ssize_t n;
    Rec *full = ring_swap(ring, &n);
    Buf b = {NULL, 0, 0}, arena = {NULL, 0, 0};
    char pidtext[48];
    /* (snprintf of an int has no locale) */
    snprintf(pidtext, sizeof pidtext, fmt != FMT_TEXT ? ",\"pid\":%lld" : "-%lld [", pid);
    PyObject *memo_code = NULL; /* borrowed: a record holds it */
    long memo_offset = 0, memo_line = 0;
    Py_ssize_t nprobes = ring->nprobes;
    long long *counts = PyMem_Calloc(nprobes > 0 ? nprobes : 1, sizeof(long long));
    PInfo *pinfo = PyMem_RawCalloc(nprobes > 0 ? nprobes : 1, sizeof(PInfo));
    Flat *flat = PyMem_RawMalloc(LINES_CHUNK * sizeof(Flat));
    Py_ssize_t *ends = PyMem_RawMalloc(LINES_CHUNK * sizeof(Py_ssize_t));
    PyObject *kept = keep ? PyList_New(0) : Py_NewRef(Py_None);
    PyObject *result = NULL, *text = NULL, *lost = NULL, *cdict = NULL;
    if (counts == NULL || pinfo == NULL || flat == NULL || ends == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (kept == NULL || pinfo_from(statics, pinfo, nprobes, fmt) < 0) {
        goto done;
    }
    if (fmt == FMT_TEXT && !HAVE_FIXED) {
        for (Py_ssize_t i = 0; i < nprobes; i++) {
            pinfo[i].ok = 0;
        }
    }
    for (Py_ssize_t at = 0; at < n; at += LINES_CHUNK) {
        Py_ssize_t m = n - at < LINES_CHUNK ? n - at : LINES_CHUNK;
        Rec *recs = full + at;
        int fallbacks = 0;
        arena.n = 0;
        for (Py_ssize_t k = 0; k < m; k++) { /* step 1 */
            Rec *r = &recs[k];
            if (r->lineno < 0 && r->code != NULL && fmt != FMT_CHROME) { /* a site's line */
                if (r->code == memo_code && r->offset == memo_offset) {
                    r->lineno = memo_line;
                }
                else {
                    memo_code = r->code;
                    memo_offset = r->offset;
                    memo_line = rec_line(r);
                }
            }
            int in = r->probe >= 0 && r->probe < nprobes;
            int rc = rec_flat(r, in ? &pinfo[r->probe] : NULL, &flat[k], &arena, fmt);
            if (rc < 0) {
                goto done;
            }
            flat[k].fallback = rc;
            if (fmt == FMT_CHROME) { /* (in order, for the state: no step 3) */
                rc = rc ? chrome_fallback(&chrome, r, &flat[k], &arena, fallback)
                        : chrome_flat(&chrome, r, &flat[k], &arena);
                if (rc < 0) {
                    goto done;
                }
            }
            else {
                fallbacks += rc;
            }
            if (in) {
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
            if (fmt == FMT_CHROME) {
                failed = flat_chrome(&b, &flat[k], &memo, arena.p) < 0;
            }
            else if (!flat[k].fallback) {
#if HAVE_FIXED
                failed = (fmt == FMT_JSON ? flat_json(&b, &flat[k], &memo, arena.p)
                                          : flat_text(&b, &flat[k], &memo, arena.p)) < 0;
#else
                failed = flat_json(&b, &flat[k], &memo, arena.p) < 0;
#endif
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
    if (text != NULL && cdict != NULL && lost != NULL &&
        (fmt != FMT_CHROME || chrome_store(&chrome) == 0)) {
        result = PyTuple_Pack(4, text, cdict, lost, kept);
    }
done:
    Py_XDECREF(chrome.names);
    Py_XDECREF(chrome.tids);
    if (full != NULL) {
        ring_give_back(ring, full, n);
    }
    PyMem_RawFree(b.p);
    PyMem_RawFree(arena.p);
    PyMem_RawFree(flat);
    PyMem_RawFree(ends);
    PyMem_RawFree(pinfo);
    PyMem_Free(counts);
    Py_XDECREF(text);
    Py_XDECREF(cdict);
    Py_XDECREF(lost);
    Py_XDECREF(kept);
    return result;
}

static PyObject *
ring_take_json(RingObj *ring, PyObject *args, PyObject *kwds)
{
    return ring_take_lines(ring, args, kwds, FMT_JSON);
}

static PyObject *
ring_take_text(RingObj *ring, PyObject *args, PyObject *kwds)
{
    return ring_take_lines(ring, args, kwds, FMT_TEXT);
}

static PyObject *
ring_take_chrome(RingObj *ring, PyObject *args, PyObject *kwds)
{
    return ring_take_lines(ring, args, kwds, FMT_CHROME);
}

/* text_numbers(ns) -> (format_duration(ns), f"{ns / 1e9:.6f}") as the text lines spell them:
 * for the tests that hold these spellings equal to the renderer's (HAVE_FIXED; else None). */
static PyObject *
text_numbers(PyObject *unused, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) {
        return NULL;
    }
#if HAVE_FIXED
    Buf d = {NULL, 0, 0}, s = {NULL, 0, 0};
    int rc = text_duration(&d, ns);
    if (rc == 0 && ns < 0) {
        rc = BUF_LIT(&s, "-");
    }
    double secs = (double)ns / 1e9;
    if (rc == 0) {
        rc = buf_fixed(&s, fixed_scaled(secs < 0 ? -secs : secs, 6), 6);
    }
    PyObject *r = rc < 0 ? PyErr_NoMemory()
                         : Py_BuildValue("(s#s#)", d.p, d.n, s.p, s.n);
    PyMem_RawFree(d.p);
    PyMem_RawFree(s.p);
    return r;
#else
    Py_RETURN_NONE;
#endif
}

/* chrome_micros(ns) -> ns / 1000 as take_chrome computes it (for the tests). */
static PyObject *
chrome_micros(PyObject *unused, PyObject *arg)
{
    long long ns = PyLong_AsLongLong(arg);
    if (ns == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyFloat_FromDouble(div1000(ns));
}

/* _state.c: the core's configuration (part of _speedups.c).
 *
 * Owns what ccore.setup() hands over and the interned names, in one place so that every
 * section below can read them. */

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

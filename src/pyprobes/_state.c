/* _state.c: the core's configuration and module state (part of _speedups.c).
 *
 * Owns what ccore.setup() hands over and the interned names, in two homes:
 *
 * - Process-wide statics for what a hit reads. sys.monitoring calls a Callback with the
 *   event's arguments only, so the hot path has no module to find a state in; a static is one
 *   load. These are the pending post tables, the context and instance types with their field
 *   offsets, the handler names the handler cache reads, the int 0 of a post handler call (and,
 *   in their own sections, the site table, the spare context, the handler cache's generation,
 *   the entry clock and the own-thread idents).
 * - The module state (SpeedupsState) for the cold rest: what only setup(), make_site, the
 *   fault path, disabling a location, the kretprobe reclaim and the lazy context reads use.
 *   setup() fills the state of the module it is called on and keeps that module for the life
 *   of the process (g_cfg points at its state; the statics above are never released either).
 *
 * Why one configured module per process: the statics are the process's, so a second
 * configuration would change what the first module's hits read. A module imported again
 * (sys.modules emptied) or in a legacy subinterpreter shares the statics and the configured
 * state, as the single-phase module it replaces did (its dict was a copy of the first one):
 * its setup() refuses, its other functions act on the configured state. Isolated (own-GIL)
 * subinterpreters are refused at import (Py_MOD_PER_INTERPRETER_GIL_SUPPORTED is not
 * declared), as before. */

typedef struct {
    PyObject *DISABLE;        /* sys.monitoring.DISABLE */
    PyObject *fault;          /* shared.fault(probe, ctx, exc) */
    PyObject *line_of;        /* context._line_of(code, offset) -> int | None */
    PyObject *disabled_codes; /* ccore's shared.CoreTables.disabled_codes: codes DISABLEd */
    int close_emits_nothing;  /* gh-140373 (3.13.0 - 3.14.0) */
    int watcher;              /* the dict watcher of the handler cache, or -1 (see Site) */
    /* interned attribute names of the cold code */
    PyObject *s_kind, *s_rstate, *s_counters, *s_f_lasti, *s_f_lineno, *s_clear;
    PyObject *s_co_qualname;
} SpeedupsState;

/* The configured module's state (NULL until setup()), and that module (strong, kept). */
static SpeedupsState *g_cfg = NULL;
static PyObject *g_cfg_module = NULL;

static PyObject *g_pending_insn;   /* shared.pending_insn: id(frame) -> (frame, posts, ctx) */
static PyObject *g_pending_line;   /* shared.pending_line */
static PyTypeObject *CtxType;      /* subclass of context.ProbeContext */
static PyTypeObject *RiType;       /* subclass of context.KretprobeInstance */
static Py_ssize_t ctx_off, ri_off; /* where our fields start (after the Python base's slots) */
static Py_ssize_t ctx_base_nslots, ri_base_nslots;

/* interned attribute names of the hot path */
static PyObject *s_pre_handler, *s_post_handler, *s_entry, *s_handler, *s_entry_handler;
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

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
 * FRAME TOKEN in _frames.c).
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

/* The core is one translation unit (so that the dispatch inlines what it calls), in sections
 * included in dependency order; each file says what it owns. */
#include "_frames.c"

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

#include "_state.c"
#include "_clock.c"
#include "_counters.c"
#include "_ptrmap.c"
#include "_context.c"
#include "_retprobe.c"
#include "_sites.c"
#include "_program.c" /* programs, event records and their rendering (_records.c, _render.c) */
#include "_dispatch.c"
#include "_module.c"

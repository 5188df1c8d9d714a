/* _frames.c: what the core reads of CPython's interpreter frames (part of _speedups.c).
 *
 * Owns the two version-guarded looks inside the interpreter: the FRAME TOKEN (which
 * interpreter frame a hit ran in, so ctx.frame can be found later without materialising a
 * frame object at the hit) and the CALLER OF A TOKEN (an event record's caller, read from the
 * interpreter frames). They are kept apart because they are the only code here that depends
 * on CPython's internal layouts, and the only code to revisit for a new CPython version. */

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

/* _dispatch.c: the hot path, the sys.monitoring callbacks (part of _speedups.c).
 *
 * Owns what runs at a hit: the handler calls and the fault path (pycore's _kprobe_pre,
 * _jprobe, _kret_entry, _kret_exit, the deferred post handlers), the set of pyprobes' own
 * threads, and the Callback objects' entry points (on_start, on_instruction, on_line,
 * on_return, on_yield, on_unwind). Everything it calls is inlined where marked HOT: the reason
 * the core is one translation unit. */

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
    PyObject *r = PyObject_Vectorcall(g_cfg->fault, args, 3, NULL);
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
                PEnv env = {ctx, 1, d, retval, exc, code, offset, -1, token, ri};
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
    if (cid == NULL || PySet_Add(g_cfg->disabled_codes, cid) < 0) {
        Py_XDECREF(cid);
        return callback_failed();
    }
    Py_DECREF(cid);
    return Py_NewRef(g_cfg->DISABLE);
}

/* INSTRUCTION and LINE: the same shape over offsets or lines. */
static PyObject *
on_place(PyObject *code, PyObject *where, int is_line)
{
    Site *site = site_of(code);
    if (site == NULL) {
        /* (events on before the table: ccore.publish) recorded, so that filing the table
         * restarts what this DISABLE turned off */
        return g_cfg != NULL ? disable_here(code) : Py_NewRef(Py_None);
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

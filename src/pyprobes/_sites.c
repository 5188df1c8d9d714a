/* _sites.c: Site, the dispatch table of a code object, and the handler cache (part of
 * _speedups.c).
 *
 * Owns the Site type (built by make_site from ccore's tables), the table of code object ->
 * Site (set_site, forget, clear_sites) and the handler cache each probe entry of a site
 * keeps: a probe's handler attributes read once from its __dict__ and kept until it changes. */

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
 * or for a class that defines a handler attribute, each hit reads the attribute instead.
 * The watcher's id is in the module state (g_cfg->watcher): only make_site reads it. */

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
    if (g_cfg->watcher >= 0 && PyDict_CheckExact(e->pdict) &&
        PyDict_Watch(g_cfg->watcher, e->pdict) < 0) {
        return -1;
    }
    e->ctr = counters_of(probe);
    if (e->ctr == NULL) {
        return -1;
    }
    PyObject *kind = PyObject_GetAttr(probe, g_cfg->s_kind);
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
        PyObject *rs = PyObject_GetAttr(probe, g_cfg->s_rstate);
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
    e->fast = !e->generic && g_cfg->watcher >= 0 && PyDict_CheckExact(e->pdict);
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
    if (g_cfg == NULL) {
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

/* _ptrmap.c: a pointer-keyed hash map (part of _speedups.c).
 *
 * Owns PtrMap, the table of code object -> Site and of a kretprobe's activations. Kept apart
 * because it is plain data-structure code with no Python semantics beyond strong references
 * to its values. */

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

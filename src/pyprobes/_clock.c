/* _clock.c: the clocks (part of _speedups.c).
 *
 * Owns now_ns() (time.perf_counter_ns()'s clock) and the entry clock of kretprobe instances
 * (the TSC where the kernel keeps CLOCK_MONOTONIC on it). Kept apart because it is the only
 * code that reads a hardware counter, and its error analysis is its own. */

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

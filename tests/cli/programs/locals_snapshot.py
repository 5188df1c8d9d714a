"""A function that keeps the dict locals() gave it (issue 18.7: a probe must not refresh it)."""


def f(a: int) -> tuple[int, list[str]]:
    x = 1
    d = locals()
    x = 2
    return d["x"], sorted(d)


print(f(0), f(0)[0] + 0 * len(str(f)))

"""100 calls of work(i), i = 0..99, each returning 2 * i."""


def work(i):
    return 2 * i


for i in range(100):
    work(i)
print("done")

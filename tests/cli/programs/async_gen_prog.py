"""Concurrent coroutines, an async generator and a generator consumed between plain calls."""

import asyncio


def square(x):
    return x * x


def numbers(n):
    for i in range(n):
        yield square(i)


def consume(n):
    total = 0
    for v in numbers(n):
        total += square(v)  # plain calls run while the generator is suspended
    return total


async def ticks(n):
    for i in range(n):
        await asyncio.sleep(0.001)
        yield square(i)


async def worker(i):
    await asyncio.sleep(0.001 * i)
    s = consume(3 + i)
    async for t in ticks(2):
        s += square(t)
    await asyncio.sleep(0.001)
    return s


async def main():
    out = await asyncio.gather(*(worker(i) for i in range(4)))
    print("results", out)


asyncio.run(main())

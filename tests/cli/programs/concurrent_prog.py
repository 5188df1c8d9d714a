"""100 asyncio handlers suspended at once inside the probed coroutine, and recursion 50 deep."""

import asyncio


async def handler(i: int, gate: asyncio.Event, arrived: list[int]) -> int:
    arrived.append(i)
    if len(arrived) == 100:
        gate.set()  # the last one in opens the gate: all 100 were in flight together
    await gate.wait()
    return i


async def serve() -> int:
    gate = asyncio.Event()
    arrived: list[int] = []
    results = await asyncio.gather(*(handler(i, gate, arrived) for i in range(100)))
    return sum(results)


def depth(n: int) -> int:
    return 0 if n == 0 else 1 + depth(n - 1)


print(asyncio.run(serve()), depth(49))

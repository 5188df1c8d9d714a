import asyncio


async def fetch(i, delay):
    await asyncio.sleep(delay)
    return i * 2


async def main():
    out = await asyncio.gather(*(fetch(i, 0.001 * i) for i in range(5)))
    print("gathered", out)


asyncio.run(main())

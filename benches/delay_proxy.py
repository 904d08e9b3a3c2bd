#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that holds every chunk for a fixed delay before
passing it on, in both directions: a KMS that far away, for benchmarks on
one machine (netem is not available everywhere). Chunks of one direction
keep their order; the delay is not cumulative.

    delay_proxy.py --listen PORT --upstream HOST:PORT --delay-ms 1
"""
import argparse
import asyncio


async def pump(reader, writer, delay):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, chunk = await queue.get()
            if chunk is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(forward())
    try:
        while chunk := await reader.read(65536):
            queue.put_nowait((loop.time() + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((0, None))
    await sender


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    a = p.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    delay = a.delay_ms / 1000

    async def handle(client_r, client_w):
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pump(client_r, up_w, delay), pump(up_r, client_w, delay))

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())

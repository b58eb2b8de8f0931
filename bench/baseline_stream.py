"""Baseline for the event latency: a bare consumer-group reader on a Redis stream.

    python bench/baseline_stream.py --redis-url URL --stream S --group G --results L

It reads like vmorch's router (redis.asyncio, XREADGROUP with BLOCK, COUNT 100, then XACK)
and does nothing else: for each entry it takes the time it got it and RPUSHes
"<sent> <received>" (the entry's field `t` and time.time()) on the list `--results`.
The bench creates the group before starting it, and stops it with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as aredis


async def main(args: argparse.Namespace) -> None:
    r = aredis.Redis.from_url(args.redis_url, decode_responses=True)
    await r.ping()
    print("ready", flush=True)
    try:
        while True:
            read = await r.xreadgroup(
                args.group, "reader", {args.stream: ">"}, count=100, block=1000
            )
            for _, batch in read:
                for sid, fields in batch:
                    got = time.time()
                    await r.rpush(args.results, f"{fields['t']} {got:.6f}")
                    await r.xack(args.stream, args.group, sid)
    finally:
        await r.aclose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--results", required=True)
    asyncio.run(main(ap.parse_args()))

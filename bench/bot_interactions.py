"""Discord interaction -> the bot's first response, for /fleet status and /fleet url.

A real fleet (daemon, control API over its socket) with one running stand-in instance owned by a Discord
user. The bot is the real FleetBot; Discord is tests/support/discord_gateway_recorder.py: each round feeds a raw
INTERACTION_CREATE payload to discord.py's own parser and times until the recorder receives the
interaction's initial response (POST /interactions/<id>/<token>/callback), which is what Discord's 3 s
deadline applies to. The two commands alternate round by round. The anchor is the control API call
alone, as the bot makes it (GET /v1/instances as that user, over the socket), in the same run.
Cooldowns are lifted for the run (Limits.unlimited()); everything else is as in production.
Target (issue: Discord bot): median <= 50 ms to the first response.
Run: .venv/bin/python bench/bot_interactions.py [--rounds 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.fleet import bench_fleet  # noqa: E402
from bench.machine import describe, percentile  # noqa: E402
from foundry_fleet.api.async_client import AsyncControlClient  # noqa: E402
from foundry_fleet.api.client import ControlClient  # noqa: E402
from foundry_fleet.bot.client import FleetBot  # noqa: E402
from foundry_fleet.bot.commands import Limits  # noqa: E402
from foundry_fleet.config import load_config  # noqa: E402
from foundry_fleet.wiring.services import make_bot_services, open_services  # noqa: E402
from tests.support.discord_gateway_recorder import DiscordGatewayRecorder, Person  # noqa: E402

PORT_LOW = 52400  # above the blocks the test suite draws from, apart from other benches
TENANT = Person(111111111111111111, "alice")
TARGET_MS = 50.0


async def measure(socket: Path, config_path: Path, rounds: int) -> dict[str, list[float]]:
    config = load_config(config_path)
    bot = FleetBot(config, make_bot_services(open_services(config, actor="bench")), httpx.AsyncHTTPTransport(uds=str(socket)),
                   limits=Limits.unlimited())
    recorder = DiscordGatewayRecorder()
    await recorder.login(bot)
    anchor_client = AsyncControlClient(httpx.AsyncHTTPTransport(uds=str(socket)))
    times: dict[str, list[float]] = {"status": [], "url": [], "api": []}
    try:
        for i in range(rounds + 10):  # the first 10 warm up connections and caches
            for command in ("status", "url"):
                record = recorder.feed(bot, recorder.slash(TENANT, command))
                await recorder.answered(record)
                assert record.initial == 4, (command, record.initial)
                if i >= 10:
                    times[command].append(record.latency or 0.0)
                await recorder.reply(record)
            t0 = time.perf_counter()
            mine = [v for v in await anchor_client.call(TENANT.sid, False, "GET", "/v1/instances")
                    if v["owner"] == TENANT.sid]
            if i >= 10:
                times["api"].append(time.perf_counter() - t0)
            assert [v["name"] for v in mine] == ["alice"]
        await recorder.drain()
        recorder.assert_clean()
    finally:
        await anchor_client.aclose()
        await bot.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    with bench_fleet("ff-bench-bot-", PORT_LOW) as fleet:
        client = ControlClient(fleet.socket, actor="bench")
        alice = client.create_instance(name="alice", release="13.345", owner=TENANT.sid, start=True)["instance"]
        client.close()
        assert alice["state"] == "running", alice
        times = asyncio.run(measure(fleet.socket, fleet.config, args.rounds))

    ms = 1000
    med = {k: statistics.median(v) * ms for k, v in times.items()}
    p90 = {k: percentile(v, 90) * ms for k, v in times.items()}
    print(f"machine: {describe()}")
    print(f"{args.rounds} rounds, a running stand-in instance; interaction fed -> initial response received")
    print(f"{'':<42} {'median':>9} {'p90':>9}")
    print(f"{'/fleet status (ephemeral, via control API)':<42} {med['status']:>6.2f} ms {p90['status']:>6.2f} ms")
    print(f"{'/fleet url (public, via control API)':<42} {med['url']:>6.2f} ms {p90['url']:>6.2f} ms")
    print(f"{'anchor: the control API call alone':<42} {med['api']:>6.2f} ms {p90['api']:>6.2f} ms")
    for key in ("status", "url"):
        print(f"/fleet {key}: {med[key] - med['api']:+.2f} ms beyond the API call ({med[key] / med['api']:.2f}x)")
    worst = max(med["status"], med["url"])
    verdict = "PASS" if worst <= TARGET_MS else "FAIL"
    print(f"target median <= {TARGET_MS:.0f} ms to the first response: {verdict} ({worst:.2f} ms)")


if __name__ == "__main__":
    main()

"""The tests' own port blocks: a fleet never gets the block lone servers are being given ports from."""

from __future__ import annotations

from tests.support import ports


def test_a_whole_round_of_blocks_passes_over_the_one_single_ports_come_from() -> None:
    port = ports.single_port()
    held = ports._singles_block
    assert held is not None and held <= port < held + 100

    # Every block of this worker's share comes round once in this many draws; the held one must not.
    share = len(ports._worker_share(list(range(10000, ports._ephemeral_start() - 100, 100))))
    given = [ports.port_block() for _ in range(share)]
    assert held not in given

    # And the next single port still comes from the block it was holding.
    assert held <= ports.single_port() < held + 100

"""Where each Nomad node keeps the fleet's data: what decides how `instance move` takes an instance's
data from one node to another.

Today every node sees the one fleet root ([nomad] node_root: a pool shared over NFS, or nodes on one
host), so an instance moves between any two nodes by registering its host volumes on the new node and
pinning its job there: its files stay where they are. Nodes with a pool of their own would need the
data sent (ZFS `send -I` of its snapshots over the fleet's replication, or restic for directory
storage), which the fleet does not do yet. A per-node storage setting, once there is one, is read
here: nodes naming different storages are then refused by the move (services/node_choice.py,
checked_move) until sending the data is added there.
"""

from __future__ import annotations

SHARED_ROOT = "the fleet root every node shares ([nomad] node_root)"


def storage_of(node_name: str) -> str:
    """The storage a node keeps instances' data on; nodes with the same answer see the same files."""
    return SHARED_ROOT  # no per-node storage setting yet: every node shares the fleet root

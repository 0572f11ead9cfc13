"""What an instance's data directory holds, by name: the one place that spells Foundry's folders out.

Paths are relative to the instance's data directory (Foundry's `--dataPath`) and use `/`; join them
with `data_dir / OPTIONS`. Foundry itself decides most of this layout; the fleet adds `Data/shared`.
"""

from __future__ import annotations

from pathlib import PurePosixPath

CONFIG = PurePosixPath("Config")
DATA = PurePosixPath("Data")  # what Foundry serves; the tenant's worlds, assets and modules
LOGS = PurePosixPath("Logs")
BACKUPS = PurePosixPath("Backups")  # Foundry's own backups folder (v11+), not the fleet's snapshots

# The mount point of the fleet's shared assets (read-only in the sandbox; a link without one). It lies
# under Data/ because Foundry serves nothing outside it. Root's, never the tenant's; never snapshotted.
SHARED_MOUNT = DATA / "shared"

OPTIONS = CONFIG / "options.json"  # where Foundry listens and which proxy it sits behind
LICENSE = CONFIG / "license.json"  # the tenant's licence key
ADMIN_PASSWORD = CONFIG / "admin.txt"  # the hash of the instance's admin password

# Made at creation, parents first.
FOLDERS = (CONFIG, DATA, LOGS, BACKUPS, SHARED_MOUNT)


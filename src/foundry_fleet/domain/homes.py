"""Homes: the storage instances' data is kept on ([[nomad.homes]]), named; the fleet's own is MAIN_HOME.

Pure names, shared by the configuration, the store, the storage drivers and a node's provisioning
payload, so every layer spells them alike."""

from __future__ import annotations

import re

MAIN_HOME = "fleet"  # the fleet's own home: its root, and every node listed in no [[nomad.homes]]
HOME_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")  # fits instances.home and moves' String(40)

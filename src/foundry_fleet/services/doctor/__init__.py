"""`foundry-fleet doctor`: the host checked as an operator would before going live and after an upgrade.

Each concern is one module that turns what the drivers and the host report into `Check` values (a
name, pass / warn / fail / skip, one line of detail and one line a person can act on); the wiring
(wiring/doctor.py) gathers what they need, the CLI renders them. A check that does not apply to this
fleet (no public domain, directory storage, another runtime) is a skip, which fails nothing.
"""

from foundry_fleet.services.doctor.report import Check, DoctorReport, Status

__all__ = ["Check", "DoctorReport", "Status"]

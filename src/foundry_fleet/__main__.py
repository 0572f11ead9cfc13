"""`python -m foundry_fleet`: the command line, as Nomad's fvtt-provision job runs it on every node."""

import sys

from foundry_fleet.cli.nomad_provision import serve_job_line

# Every node runs every provisioning dispatch and all but one only say "not this node": the job's own
# command line is served before the rest of the command line is imported (it exits when it was that).
serve_job_line(sys.argv[1:])

from foundry_fleet.cli.main import main  # noqa: E402 - only after the provisioning job's line was served

main()

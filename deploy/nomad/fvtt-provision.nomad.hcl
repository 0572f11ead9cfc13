# fvtt-provision: lays out one instance (storage, release install tree, exec user) on a node.
#
# Dispatched by the fleet with meta instance, release and node and a JSON payload; a sysbatch child
# runs on every eligible node and only the one named in meta `node` acts. Needs raw_exec enabled
# on the clients (it creates datasets, directories and users).
#
# Generated from foundry_fleet/runtime/nomad/jobs.py by `foundry-fleet nomad render --write-deploy DIR`
# (a test keeps it current), with example settings: fleet id 0123abcd, fleet root /srv/foundry-fleet,
# foundry-fleet installed in /opt/foundry-fleet, namespace "default", every datacenter. The fleet
# submits this job itself with its own settings; `foundry-fleet nomad render` prints them.

job "fvtt-provision" {
  type        = "sysbatch"
  namespace   = "default"
  datacenters = ["*"]
  meta {
    fvtt_fleet = "0123abcd"
  }
  parameterized {
    payload       = "required"
    meta_required = ["instance", "release", "node"]
  }
  group "provision" {
    count = 1
    restart {
      attempts = 0
      interval = "5m"
      delay    = "15s"
      mode     = "fail"
    }
    task "provision" {
      driver = "raw_exec"
      config {
        command = "/opt/foundry-fleet/bin/python"
        args = [
          "-m",
          "foundry_fleet",
          "nomad",
          "provision",
          "--config",
          "/srv/foundry-fleet/fleet.toml",
          "--node-id",
          "${node.unique.id}",
          "--payload",
          "${NOMAD_TASK_DIR}/payload.json",
        ]
      }
      resources {
        cpu    = 500
        memory = 512
      }
      kill_timeout = "10s"
      dispatch_payload {
        file = "payload.json"
      }
    }
  }
}

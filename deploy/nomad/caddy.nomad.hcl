# fvtt-caddy: the fleet's edge as a Nomad service job ([edge] on_nomad = true).
#
# No template: the fleet configures Caddy through its admin API (the unix socket below) as it
# does its own Caddy, keeping stream_close_delay on every change, so no player's websocket is
# closed by a reload. `caddy run --resume` starts with the last configuration the fleet pushed.
#
# Generated from foundry_fleet/runtime/nomad/jobs.py by `foundry-fleet nomad render --write-deploy DIR`
# (a test keeps it current), with example settings: fleet id 0123abcd, fleet root /srv/foundry-fleet,
# foundry-fleet installed in /opt/foundry-fleet, namespace "default", every datacenter. The fleet
# submits this job itself with its own settings; `foundry-fleet nomad render` prints them.

job "fvtt-caddy" {
  type        = "service"
  namespace   = "default"
  datacenters = ["*"]
  meta {
    fvtt_fleet = "0123abcd"
  }
  group "caddy" {
    count = 1
    network {
      mode = "host"
      port "http" {
        static = 80
      }
      port "https" {
        static = 443
      }
    }
    restart {
      attempts = 5
      interval = "10m"
      delay    = "1s"
      mode     = "delay"
    }
    task "caddy" {
      driver = "raw_exec"
      config {
        command = "/opt/foundry-fleet/bin/caddy"
        args    = ["run", "--resume"]
      }
      env {
        CADDY_ADMIN     = "unix//srv/foundry-fleet/run/caddy-admin.sock"
        HOME            = "/srv/foundry-fleet/edge"
        XDG_DATA_HOME   = "/srv/foundry-fleet/edge/data"
        XDG_CONFIG_HOME = "/srv/foundry-fleet/edge/config"
      }
      resources {
        cpu    = 500
        memory = 512
      }
      kill_timeout = "10s"
    }
  }
}

# The NixOS module: `services.foundry-fleet`, the fleet's daemon (`foundry-fleet up`) as a systemd
# service, its fleet.toml rendered from options, secrets handed over as systemd credentials.
#
# The fleet root is /var/lib/foundry-fleet (the unit's StateDirectory). fleet.toml lives in the Nix
# store and names that root explicitly; `up` needs nothing that `foundry-fleet init` would have made
# (it creates state/, run/, logs/ and the storage layout itself), so no init step runs here.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.foundry-fleet;
  settingsFormat = pkgs.formats.toml { };

  # Fixed: StateDirectory= can only name a directory under /var/lib, and disko.nix mounts the fleet's
  # base dataset here.
  root = "/var/lib/foundry-fleet";

  # The [Service] settings the fleet's own unit (`foundry-fleet service install`) carries too: one
  # source for both, so the hardening cannot drift apart. Values are strings or lists of strings.
  unitSettingsFile = builtins.fromJSON (builtins.readFile ../src/foundry_fleet/deploy/unit_settings.json);

  # Secrets are named by path, as strings. A Nix path value (`./discord-token`) would be copied into
  # the world-readable Nix store when the configuration is built, so it is refused, and so is a string
  # that already points into the store.
  secretPath = lib.mkOptionType {
    name = "secretPath";
    description = "absolute path of a file outside the Nix store, as a string";
    descriptionClass = "noun";
    check =
      p: builtins.isString p && lib.hasPrefix "/" p && !lib.hasPrefix "${builtins.storeDir}/" p;
    merge = lib.mergeEqualOption;
  };

  # TOML has no null: keys left null by the options are left out of fleet.toml (the fleet's default).
  dropNulls =
    v:
    if builtins.isAttrs v && !lib.isDerivation v then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: x: x != null) v)
    else if builtins.isList v then
      map dropNulls (builtins.filter (x: x != null) v)
    else
      v;

  fleetToml = dropNulls cfg.settings;

  # The credentials contract with the fleet's configuration loader: each secret fleet.toml names is
  # also loaded by systemd under a fixed name, and the daemon, seeing $CREDENTIALS_DIRECTORY/<name>,
  # reads it from there (a copy only this service can read) rather than from the configured path.
  secrets =
    let
      key = section: name: fleetToml.${section}.${name} or null;
      one =
        credential: section: name:
        lib.optional (key section name != null) {
          inherit credential;
          setting = "${section}.${name}";
          path = key section name;
        };
    in
    one "discord-token" "discord" "token_file"
    ++ one "discord-client-secret" "discord" "client_secret_file"
    ++ one "nomad-token" "nomad" "token_file"
    ++ map (d: {
      credential = "restic-password-${d.name}";
      setting = "backups.destinations.${d.name}.password_file";
      path = d.password_file;
    }) (builtins.filter (d: d ? password_file) (fleetToml.backups.destinations or [ ]));

  usesZfs = fleetToml.storage.driver or "directory" == "zfs";
  runtimeDriver = fleetToml.runtime.driver or "local";
  usesPodman = runtimeDriver == "podman" || runtimeDriver == "nomad";

  # The file's `service` settings, then for the podman runtime its `podman` ones, combined as systemd
  # reads them one after the other: a list adds to the same setting's list, a string replaces it.
  sharedUnitSettings = lib.zipAttrsWith
    (_name: values: if lib.all lib.isList values then lib.concatLists values else lib.last values)
    ([ unitSettingsFile.service ] ++ lib.optional usesPodman unitSettingsFile.podman);
  cacheDir = fleetToml.releases.cache_dir or null;

  destinationModule = {
    options = {
      name = mkOption {
        type = types.strMatching "[a-z0-9][a-z0-9-]{0,39}";
        description = "The destination's name (lowercase letters, digits, dashes).";
        example = "offsite";
      };
      target = mkOption {
        type = types.nonEmptyStr;
        description = ''
          ZFS storage: a dataset here (POOL/PATH) or over ssh ([user@]host:POOL/PATH).
          Directory storage: a restic repository (a path or any restic URL).
        '';
        example = "backup@backup.example.org:tank/foundry";
      };
      plan = mkOption {
        type = types.nonEmptyStr;
        description = "What the destination keeps, in znapzend's syntax.";
        example = "30d=>1d,1y=>1w";
      };
      instances = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Only these instances; empty: all.";
      };
      passwordFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        description = "restic: the repository's password. Loaded as the credential `restic-password-<name>`.";
        example = "/run/secrets/restic-offsite";
      };
      sshCommand = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "ZFS over ssh: the ssh to run (default `[ \"ssh\" ]`).";
        example = [
          "ssh"
          "-i"
          "/etc/foundry-fleet/backup-key"
        ];
      };
    };
  };

  renderDestination = d: {
    inherit (d) name target plan instances;
    password_file = d.passwordFile;
    ssh_command = d.sshCommand;
  };
in
{
  options.services.foundry-fleet = {
    enable = mkEnableOption "foundry-fleet, which hosts Foundry Virtual Tabletop for many game masters on one server";

    package = mkOption {
      type = types.package;
      description = "The foundry-fleet package (the flake's module sets its own build).";
    };

    caddyPackage = mkOption {
      type = types.package;
      default = pkgs.caddy;
      defaultText = lib.literalExpression "pkgs.caddy";
      description = "The Caddy the fleet runs as its edge (2.11.2 or newer; the daemon checks at start).";
    };

    nodePackage = mkOption {
      type = types.package;
      default = pkgs.nodejs;
      defaultText = lib.literalExpression "pkgs.nodejs";
      description = ''
        The Node.js instances run with when no per-major binary is set
        (`settings.node.binaries."14" = "''${pkgs.nodejs_24}/bin/node"`).
      '';
    };

    domain = mkOption {
      type = types.str;
      description = "Tenants reach their instance at `https://<instance>.<domain>/-/`.";
      example = "games.example.org";
    };

    tls = mkOption {
      type = types.enum [
        "internal"
        "acme"
        "on-demand"
      ];
      default = "acme";
      description = ''
        internal: a local CA; acme: Let's Encrypt (a public domain, ports 80 and 443);
        on-demand: certificates only for hostnames of existing instances.
      '';
    };

    acmeEmail = mkOption {
      type = types.str;
      default = "";
      description = "The e-mail address of the ACME account (expiry notices).";
      example = "admin@example.org";
    };

    httpPort = mkOption {
      type = types.port;
      default = 80;
      description = "The edge's HTTP port.";
    };

    httpsPort = mkOption {
      type = types.port;
      default = 443;
      description = "The edge's HTTPS port (TCP, and UDP for HTTP/3).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the edge's ports in the firewall.";
    };

    leaveRunning = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Instances (and the edge) keep running when the daemon stops or restarts, and the next daemon
        adopts them: a `nixos-rebuild switch` that restarts the service does not disconnect players.
        False: stopping the service stops every instance.
      '';
    };

    storage = {
      driver = mkOption {
        type = types.enum [
          "directory"
          "zfs"
        ];
        default = "directory";
        description = "directory: plain directories under the fleet root. zfs: datasets under `storage.zfsBase`.";
      };
      zfsBase = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "POOL or POOL/PATH holding the fleet's datasets (see nix/disko.nix).";
        example = "fleet/foundry";
      };
    };

    runtime = mkOption {
      type = types.enum [
        "local"
        "podman"
        "nomad"
      ];
      default = "local";
      description = "What runs the instances: local (bubblewrap), podman (containers) or nomad (Nomad jobs).";
    };

    uidRange = mkOption {
      type = types.addCheck (types.listOf types.ints.unsigned) (
        r: builtins.length r == 2 && builtins.elemAt r 0 <= builtins.elemAt r 1
      );
      # NixOS gives each normal user 65536 subordinate ids counting up from 100000, so the fleet's
      # default block (200000-265535) would overlap the second user's; this one is far above them.
      default = [
        1879048192
        1879113727
      ];
      description = ''
        The uids instances run as ([instances] uid_range): no user, group, /etc/subuid range or other
        fleet of this host may use them (the daemon refuses to start otherwise, and suggests a free block).
      '';
    };

    discord = {
      tokenFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        description = "The bot token. Set: `up` starts the Discord bot. Loaded as the credential `discord-token`.";
        example = "/run/secrets/discord-token";
      };
      clientSecretFile = mkOption {
        type = types.nullOr secretPath;
        default = null;
        description = "OAuth2 client secret (backup sign-in). Loaded as the credential `discord-client-secret`.";
        example = "/run/secrets/discord-client-secret";
      };
      adminUsers = mkOption {
        type = types.listOf (types.strMatching "[0-9]{15,21}");
        default = [ ];
        description = "Discord user ids that are always fleet admins.";
        example = [ "123456789012345678" ];
      };
    };

    nomad.tokenFile = mkOption {
      type = types.nullOr secretPath;
      default = null;
      description = "runtime nomad: the ACL token. Loaded as the credential `nomad-token`.";
    };

    backups = {
      plan = mkOption {
        type = types.str;
        default = "7d=>1h,30d=>1d,1y=>1w";
        description = "Snapshots of every instance's data, in znapzend's syntax (retention=>interval,...).";
      };
      destinations = mkOption {
        type = types.listOf (types.submodule destinationModule);
        default = [ ];
        description = "Copies of the snapshots elsewhere, each kept by its own plan.";
      };
    };

    limits = {
      memoryMB = mkOption {
        type = types.ints.between 64 1048576;
        default = 2048;
        description = "Memory per instance, in MB.";
      };
      cpuPercent = mkOption {
        type = types.ints.positive;
        default = 100;
        description = "CPU per instance; 100 is one core.";
      };
      pids = mkOption {
        type = types.ints.between 16 4194304;
        default = 512;
        description = "Processes and threads per instance.";
      };
      diskMB = mkOption {
        type = types.ints.unsigned;
        default = 0;
        description = "Each instance's data and snapshots together, in MB; 0: no limit.";
      };
    };

    settings = mkOption {
      type = types.submodule { freeformType = settingsFormat.type; };
      default = { };
      description = ''
        fleet.toml, as Nix values: any key the fleet takes (see `foundry-fleet init`'s commented
        fleet.toml). The options above are written into it; keys they do not cover go here, e.g.
        `settings.discord.guild_id`. Secret files belong in the options above, which load them as
        systemd credentials.
      '';
      example = lib.literalExpression ''
        {
          discord.guild_id = "123456789012345678";
          supervisor.health_interval = 30.0;
        }
      '';
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = settingsFormat.generate "fleet.toml" fleetToml;
      defaultText = lib.literalMD "fleet.toml rendered from `settings`";
      description = "The rendered fleet.toml (in the Nix store; also at /etc/foundry-fleet/fleet.toml).";
    };
  };

  config = mkIf cfg.enable {
    services.foundry-fleet.settings = {
      fleet = {
        inherit root;
        inherit (cfg) domain;
      };
      edge = {
        inherit (cfg) tls;
        acme_email = cfg.acmeEmail;
        http_port = cfg.httpPort;
        https_port = cfg.httpsPort;
        caddy_binary = lib.mkDefault "${cfg.caddyPackage}/bin/caddy";
      };
      node.default = lib.mkDefault "${cfg.nodePackage}/bin/node";
      storage = {
        inherit (cfg.storage) driver;
        zfs_base = mkIf (cfg.storage.zfsBase != null) cfg.storage.zfsBase;
      };
      runtime.driver = cfg.runtime;
      instances.uid_range = cfg.uidRange;
      limits = {
        memory_mb = cfg.limits.memoryMB;
        cpu_percent = cfg.limits.cpuPercent;
        inherit (cfg.limits) pids;
        disk_mb = cfg.limits.diskMB;
      };
      backups = {
        inherit (cfg.backups) plan;
        destinations = map renderDestination cfg.backups.destinations;
      };
      discord = {
        token_file = mkIf (cfg.discord.tokenFile != null) cfg.discord.tokenFile;
        client_secret_file = mkIf (cfg.discord.clientSecretFile != null) cfg.discord.clientSecretFile;
        admin_users = cfg.discord.adminUsers;
      };
      nomad = mkIf (cfg.nomad.tokenFile != null) { token_file = cfg.nomad.tokenFile; };
    };

    assertions =
      [
        {
          assertion = usesZfs -> fleetToml.storage ? zfs_base;
          message = "services.foundry-fleet.storage.driver = \"zfs\" needs services.foundry-fleet.storage.zfsBase (POOL[/PATH]).";
        }
        {
          assertion = fleetToml.fleet.root == root;
          message = "services.foundry-fleet: the fleet root is ${root} (the service's StateDirectory); leave settings.fleet.root alone.";
        }
      ]
      ++ map (s: {
        assertion = secretPath.check s.path;
        message = "services.foundry-fleet.settings.${s.setting} must be an absolute path outside the Nix store, as a string (it is loaded as the credential ${s.credential}).";
      }) secrets;

    environment.systemPackages = [ cfg.package ];
    # For the CLI (`foundry-fleet status`) and for Nomad's provisioning job, which reads it there.
    environment.etc."foundry-fleet/fleet.toml".source = cfg.configFile;
    environment.variables.FOUNDRY_FLEET_CONFIG = "/etc/foundry-fleet/fleet.toml";

    networking.firewall = mkIf cfg.openFirewall {
      allowedTCPPorts = [
        cfg.httpPort
        cfg.httpsPort
      ];
      allowedUDPPorts = [ cfg.httpsPort ];
    };

    systemd.services.foundry-fleet = {
      description = "foundry-fleet: Foundry VTT instances for many game masters";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      # With ZFS storage the pool must be imported and its datasets mounted before the daemon looks
      # at them, or it would lay a fresh fleet out in the empty directory under the mountpoint.
      requires = lib.optionals usesZfs [ "zfs-mount.service" ];
      after =
        [ "network-online.target" ]
        ++ lib.optionals usesZfs [
          "zfs-import.target"
          "zfs-mount.service"
        ];

      # The fleet root may be a mount of its own (nix/disko.nix makes it one).
      unitConfig.RequiresMountsFor = [ root ];

      # What the daemon runs: the sandbox, its network and firewall, uid switching, backups.
      path =
        [
          pkgs.bubblewrap
          pkgs.slirp4netns
          pkgs.iptables
          pkgs.util-linux
          pkgs.procps
          pkgs.restic
          pkgs.openssh
        ]
        ++ lib.optional usesZfs config.boot.zfs.package
        ++ lib.optionals (runtimeDriver == "podman" || runtimeDriver == "nomad") [
          pkgs.podman
          pkgs.conmon
          pkgs.catatonit
        ];

      # Merged, not overlaid: a setting the shared file and this module both give must agree (lists
      # add up), so a later change to the shared file cannot silently lose to this module.
      serviceConfig = lib.mkMerge [
        sharedUnitSettings
        {
          ExecStart = lib.concatStringsSep " " (
            [
              "${cfg.package}/bin/foundry-fleet"
              "--config"
              "${cfg.configFile}"
              "up"
            ]
            ++ lib.optional cfg.leaveRunning "--leave-running"
          );
          # `systemctl reload`: the daemon reads fleet.toml again on SIGHUP (as `foundry-fleet reload`).
          ExecReload = "${pkgs.util-linux}/bin/kill -HUP $MAINPID";
          StateDirectory = "foundry-fleet";
          # The local runtime keeps the instances' network namespaces under /run/foundry-fleet; with
          # leaveRunning the instances outlive the daemon, and so must that directory.
          # Podman's run state and network namespaces live under /run too, and outlive a stop for
          # podman's own commands.
          RuntimeDirectory = lib.concatStringsSep " " ([ "foundry-fleet" ] ++ lib.optionals usesPodman [
            "containers"
            "libpod"
            "netns"
            "crun" # the OCI runtimes' state
            "runc"
          ]);
          RuntimeDirectoryPreserve = if cfg.leaveRunning || usesPodman then "yes" else "no";
          ReadWritePaths =
            [ root ]
            ++ lib.optional (cacheDir != null) cacheDir
            ++ lib.optionals usesPodman [
              # "-": ignored where missing
              "-/var/lib/containers"
              "-/etc/containers/networks"
              "-/var/tmp"
            ];
          LoadCredential = map (s: "${s.credential}:${s.path}") secrets;
        }
      ];
    };
  };
}

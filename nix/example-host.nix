# An example host: a public fleet on ZFS (the pool laid out by nix/disko.nix), the Discord bot and
# backup sign-in, and an offsite copy of every snapshot. Secrets are files outside the Nix store (here
# as sops-nix or agenix would place them); the service receives them as systemd credentials.
{ ... }:
{
  networking.hostId = "8425e349"; # ZFS needs one; any 8 hex digits unique among your hosts
  boot.supportedFilesystems = [ "zfs" ];

  services.foundry-fleet = {
    enable = true;
    domain = "games.example.org";
    tls = "acme";
    acmeEmail = "admin@example.org";
    openFirewall = true;

    storage = {
      driver = "zfs";
      zfsBase = "fleet/foundry"; # nix/disko.nix: pool "fleet", dataset "foundry"
    };
    runtime = "local";

    discord = {
      tokenFile = "/run/secrets/discord-token";
      clientSecretFile = "/run/secrets/discord-client-secret";
      adminUsers = [ "123456789012345678" ];
    };

    backups = {
      plan = "7d=>1h,30d=>1d,1y=>1w";
      destinations = [
        {
          name = "offsite";
          target = "backup@backup.example.org:tank/foundry";
          plan = "30d=>1d,1y=>1w";
          sshCommand = [
            "ssh"
            "-i"
            "/etc/foundry-fleet/backup-key"
          ];
        }
      ];
    };

    limits = {
      memoryMB = 3072;
      cpuPercent = 200;
      diskMB = 20480;
    };

    settings = {
      discord.guild_id = "123456789012345678";
      discord.client_id = "123456789012345678";
      supervisor.health_interval = 30.0;
    };
  };
}

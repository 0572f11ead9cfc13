"""Tenants' file access over SFTP: an asyncssh server that offers only the SFTP subsystem."""

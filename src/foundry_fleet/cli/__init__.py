"""The command line: parse, call the service layer or the daemon, render."""

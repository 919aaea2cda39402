"""The command line: the daemon's commands and the client commands that talk to a running daemon."""

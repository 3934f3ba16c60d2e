"""Front ends: the command line, the foreground agent, the live view, the service
installer."""

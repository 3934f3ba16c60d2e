"""The control plane: tasks and their settings from the config file, the daemon,
its control socket and the metrics endpoint."""

"""The ComputeSource ABC and the toolkit sources are built from: the registry, environment
preparation, batching, the remote-host protocol, one command runner, GPU pins.  Over spec and model."""

"""vmshift: a Kubernetes operator that runs a fleet of hypervisor hosts."""

__version__ = "0.1.0"

"""The RemoteGPU host agent: dials out to the control plane, reports the host, runs commands."""

__version__ = "0.1.0"

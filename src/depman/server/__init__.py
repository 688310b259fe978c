"""The control plane HTTP server."""

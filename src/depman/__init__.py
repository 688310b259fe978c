"""depman: model dependency manager for fleets of ComfyUI GPU instances."""

__version__ = "0.1.0"

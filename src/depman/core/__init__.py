"""Domain logic of the control plane: no HTTP here; functions take `*, session`."""

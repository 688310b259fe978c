"""depman node agent: fetches model files for one ComfyUI instance (standard library only)."""

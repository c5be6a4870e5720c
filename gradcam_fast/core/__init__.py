"""The Grad-CAM graph: the traced network with its backward written out as forward ops (VJP rules)."""

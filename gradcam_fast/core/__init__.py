"""The Grad-CAM graph: the traced network with its backward written out (VJP rules)."""

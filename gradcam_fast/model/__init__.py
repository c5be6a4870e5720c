"""Loading CNNs (torchvision's or a caller's), their names, and tracing them to the target."""

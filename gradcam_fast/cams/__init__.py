"""The CAM arithmetic on activation and gradient tensors (methods, upsampling); imports nothing of the package."""

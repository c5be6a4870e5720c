"""The CAM arithmetic on activations and gradients (methods, upsampling); no package imports."""

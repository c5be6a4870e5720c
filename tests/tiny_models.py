"""The tiny VGG of the tests, by the short name test files import it with."""

from gradcam_fast.testing import make_tiny_vgg

__all__ = ["make_tiny_vgg"]

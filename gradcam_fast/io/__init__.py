"""Image files in and out: decoding, preprocessing, overlays, listings, calibration sets."""

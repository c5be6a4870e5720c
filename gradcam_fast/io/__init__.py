"""Image files in and out: decoding, preprocessing, overlays, input discovery, galleries."""

"""Grad-CAM at scale: Ray Data batch jobs and the Ray Serve HTTP service."""

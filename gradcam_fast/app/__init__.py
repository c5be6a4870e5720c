"""The explain pipeline over image files, the exported-model cache, class requests and timing."""

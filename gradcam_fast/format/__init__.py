"""The exported file's contract: metadata, result types, input checks and preprocessing constants."""

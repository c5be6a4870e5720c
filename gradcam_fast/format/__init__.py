"""The exported file's contract: metadata, result types, input checks, preprocessing."""

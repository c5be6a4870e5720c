"""The eager reference and the comparisons every export and int8 model is judged by."""

"""Verified datasets loaded onto the device as tensors (`datasets`, `speech`), and which examples a run sees in
which order (`sampling`)."""

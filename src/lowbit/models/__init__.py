"""Model architectures: configs read from metadata, and the tensor inventory they imply."""

"""The method as pure numpy: the post-classification filters, the per-tile steps, true pixel areas."""

"""Models: the one skeleton transformer encoder, its layers and token masking."""

"""emoclap runtime: capture, segmentation, embedding, scoring and publishing."""

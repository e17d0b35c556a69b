"""emoclap trainer: corpus, labels, model, training, evaluation and export."""

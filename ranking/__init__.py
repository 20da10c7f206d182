"""Features, models, training data, training, evaluation and the batch scorer."""

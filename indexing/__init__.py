"""Data in: dataset loaders, event ingestion, embeddings, bulk loading, index lifecycle, the local node."""

"""The online path: API routes, settings, candidate generation, the aggregator and ranking workers."""

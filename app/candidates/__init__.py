"""Candidate generation: per-channel query builders, one `_msearch`, merge and fusion."""

"""Who acted: namespaced principals, how each was verified, and the proofs the worker checks."""

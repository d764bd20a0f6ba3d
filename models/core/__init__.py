"""The lowest layer, for every package above schemas/: runtime hooks and plumbing (stdlib only)."""

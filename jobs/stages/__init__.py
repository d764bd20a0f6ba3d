"""The stages the entry points drive: validation, heads, matching, connected components, retraining."""

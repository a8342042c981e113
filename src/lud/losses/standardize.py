"""Placeholder: being written."""
def standardize_logits(x, eps=None):  # replaced by the real implementation
    raise NotImplementedError

"""Reference implementations the notebooks build up to."""

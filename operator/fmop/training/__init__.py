"""Training: Workflow rendering (render.py) and version bookkeeping (status.py), pure functions."""

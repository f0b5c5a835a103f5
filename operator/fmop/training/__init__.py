"""Training: Workflow rendering (render.py) and the planner of versions (planner.py), pure functions."""

"""Offline evaluation: ranking metrics (metrics), full-ranking evaluation of a trained model
(evaluate) and cold-start evaluation of items withheld from training (cold)."""

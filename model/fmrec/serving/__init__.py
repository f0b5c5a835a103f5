"""Export to a Triton model repository and run the real Triton server (from nvidia-pytriton)."""

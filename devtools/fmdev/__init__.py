"""Developer tooling for fm-operator, never shipped: the embedded single-node Kubernetes (local/), the
demo, and every benchmark driver (bench/). It may import the operator (fmop) and the model (fmrec);
neither of them imports it (`make lint` checks both with import contracts)."""

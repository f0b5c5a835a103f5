"""Training, read top to bottom: recipe (what to build and how to train it; the defaults are the
benchmark's choice), pretrain (the FM on every training event), finetune (an adapter on a frozen
FM), loop (the one training loop both run), batching (windows -> tensors), distributed (torchrun)."""

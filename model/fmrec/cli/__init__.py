"""The fmrec command line, one module per command group; fmrec.__main__ only dispatches.

    fm        train, evaluate, embed       the foundation model
    adapter   finetune                     a task adapter on a frozen FM
    cold      cold                         cold-start evaluation
    export    export                       a Triton model repository
    args      the flags several commands share (device, threads, the recipe)
    report    what the commands print and plot
"""

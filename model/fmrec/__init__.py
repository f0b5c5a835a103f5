"""fmrec: the foundation recommender (data contract, model, adapters, training, export).

Import name `fmrec` (not `model`): the folder name is fixed by the product layout, the import
name must not shadow anything. The operator never imports this package; Argo steps call its CLI.
"""

__version__ = "0.1.0"

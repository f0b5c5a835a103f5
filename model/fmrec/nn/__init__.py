from fmrec.nn.fm import FMConfig, FoundationModel

__all__ = ["FMConfig", "FoundationModel"]

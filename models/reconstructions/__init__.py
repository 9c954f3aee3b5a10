from models.reconstructions.uniad import UniAD

__all__ = ["UniAD"]

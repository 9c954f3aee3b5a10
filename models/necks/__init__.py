from models.necks.mfcn import MFCN

__all__ = ["MFCN"]

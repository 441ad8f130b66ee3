"""Data sets that ship with vssm's dependencies (no download): the embedded training default."""
from .digits import DIGITS_MEAN, DIGITS_STD, DigitsDataset, digits_split

__all__ = ['DigitsDataset', 'digits_split', 'DIGITS_MEAN', 'DIGITS_STD']

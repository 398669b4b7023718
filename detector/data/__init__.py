"""Datasets (COCO, VOC, synthetic), transforms and batching.

The batching half (``detector.data.loader``) needs torch and is imported from there, so that opening and
checking a dataset (what the study driver does before any compute) stays torch-free."""
from .datasets import DatasetError, DetectionSet, Record, build_split, load_coco, load_voc
from .synthetic import CLASSES as SYNTHETIC_CLASSES, write_synthetic

__all__ = ["DatasetError", "DetectionSet", "Record", "SYNTHETIC_CLASSES", "build_split", "load_coco", "load_voc",
           "write_synthetic"]

"""Datasets (COCO, VOC, synthetic), transforms and batching."""
from .datasets import DatasetError, DetectionSet, Record, load_coco, load_voc
from .loader import Batch, build_split, make_loader
from .synthetic import CLASSES as SYNTHETIC_CLASSES, write_synthetic

__all__ = ["Batch", "DatasetError", "DetectionSet", "Record", "SYNTHETIC_CLASSES", "build_split", "load_coco",
           "load_voc", "make_loader", "write_synthetic"]

"""Real-time DETR family (RT-DETRv2, D-FINE, DEIM, DEIMv2) as a Detectron2 project."""

__version__ = "0.1.0"

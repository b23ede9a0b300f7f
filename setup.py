"""Installs the ``dfine`` package (real-time DETR family for Detectron2) from projects/DFine.

torch, torchvision and detectron2 are deliberately not listed: they are installed by
``tools/env.sh`` (detectron2 is not on PyPI, and torch must come before it).
"""
from setuptools import find_packages, setup

setup(
    name="dfine-detectron2",
    version="0.1.0",
    description="RT-DETRv2, D-FINE, DEIM and DEIMv2 as a Detectron2 project",
    package_dir={"": "projects/DFine"},
    packages=find_packages("projects/DFine"),
    python_requires=">=3.9",
    install_requires=["fvcore", "pycocotools", "opencv-python-headless", "scipy"],
)

"""Checkpoints: conversion of official weights, and loading weights to fine-tune with another number of classes."""
from .finetune import CLASS_DEPENDENT, FinetuneReport, finetune_state_dict, load_finetune_weights  # noqa: F401
from .official import (  # noqa: F401
    CheckpointMismatchError,
    convert_backbone_state_dict,
    convert_official_state_dict,
    extract_official_state_dict,
)

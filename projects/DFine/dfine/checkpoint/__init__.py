"""Checkpoints: reading checkpoint files with checks, conversion of official weights, loading a
checkpoint's EMA weights first, loading weights to fine-tune with another number of classes, and
checkpoint files that a killed process cannot leave half-written."""
from .atomic import AtomicCheckpointer, atomic_write  # noqa: F401
from .ema_weights import EMAFirstCheckpointer, has_ema_weights, load_ema_or_model_weights  # noqa: F401
from .files import (  # noqa: F401
    CheckedLoading,
    CheckpointFileError,
    check_checkpoint_file,
    find_resume_checkpoint,
    read_checkpoint_file,
)
from .finetune import CLASS_DEPENDENT, FinetuneReport, finetune_state_dict, load_finetune_weights  # noqa: F401
from .official import (  # noqa: F401
    CheckpointMismatchError,
    convert_backbone_state_dict,
    convert_official_state_dict,
    extract_official_state_dict,
)

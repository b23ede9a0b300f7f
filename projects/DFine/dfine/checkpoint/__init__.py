from .official import CheckpointMismatchError, convert_official_state_dict, extract_official_state_dict  # noqa: F401

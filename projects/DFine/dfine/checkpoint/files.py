"""Reading checkpoint files: anything that is not a readable checkpoint is refused with its path
and what it looks like, instead of an error from deep inside torch's unpickler.

A file given as a checkpoint is first identified from its first bytes
(:func:`check_checkpoint_file`): a folder, an empty file, a text file (a ``last_checkpoint`` tag, a
config, a Git LFS pointer, an HTML error page), an ONNX model, a safetensors file or a NumPy array
is refused at once, and so is a zip archive that lacks its central directory (a ``torch.save``
file cut short by a full disk or an interrupted copy). Everything else is loaded, and a load that
fails is reported with what the file looked like (:func:`read_checkpoint_file`).
:class:`CheckedLoading` puts both in front of a Detectron2 checkpointer's loading, so that every
entry point (``train.init_checkpoint``, ``--eval-only``, ``--resume``, the predictor, the tools)
gives the same message for the same file. :func:`find_resume_checkpoint` picks what ``--resume``
loads.
"""
import glob
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Optional

__all__ = [
    "CheckpointFileError",
    "CheckedLoading",
    "check_checkpoint_file",
    "find_resume_checkpoint",
    "read_checkpoint_file",
]

logger = logging.getLogger(__name__)

# Bytes read to identify a file.
HEAD_SIZE = 512
# Files listed in a message about a folder.
MAX_LISTED = 3


class CheckpointFileError(ValueError):
    """A file that cannot be read as a checkpoint: ``"Checkpoint <path> <problem>"``, where the
    problem says what the file is or looks like."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"Checkpoint {path} {problem}")
        self.path = path
        self.problem = problem


def check_checkpoint_file(path: str, verify_data: bool = False) -> str:
    """Refuse ``path`` when it cannot be a checkpoint; else describe its format.

    Args:
        path: a local file.
        verify_data: also check the CRC of every entry of a zip checkpoint (reads the whole file;
            catches damage anywhere, not only a missing end).

    Returns:
        what the file looks like, e.g. ``"a PyTorch checkpoint (zip archive)"``, for messages.

    Raises:
        CheckpointFileError: naming ``path`` and what it is instead (missing, a folder, empty, text,
            ONNX, safetensors, NumPy, a zip archive that is cut short, damaged or not PyTorch's).
    """
    if os.path.isdir(path):
        inside = sorted(os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(path), "*.pth")))
        hint = f" It holds {', '.join(inside[:MAX_LISTED])}: give one of those." if inside else ""
        raise CheckpointFileError(path, f"is a folder, not a checkpoint file.{hint}")
    if not os.path.exists(path):
        raise CheckpointFileError(path, "does not exist.")
    with open(path, "rb") as f:
        head = f.read(HEAD_SIZE)
    if not head:
        raise CheckpointFileError(
            path, "is an empty file (0 bytes): an interrupted download or copy, or a failed save?"
        )
    foreign = _foreign_format(head, path)
    if foreign:
        raise CheckpointFileError(path, f"is not a checkpoint but {foreign}.")
    if head.startswith(b"PK\x03\x04"):
        _check_zip_checkpoint(path, verify_data)
        return "a PyTorch checkpoint (zip archive)"
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:
        return "a pickle file (torch.save's legacy format, or a Detectron2 .pkl)"
    return f"a file of unknown format (it starts with the bytes {head[:8].hex(' ')})"


def read_checkpoint_file(path: str, load: Callable[[str], Any]) -> Any:
    """``load(path)`` after :func:`check_checkpoint_file`; a load that fails is a
    :class:`CheckpointFileError` that names ``path``, what it looked like and the loader's error.

    A file that holds objects other than tensors and plain containers is refused by torch's safe
    loader (``weights_only=True``); the message then says so and names the object's class.
    """
    looks_like = check_checkpoint_file(path)
    try:
        return load(path)
    except MemoryError:  # the machine, not the file
        raise
    except Exception as e:  # whatever the unpickler raises: the file is the culprit
        # torch's safe loader names the class it refuses; a torch class means a damaged stream instead.
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if isinstance(e, pickle.UnpicklingError) and unsafe and not unsafe.group(1).startswith("torch."):
            raise CheckpointFileError(
                path,
                f"holds objects other than tensors, which are not unpickled for safety ({unsafe.group(1)}). Save its "
                "['ema']['module'] (or ['model']) state dict alone, in a trusted environment, and use that file.",
            ) from e
        first_sentence = re.split(r"(?<=\.)\s", str(e).strip())[0] if str(e).strip() else ""
        raise CheckpointFileError(
            path,
            f"cannot be read: it looks like {looks_like}, but loading it failed ({type(e).__name__}: "
            f"{first_sentence[:200]}); is it cut short or damaged?",
        ) from e


class CheckedLoading:
    """Mixin for a Detectron2 / fvcore checkpointer (listed before it in the bases): every file it
    loads goes through :func:`read_checkpoint_file`, and a local path that cannot be a checkpoint
    is refused before fvcore's ``Checkpoint ... not found!`` assertion. URLs (``https://``,
    ``detectron2://``) are downloaded by the checkpointer's path manager as before, and checked once
    they are local."""

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path:
            check_checkpoint_file(path)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str):
        return read_checkpoint_file(filename, super()._load_file)


def find_resume_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the file that ``folder/last_checkpoint`` names.

    When that file is missing or unreadable, the newest readable checkpoint of ``folder``
    (``*.pth``, by modification time) is taken instead, with a warning that names both.

    Returns:
        the path, or ``None`` when ``folder`` has no ``last_checkpoint`` (a new run, as in
        Detectron2); a warning then says that the training starts from the beginning.

    Raises:
        CheckpointFileError: when ``last_checkpoint`` names an unreadable file and no other
            checkpoint of ``folder`` is readable: a silent restart would throw the run away.
    """
    tag = os.path.join(folder, "last_checkpoint")
    if not os.path.isfile(tag):
        logger.warning(f"--resume: {folder} has no last_checkpoint file, so there is nothing to resume; the "
                       "training starts from the beginning (from train.init_checkpoint when it is set).")
        return None
    with open(tag) as f:
        tagged = os.path.join(folder, f.read().strip())
    problem = _unreadable(tagged)
    if problem is None:
        return tagged
    others = [p for p in glob.glob(os.path.join(glob.escape(folder), "*.pth"))
              if os.path.abspath(p) != os.path.abspath(tagged)]
    unreadable = []
    for path in sorted(others, key=os.path.getmtime, reverse=True):
        other_problem = _unreadable(path)
        if other_problem is None:
            logger.warning(f"--resume: {tag} names {tagged}, which cannot be read ({problem}); resuming from the "
                           f"newest readable checkpoint {path} instead.")
            return path
        unreadable.append(f"{path} {other_problem}")
    found = f" ({'; '.join(unreadable)})" if unreadable else ""
    raise CheckpointFileError(
        tagged, f"named by {tag} cannot be resumed from ({problem}), and no other checkpoint in {folder} is "
                f"readable{found}. Drop --resume to start the training over."
    )


def _unreadable(path: str) -> Optional[str]:
    """Why ``path`` cannot be resumed from, or ``None`` when it can (its data are verified)."""
    try:
        check_checkpoint_file(path, verify_data=True)
    except CheckpointFileError as e:
        return e.problem.rstrip(".")
    return None


def _foreign_format(head: bytes, path: str) -> Optional[str]:
    """What a file that is surely not a checkpoint is, from its first bytes; ``None`` otherwise."""
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy array file (.npy)"
    if _is_safetensors(head, path):
        return ("a safetensors file: load it with safetensors.torch.load_file() and save the state dict with "
                "torch.save({'model': state_dict}, 'model.pth')")
    if path.lower().endswith(".onnx") or _is_onnx(head):
        return ("an ONNX model (protobuf) for inference runtimes, not weights to load into a model: give the "
                ".pth checkpoint it was exported from")
    text = _as_text(head)
    if text is None:
        return None
    first_line = text.strip().splitlines()[0][:80] if text.strip() else ""
    if text.startswith("version https://git-lfs"):
        return "a Git LFS pointer, not the file it points to: fetch the file with `git lfs pull`"
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "an HTML page (a failed download?)"
    if re.fullmatch(r"\S+\.(pth|pkl|pt)\s*", text):
        return f"a text file naming {text.strip()!r}, like a last_checkpoint file: give the checkpoint it names"
    return f"a text file that starts with {first_line!r}"


def _check_zip_checkpoint(path: str, verify_data: bool) -> None:
    """Refuse a zip archive that is cut short, damaged, or not written by ``torch.save``."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(name.endswith("data.pkl") for name in names):
                raise CheckpointFileError(
                    path, f"is not a checkpoint but a zip archive without PyTorch's data.pkl (it holds "
                          f"{', '.join(names[:MAX_LISTED])})."
                )
            damaged = archive.testzip() if verify_data else None
    except zipfile.BadZipFile as e:
        raise CheckpointFileError(
            path, f"is cut short or damaged: a zip archive (torch.save's format) of {os.path.getsize(path)} bytes "
                  f"without a readable end ({e}); was a copy or download interrupted?"
        ) from e
    if damaged is not None:
        raise CheckpointFileError(path, f"is damaged: its entry {damaged} fails the CRC check.")


def _is_safetensors(head: bytes, path: str) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then the JSON header."""
    if path.lower().endswith(".safetensors"):
        return True
    return len(head) > 9 and head[8:10] in (b"{\"", b"{}") and int.from_bytes(head[:8], "little") < 100_000_000


def _is_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: field 1 (ir_version, a small varint), then field 2, 3, 7 or 8."""
    return len(head) > 3 and head[0] == 0x08 and 3 <= head[1] <= 20 and head[2] in (0x12, 0x1A, 0x3A, 0x42)


def _as_text(head: bytes) -> Optional[str]:
    """``head`` as text when it is UTF-8 without control bytes other than whitespace, else ``None``."""
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        printable = all(c.isprintable() or c in "\t\r\n" for c in text)
        return text if printable else None
    return None

"""Where a reward model's files are: a local path, or the local Hugging Face cache. No torch, no network here.

Every learned reward names its files with :class:`FileSource` (one file, e.g. the LAION MLP's ``.pth``) or
:class:`FolderSource` (a ``from_pretrained`` folder, e.g. a CLIP model or a tokenizer). Each source is given by the
user as an option value:

- ``None``: the reward's default, looked up **in the local Hugging Face cache only** (no download);
- a local path (anything that exists, or starts with ``/``, ``.``, ``~``): used as it is;
- a hub name (``org/name`` for a folder, ``org/name/path/in/repo`` for a file): the cache first; a name the user
  gave explicitly may be downloaded when the hub is reachable (``HF_HUB_OFFLINE`` unset).

:func:`resolve` turns sources into local paths (or "download this named id") and raises
:class:`WeightsNotFoundError` naming every missing file and how to obtain it, before any model is built.
:func:`check` answers the same question cheaply, for ``rdpo-zoo plugins``.

The cache layout read here is huggingface_hub's (``<cache>/models--org--name/refs/main`` holds a commit,
``snapshots/<commit>/<file>`` the file); it is read directly because importing ``huggingface_hub.file_download``
costs ~0.5 s, which ``rdpo-zoo plugins`` should not pay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

__all__ = [
    "WeightsNotFoundError",
    "FileSource",
    "FolderSource",
    "Resolved",
    "hub_cache_dir",
    "offline",
    "cached_hub_file",
    "resolve",
    "check",
]

#: files that make a folder loadable by ``from_pretrained`` as a model: config and one form of the weights
MODEL_FILES = (("config.json",), ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                                   "pytorch_model.bin.index.json"))
#: a CLIP (byte-level BPE) tokenizer: the fast file or the vocabulary and merges
CLIP_TOKENIZER_FILES = (("tokenizer.json", "vocab.json"),)
#: a BERT word-piece tokenizer
BERT_TOKENIZER_FILES = (("vocab.txt", "tokenizer.json"),)


class WeightsNotFoundError(FileNotFoundError):
    """A reward's weights (or tokenizer, or config) are not on this machine and may not be downloaded. The message
    names every missing file and how to obtain it."""


def _true(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether the user forbade the hub (``HF_HUB_OFFLINE``, or transformers' ``TRANSFORMERS_OFFLINE``)."""
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, by huggingface_hub's rules, read from the environment now (so tests and users
    may change it): ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub`` with ``HF_HOME``
    defaulting to ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.path.expanduser(os.path.expandvars(os.environ[name]))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(os.path.expandvars(home)), "hub")


def _snapshots(repo_id: str, revision: str = "main", cache_dir: Optional[str] = None) -> List[str]:
    """The cached snapshot folders of a model repository: the one ``revision`` points to first, then the others
    (newest first), so that a copy fetched at another commit still counts."""
    repo = os.path.join(cache_dir or hub_cache_dir(), "models--" + repo_id.replace("/", "--"))
    snapshots = os.path.join(repo, "snapshots")
    if not os.path.isdir(snapshots):
        return []
    first = revision
    ref = os.path.join(repo, "refs", revision)
    if os.path.isfile(ref):
        with open(ref) as handle:
            first = handle.read().strip()
    found = []
    if os.path.isdir(os.path.join(snapshots, first)):
        found.append(os.path.join(snapshots, first))
    others = [os.path.join(snapshots, d) for d in os.listdir(snapshots) if d != first]
    found += sorted((d for d in others if os.path.isdir(d)), key=os.path.getmtime, reverse=True)
    return found


def cached_hub_file(repo_id: str, filename: str, revision: str = "main", cache_dir: Optional[str] = None) -> Optional[str]:
    """The local path of ``filename`` of the hub model ``repo_id`` if it is in the cache, else ``None``."""
    for snapshot in _snapshots(repo_id, revision, cache_dir):
        path = os.path.join(snapshot, filename)
        if os.path.isfile(path):
            return path
    return None


def _has_files(folder: str, needs: Sequence[Sequence[str]]) -> List[str]:
    """The groups of ``needs`` (each: any one of these files) that ``folder`` lacks, as ``a or b`` strings."""
    return [" or ".join(group) for group in needs if not any(os.path.isfile(os.path.join(folder, f)) for f in group)]


def _looks_local(value: str) -> bool:
    return os.path.exists(os.path.expanduser(value)) or value.startswith((".", "/", "~")) or "\\" in value


# --------------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class FileSource:
    """One file of a reward model.

    Attributes:
        what: what the file is, for messages ("the LAION aesthetic MLP (sac+logos+ava1-l14-linearMSE.pth)").
        option: the reward option that names it (``weights``).
        default: hub files ``(repo_id, filename)`` tried in the cache when the option is not given (any one will do;
            several when a repository moved); empty when the file has no default and the option is required.
        how: how to obtain it (one sentence, shown when it is missing).
    """

    what: str
    option: str
    default: Tuple[Tuple[str, str], ...] = ()
    how: str = ""


@dataclass(frozen=True)
class FolderSource:
    """A ``from_pretrained`` folder (a model, a tokenizer, an image processor's config).

    Attributes:
        what, option, how: as :class:`FileSource`.
        default: hub ids tried in the cache when the option is not given.
        needs: groups of file names the folder must hold (one of each group), e.g. ``MODEL_FILES``.
    """

    what: str
    option: str
    default: Tuple[str, ...] = ()
    how: str = ""
    needs: Tuple[Tuple[str, ...], ...] = MODEL_FILES


@dataclass
class Resolved:
    """Where one source is: ``path`` (a local file or folder), or ``download`` (a hub id, or ``(repo, filename)``,
    that the user named and may be downloaded now); ``missing`` says why it is neither."""

    source: Union[FileSource, FolderSource]
    value: Optional[str]
    path: Optional[str] = None
    download: Optional[Union[str, Tuple[str, str]]] = None
    missing: Optional[str] = None
    brief: Optional[str] = None  # the missing thing in a few words, for listings


def _split_hub_file(value: str) -> Optional[Tuple[str, str]]:
    """``org/name/path/file.pt`` -> ``("org/name", "path/file.pt")``; ``None`` if it has fewer than 3 parts."""
    parts = value.strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def _resolve_one(source, value: Optional[str], allow_download: bool) -> Resolved:
    folder = isinstance(source, FolderSource)
    if value is not None and _looks_local(value):
        path = os.path.abspath(os.path.expanduser(value))
        if folder:
            if not os.path.isdir(path):
                return Resolved(source, value, missing=f"{value!r} is not a folder", brief=f"{value} (no such folder)")
            lacking = _has_files(path, source.needs)
            if lacking:
                return Resolved(source, value, missing=f"{value!r} has no {', '.join(lacking)}",
                                brief=f"{value} (incomplete)")
            return Resolved(source, value, path=path)
        if os.path.isdir(path) and source.default:
            # a folder holding the default file name (e.g. a manual download of the hub repository)
            inner = os.path.join(path, source.default[0][1])
            if os.path.isfile(inner):
                return Resolved(source, value, path=inner)
            return Resolved(source, value, missing=f"{value!r} is a folder without {source.default[0][1]}",
                            brief=f"{value} (no {source.default[0][1]})")
        if not os.path.isfile(path):
            return Resolved(source, value, missing=f"no such file {value!r}", brief=f"{value} (no such file)")
        return Resolved(source, value, path=path)

    named = value is not None
    if folder:
        candidates = [value] if named else list(source.default)
        partial = []  # cached snapshots without every needed file
        for repo_id in candidates:
            for snapshot in _snapshots(repo_id):
                lacking = _has_files(snapshot, source.needs)
                if not lacking:
                    return Resolved(source, value, path=snapshot)
                partial.append(f"{repo_id} is cached without {', '.join(lacking)}")
        if not candidates:
            return Resolved(source, value, missing=f"option {source.option!r} is required",
                            brief=f"{source.option}= (required)")
        if named and allow_download:
            return Resolved(source, value, download=value)
        why = "; ".join(partial) or (f"{' or '.join(candidates)} is not in the local Hugging Face cache "
                                     f"({hub_cache_dir()})")
        return Resolved(source, value, missing=why, brief=candidates[0] + (" (incomplete)" if partial else ""))
    if named:
        hub = _split_hub_file(value)
        if hub is None:
            return Resolved(source, value, missing=f"{value!r} is neither a local file nor a hub file ORG/NAME/FILE",
                            brief=f"{value} (not a path or ORG/NAME/FILE)")
        candidates = [hub]
    else:
        candidates = list(source.default)
    for repo_id, filename in candidates:
        path = cached_hub_file(repo_id, filename)
        if path is not None:
            return Resolved(source, value, path=path)
    if not candidates:
        return Resolved(source, value, missing=f"option {source.option!r} is required (a local path, or a hub "
                                              "file ORG/NAME/FILE)",
                        brief=f"{source.option}= (required)")
    if named and allow_download:
        return Resolved(source, value, download=candidates[0])
    names = " or ".join(f"{r}/{f}" for r, f in candidates)
    return Resolved(source, value, missing=f"{names} is not in the local Hugging Face cache ({hub_cache_dir()})",
                    brief="/".join(candidates[0]))


def resolve(label: str, sources: Iterable[Tuple[Union[FileSource, FolderSource], Optional[str]]]) -> List[Resolved]:
    """Every ``(source, option value)`` as a :class:`Resolved`; raises :class:`WeightsNotFoundError` listing every
    missing one (what it is, why it is missing, how to obtain it, which option points at a local copy).

    A named hub id or file may be downloaded unless ``HF_HUB_OFFLINE`` is set; defaults are never downloaded."""
    allow = not offline()
    results = [_resolve_one(source, value, allow) for source, value in sources]
    missing = [r for r in results if r.missing is not None]
    if missing:
        lines = [f"reward {label!r}: its weights are not on this machine, and nothing is downloaded unless you name it"
                 + (" and are online" if not allow else "") + ":"]
        for r in missing:
            lines.append(f"  - {r.source.what}: {r.missing}.")
            if r.source.how:
                lines.append(f"    Get it: {r.source.how}")
            lines.append(f"    Then point at it: --reward-opt {r.source.option}=PATH"
                         + ("" if r.value is not None or not r.source.default else " (or leave it in the HF cache)"))
        raise WeightsNotFoundError("\n".join(lines))
    return results


def check(sources: Iterable[Tuple[Union[FileSource, FolderSource], Optional[str]]]) -> Tuple[bool, str]:
    """Cheaply (no torch, no network): whether every source is on this machine, and one line saying where they
    are or what is missing. A named id that would be downloaded counts as not on this machine."""
    results = [_resolve_one(source, value, allow_download=False) for source, value in sources]
    missing = [r for r in results if r.missing is not None]
    if missing:
        return False, ("missing " + ", ".join(r.brief or r.missing for r in missing)
                       + f" (looked in the HF cache {hub_cache_dir()}; docs/rewards.md says how to get them)")
    return True, "found " + ", ".join(r.path for r in results)

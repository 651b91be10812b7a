"""Reading a dataset archive (or extracted folder) safely, member by member.

A compressed tarball is first decompressed as one stream into a temporary
plain ``.tar`` (gzip cannot seek), which ``tarfile`` then reads with random
access; a zip is read in place (`ZipSource`). Every member name is checked before anything is read: absolute
paths, ``..`` components, links leaving the archive and device files make
the whole archive be refused (`UnsafeArchiveError`). An extracted folder is
read in place, with the same rule for symlinks leaving it. Split out of
common.py, which re-exports these names.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from typing import Iterable, Protocol

log = logging.getLogger(__name__)

_OPENERS = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open),
            (b"\xfd7zXZ\x00", lzma.open))


class UnsafeArchiveError(ValueError):
  """An archive member could escape the archive (path or link)."""


class Source(Protocol):
  """Read-only view of one dataset root (an archive or a folder)."""

  description: str

  def has(self, rel: str) -> bool: ...

  def read(self, rel: str) -> bytes: ...

  def close(self) -> None: ...


def _unsafe_name(name: str) -> bool:
  if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
    return True
  return ".." in name.replace("\\", "/").split("/")


class TarSource:
  """Random access to a tarball's regular members, after safety checks."""

  def __init__(self, path: str, marker: str, *,
               tmp_dir: str | None = None) -> None:
    self.path = os.fspath(path)
    self._tmp: str | None = None
    self._tar: tarfile.TarFile | None = None
    try:
      try:
        self._tar = tarfile.open(self._plain_tar(tmp_dir), "r:")
        members = self._tar.getmembers()
      except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as e:
        raise ValueError(f"{self.path} is not a readable tar archive "
                         f"({type(e).__name__}: {e})") from e
      self._files = self._index(members)
      self.root = _find_root(self._files, marker, self.path)
    except BaseException:
      self.close()
      raise
    self.description = f"{self.path}:{self.root}"

  def _plain_tar(self, tmp_dir: str | None) -> str:
    """Decompresses a compressed tarball once, as a byte stream."""
    with open(self.path, "rb") as f:
      magic = f.read(6)
    opener = next((o for m, o in _OPENERS if magic.startswith(m)), None)
    if opener is None:
      return self.path
    fd, self._tmp = tempfile.mkstemp(suffix=".tar", dir=tmp_dir,
                                     prefix="mtdense_archive_")
    log.info("Decompressing %s to %s (read in place afterwards).",
             self.path, self._tmp)
    with opener(self.path, "rb") as src, os.fdopen(fd, "wb") as dst:
      shutil.copyfileobj(src, dst, 16 << 20)
    return self._tmp

  def _index(self, members: Iterable[tarfile.TarInfo]
             ) -> dict[str, tarfile.TarInfo]:
    files, links = {}, {}
    for m in members:
      if _unsafe_name(m.name):
        raise UnsafeArchiveError(
            f"{self.path}: refusing archive member {m.name!r} (absolute path "
            "or '..' component); nothing was extracted.")
      name = posixpath.normpath(m.name)
      if m.issym() or m.islnk():
        base = posixpath.dirname(name) if m.issym() else ""
        target = posixpath.normpath(posixpath.join(base, m.linkname))
        if m.linkname.startswith("/") or _unsafe_name(target):
          raise UnsafeArchiveError(
              f"{self.path}: refusing link {m.name!r} -> {m.linkname!r}, "
              "which points outside the archive; nothing was followed.")
        links[name] = target
      elif m.isreg():
        files[name] = m
      elif not m.isdir():
        raise UnsafeArchiveError(
            f"{self.path}: refusing special member {m.name!r} (device/fifo).")
    for name, target in links.items():
      for _ in range(8):  # Links to links, inside the archive only.
        target = links.get(target, target)
      if target in files:
        files[name] = files[target]
    return files

  def has(self, rel: str) -> bool:
    return posixpath.join(self.root, rel) in self._files

  def read(self, rel: str) -> bytes:
    info = self._files.get(posixpath.join(self.root, rel))
    if info is None:
      raise FileNotFoundError(f"{rel} is not in {self.description}")
    f = self._tar.extractfile(info)
    assert f is not None
    return f.read()

  def close(self) -> None:
    if self._tar is not None:
      self._tar.close()
      self._tar = None
    if self._tmp and os.path.exists(self._tmp):
      os.remove(self._tmp)
      self._tmp = None


def _find_root(files: Iterable[str], marker: str, where: str) -> str:
  """The shallowest folder holding `marker` (e.g. 'gt_sets/train.txt')."""
  roots = [f[:-len(marker)].rstrip("/") for f in files
           if f == marker or f.endswith("/" + marker)]
  if not roots:
    raise FileNotFoundError(
        f"{where} does not contain {marker} (wrong archive?)")
  return min(roots, key=lambda r: (r.count("/"), r))


class ZipSource:
  """Random access to a zip's regular members, after the same checks.

  MTAN's releases come as zip files (a Dropbox folder download). Members
  are read straight from the zip (no temporary copy); absolute or `..`
  names and symlink members refuse the whole archive.
  """

  def __init__(self, path: str, marker: str) -> None:
    self.path = os.fspath(path)
    try:
      self._zip = zipfile.ZipFile(self.path)
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"{self.path} is not a readable zip archive "
                       f"({type(e).__name__}: {e})") from e
    try:
      self._files = self._index(self._zip.infolist())
      self.root = _find_root(self._files, marker, self.path)
    except BaseException:
      self.close()
      raise
    self.description = f"{self.path}:{self.root}"

  def _index(self, members: Iterable[zipfile.ZipInfo]
             ) -> dict[str, zipfile.ZipInfo]:
    files = {}
    for m in members:
      if _unsafe_name(m.filename):
        raise UnsafeArchiveError(
            f"{self.path}: refusing archive member {m.filename!r} (absolute "
            "path or '..' component); nothing was extracted.")
      if stat.S_ISLNK(m.external_attr >> 16):
        raise UnsafeArchiveError(
            f"{self.path}: refusing symlink member {m.filename!r}; nothing "
            "was followed.")
      if not m.is_dir():
        files[posixpath.normpath(m.filename)] = m
    return files

  def has(self, rel: str) -> bool:
    return posixpath.join(self.root, rel) in self._files

  def read(self, rel: str) -> bytes:
    info = self._files.get(posixpath.join(self.root, rel))
    if info is None:
      raise FileNotFoundError(f"{rel} is not in {self.description}")
    return self._zip.read(info)

  def close(self) -> None:
    if self._zip is not None:
      self._zip.close()
      self._zip = None


def _archive_source(path: str, marker: str, tmp_dir: str | None) -> Source:
  """A zip (by its leading signature, so a truncated one is reported as a
  zip) or a tarball, plain or compressed."""
  with open(path, "rb") as f:
    is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
  if is_zip:
    return ZipSource(path, marker)
  return TarSource(path, marker, tmp_dir=tmp_dir)


class FolderSource:
  """An extracted dataset folder; symlinks may not leave it."""

  def __init__(self, root: str) -> None:
    self.root = os.path.realpath(root)
    self.description = self.root

  def _path(self, rel: str) -> str:
    if _unsafe_name(rel):
      raise UnsafeArchiveError(f"refusing path {rel!r} under {self.root}")
    path = os.path.join(self.root, rel)
    real = os.path.realpath(path)
    if os.path.commonpath([real, self.root]) != self.root:
      raise UnsafeArchiveError(
          f"{path} links to {real}, outside {self.root}; not followed.")
    return real

  def has(self, rel: str) -> bool:
    return os.path.isfile(self._path(rel))

  def read(self, rel: str) -> bytes:
    with open(self._path(rel), "rb") as f:
      return f.read()

  def close(self) -> None:
    pass


def open_source(where: str, *, archives: tuple[str, ...],
                folders: tuple[str, ...], marker: str,
                tmp_dir: str | None = None) -> Source:
  """Finds the archive or extracted folder in `where` (a file or folder).

  Preference: `where` itself (archive file or dataset folder), then an
  extracted folder inside it, then an archive inside it.
  """
  where = os.fspath(where)
  if os.path.isfile(where):
    return _archive_source(where, marker, tmp_dir)
  if os.path.isfile(os.path.join(where, marker)):
    return FolderSource(where)
  for name in folders:
    if os.path.isfile(os.path.join(where, name, marker)):
      log.info("Reading the extracted folder %s", os.path.join(where, name))
      return FolderSource(os.path.join(where, name))
  for name in archives:
    if os.path.isfile(os.path.join(where, name)):
      log.info("Reading the archive %s", os.path.join(where, name))
      return _archive_source(os.path.join(where, name), marker, tmp_dir)
  raise FileNotFoundError(
      f"{archives[0]} not found: put {archives[0]} (or its extracted folder "
      f"{folders[0]}/) in the folder {os.path.abspath(where)} (the TFDS "
      "manual directory, or the manual_dir given to make_builder).")

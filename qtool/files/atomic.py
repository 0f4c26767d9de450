"""Atomic file writing: outputs appear whole or not at all, and never over an input.

Every command writes through these helpers, so an interrupted or failed step never leaves half a
file (or half a model/encodings pair) behind. Deliberately light (standard library only): the
recipe runner writes its stamps with them without importing onnx.

Temporary files are named `.NAME.PID.XXXXXXXX.tmp` beside the output. SIGINT and SIGTERM during a
write remove them (SIGTERM is turned into SystemExit while a write is open); only SIGKILL (or a
power cut) can leave one, and the next run that writes into that folder removes those whose
process is gone, and says so on stderr. A file whose process still runs is another run's write in
progress and is left alone, unless it is over a day old (process ids are reused). `QTOOL_TEST_SLOW_WRITE=SECONDS` pauses every write half-way (after
announcing it on stderr), so that tests can interrupt a write reliably.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from qtool.errors import QtoolError
from qtool.files.output_guard import check_output, is_input

log = logging.getLogger(__name__)

SLOW_WRITE_ENV = "QTOOL_TEST_SLOW_WRITE"
# ours: a leading dot, the output's name, our process id, mkstemp's 8 random characters
TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp$")
# a process id can be reused; a temp file older than this is stale whatever process now has its id
STALE_AFTER_S = 24 * 3600

_created: set[str] = set()  # temporary files this process made (its own id may be a dead run's)
_staged: dict[str, tuple[StagedOutputs, Path]] = {}  # staged temporary -> (its owner, final path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_sibling(path: Path) -> str:
    """A new empty file beside `path` with the permissions a plain open() would give it (first
    removing the temporary files that killed runs left in that folder). When `path` is an input,
    the write is refused when it would be renamed (or dropped, for an unchanged copy): no folder is
    made for it (`-o new/../m.onnx`)."""
    path = Path(path)
    if is_input(path):
        path = path.resolve()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    _created.add(os.path.abspath(tmp))
    os.chmod(tmp, 0o666 & ~_umask())
    return tmp


def process_gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie counts as ended; another user's does not)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    try:  # a killed child its parent has not reaped yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _is_stale(entry: os.DirEntry) -> bool:
    match = TEMP_NAME.match(entry.name)
    if match is None or not entry.is_file(follow_symlinks=False):
        return False
    if os.path.abspath(entry.path) in _created:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():  # our id, not our file: a dead run's whose id we were given
        return True
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    return process_gone(pid) or age > STALE_AFTER_S


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove our temporary files in `folder` whose run was killed; returns them (each reported)."""
    try:
        entries = [entry for entry in os.scandir(folder) if _is_stale(entry)]
    except OSError:
        return []
    removed = []
    for entry in sorted(entries, key=lambda e: e.name):
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
        log.warning("removed %s, a temporary file left by an interrupted run", entry.path)
    return removed


def _raise_exit(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """While a write is open, SIGTERM raises SystemExit, so that the cleanup below runs (Python's
    default for SIGTERM ends the process at once). Only in the main thread, and only where nobody
    installed a handler of their own."""
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are delivered after the block (a few renames), not in the middle."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pause_for_tests(path: str | os.PathLike) -> None:
    """The test hook (SLOW_WRITE_ENV): announce the write on stderr, then wait."""
    seconds = os.environ.get(SLOW_WRITE_ENV)
    if not seconds:
        return
    sys.stderr.write(f"qtool-test: writing {path}\n")
    sys.stderr.flush()
    time.sleep(float(seconds))


def _write(handle: BinaryIO, data: bytes, path: str | os.PathLike) -> None:
    half = len(data) // 2
    handle.write(data[:half])
    if os.environ.get(SLOW_WRITE_ENV):
        handle.flush()
        _pause_for_tests(path)
    handle.write(data[half:])


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside `path`, renamed onto it only when the block
    succeeds: readers never see half a file, and a failure leaves nothing behind."""
    path = Path(path)
    with _terminate_cleanly():
        try:
            tmp = temporary_sibling(path)
        except OSError as exc:
            raise QtoolError(f"{path}: cannot write ({exc.strerror or exc})", "check the output path") from exc
        try:
            with open(tmp, "wb") as handle:
                yield handle
            check_output(path)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise QtoolError(f"{path}: cannot write ({exc.strerror or exc})", "check the output path") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_output); a staged temporary (StagedOutputs)
    is already private to this run, so it is written in place."""
    if is_staged(path):
        with open(path, "wb") as handle:
            _write(handle, data, path)
        return
    with atomic_output(path) as handle:
        _write(handle, data, path)


def is_staged(path: str | os.PathLike) -> bool:
    return os.fspath(path) in _staged


def final_path(path: str | os.PathLike) -> Path:
    """The name a staged temporary will be renamed to (`path` itself when it is not staged)."""
    entry = _staged.get(os.fspath(path))
    return entry[1] if entry else Path(path)


def staged_companion(path: str | os.PathLike, name: str) -> Path | None:
    """For a staged temporary: a second staged file, renamed together with it to `name` in the
    same folder (a model's external data beside it). None when `path` is not staged."""
    entry = _staged.get(os.fspath(path))
    if entry is None:
        return None
    owner, final = entry
    return owner.path(final.with_name(name))


class StagedOutputs:
    """Write several output files as one: each goes to a temporary name, and all are renamed
    only when every write succeeded (a failed step leaves no half pair behind).

        with StagedOutputs() as out:
            save_model(model, out.path("out/model.onnx"))
            save_encodings(enc, out.path("out/model.encodings.json"))
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._signals = _terminate_cleanly()

    def path(self, final: str | os.PathLike) -> Path:
        final = Path(final)
        if final.is_dir():
            raise QtoolError(f"{final}: is a directory", "choose another output name")
        try:
            tmp = Path(temporary_sibling(final))
        except OSError as exc:
            raise QtoolError(f"{final}: cannot write ({exc.strerror or exc})", "check the output path") from exc
        self._staged.append((tmp, final))
        _staged[os.fspath(tmp)] = (self, final)
        return tmp

    def __enter__(self) -> StagedOutputs:
        self._signals.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._commit()
            else:
                self._discard()
        finally:
            for tmp, _ in self._staged:
                _staged.pop(os.fspath(tmp), None)
            self._signals.__exit__(None, None, None)

    def unstage(self, tmp: Path) -> None:
        """Drop one staged file: its final file stays as it is (an unchanged copy onto itself)."""
        self._staged = [(t, f) for t, f in self._staged if t != tmp]
        _staged.pop(os.fspath(tmp), None)
        tmp.unlink(missing_ok=True)

    def _commit(self) -> None:
        """Rename every staged file onto its final name, unless one of them is an input of the
        running command: then none is (qtool.files.output_guard). Last staged first: a file staged
        after another may be what it refers to (a model's external data), and must not be missing
        when the other appears. SIGINT/SIGTERM wait until all are renamed."""
        if self._staged:
            _pause_for_tests(self._staged[0][1])
        final = None
        try:
            for _, final in self._staged:
                check_output(final)
            with _signals_held():
                for tmp, final in reversed(self._staged):
                    os.replace(tmp, final)
        except OSError as error:
            self._discard()
            raise QtoolError(f"{final}: cannot write ({error.strerror or error})") from error
        except BaseException:  # QtoolError from the guard, SystemExit from SIGTERM, ...
            self._discard()
            raise

    def _discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)


def copies_onto_itself(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Whether `dst` (staged or not) names the file `src` itself."""
    final = final_path(dst)
    return final.exists() and os.path.samefile(src, final)


def copy_file_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """An unchanged copy of an input file, written under a temporary name first.

    A copy onto the source itself (`qtool calibrate m.onnx -o m` writes m.encodings.json beside
    the model) writes nothing: the file already is what the copy would be. ONNX models go
    through `qtool.ir.external_data.copy_model_file`, which knows their external data."""
    if copies_onto_itself(src, dst):
        if is_staged(dst):
            _staged[os.fspath(dst)][0].unstage(Path(dst))
        return
    if is_staged(dst):
        shutil.copyfile(src, dst)
        return
    dst = Path(dst)
    with _terminate_cleanly():
        tmp = temporary_sibling(dst)
        try:
            shutil.copyfile(src, tmp)
            _pause_for_tests(dst)
            check_output(dst)
            os.replace(tmp, dst)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

"""A persistent on-disk cache of build results, shared by processes (TensorRT's timing cache).

What goes in: small blobs of bytes per layer configuration, in namespaces: ``tactics`` (the
tactic the builder chose for a layer signature, :class:`tftrt.engine.tactics.TimingCache`),
and whatever a backend wants to keep between processes (compiled kernels, cuDNN execution
plans), through :meth:`BuildCache.get` / :meth:`BuildCache.put`. Not whole engines: another
model with the same layers profits too.

Where: ``$TFTRT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/tftrt``, else ``~/.cache/tftrt``.
``TFTRT_BUILD_CACHE=0`` turns it off (TensorFlow's boolean spellings).

Entries are keyed by the *environment* too: backend, device name, driver and library versions
(:func:`environment_fingerprint`). They live under ``<root>/v1/<backend>-<digest of the
environment>/<namespace>/``, one file per key::

    b"TFTRTBC1" | u32 header bytes | header (JSON: environment, namespace, key, payload size
    and sha256) | payload

Readers check everything: an entry that is truncated, corrupt, or written for another
environment or key (copied from elsewhere, a digest collision) is ignored with one warning and
the caller rebuilds; the next write replaces it. Writers write a temporary file in the same
directory and ``os.replace`` it into place: readers see the old entry or the new one, never a
mix, with any number of processes writing at once (two writers of one key both write a whole,
valid entry; the last rename wins). No locks, so a process killed mid-write leaves at most a
hidden ``.tmp`` file behind, never a broken entry.

Size: at most ``TFTRT_CACHE_MAX_MB`` (default 4096; 0: no limit) under ``<root>/v1``, every
environment's directory counted. A process checks it (on a thread of its own, beside the
build) at its first write and then every ``PRUNE_EVERY`` writes; past the limit the entries
least recently used (a hit touches its file's time) go, down to 80% of it. A long-running
server seeing ever new shapes wrote an entry or two per shape without limit (helper hunt,
2026-12-04), and directories of earlier environments (another driver, another tftrt) were
never removed. An entry another process is reading when it goes is read whole or missed
(that build runs again).

This module never imports TensorFlow (it is part of the engine).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import struct
import threading
import uuid
from typing import Dict, Optional

log = logging.getLogger("tftrt.engine.build_cache")

MAGIC = b"TFTRTBC1"
LAYOUT = "v1"
_HEADER_LEN = struct.Struct("<I")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
# A header larger than this is not ours (a corrupt length field would make us read GBs).
_MAX_HEADER = 1 << 20
PRUNE_EVERY = 64  # writes between two size checks of a process
_PRUNE_TO = 0.8   # past the limit, the oldest entries go down to this share of it


def max_bytes() -> int:
    """``TFTRT_CACHE_MAX_MB`` in bytes (default 4096 MB); 0: no limit."""
    raw = os.environ.get("TFTRT_CACHE_MAX_MB", "").strip()
    try:
        mb = float(raw) if raw else 4096.0
    except ValueError:
        _warn_once(("max", raw), "TFTRT_CACHE_MAX_MB=%r is not a number of megabytes; using "
                   "4096", raw)
        mb = 4096.0
    return max(int(mb * 2 ** 20), 0)


def cache_dir() -> Optional[str]:
    """The cache's root directory, or None when the cache is turned off.

    ``TFTRT_BUILD_CACHE=0`` turns it off; ``TFTRT_CACHE_DIR`` moves it; the default is
    ``$XDG_CACHE_HOME/tftrt`` or ``~/.cache/tftrt``.
    """
    raw = os.environ.get("TFTRT_BUILD_CACHE", "").strip().lower()
    if raw in ("0", "false"):
        return None
    if raw and raw not in ("1", "true"):
        _warn_once(("env", raw), "TFTRT_BUILD_CACHE=%r is not a boolean (use 0, 1, true or "
                   "false); the build cache stays on", raw)
    explicit = os.environ.get("TFTRT_CACHE_DIR", "").strip()
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(os.path.abspath(base), "tftrt")


def environment_fingerprint(backend) -> Dict[str, str]:
    """What a cached build result depends on besides its key: backend, device, versions.

    A backend may add its own entries with an optional ``cache_fingerprint() -> dict`` method
    (driver, CUDA, cuDNN, compiler versions); without one, the CuPy backend's versions are
    read here.
    """
    import numpy as np
    from tftrt import __version__
    fp = {"layout": LAYOUT, "tftrt": __version__, "backend": str(backend.name),
          "device": str(backend.device_name()), "numpy": np.__version__,
          "python": ".".join(platform.python_version_tuple()[:2])}
    hook = getattr(backend, "cache_fingerprint", None)
    if callable(hook):
        fp.update({str(k): str(v) for k, v in dict(hook()).items()})
    elif backend.name == "cupy":
        fp.update(_cupy_versions())
    return fp


def _distribution_version(dist: str, module: str) -> str:
    """The installed version of distribution ``dist`` from its metadata, without importing
    ``module`` (importing nvmath took 0.7 s of a warm rebuild on the H200, before build()'s
    check could start; the engines import it when a GEMM needs it); the module's
    ``__version__`` where no metadata names it."""
    import importlib.metadata
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return __import__(module).__version__


def _cupy_versions() -> Dict[str, str]:
    out: Dict[str, str] = {}
    probes = {
        "cupy": lambda: __import__("cupy").__version__,
        "cuda_driver": lambda: __import__("cupy").cuda.runtime.driverGetVersion(),
        "cuda_runtime": lambda: __import__("cupy").cuda.runtime.runtimeGetVersion(),
        "cudnn": lambda: __import__("cudnn").backend_version(),
        "nvmath": lambda: _distribution_version("nvmath-python", "nvmath"),
    }
    for name, probe in probes.items():
        try:
            out[name] = str(probe())
        except Exception:  # a library that is missing is part of the environment too
            out[name] = "none"
    return out


_warned: set = set()
_warned_lock = threading.Lock()


def _warn_once(token, msg: str, *args) -> None:
    with _warned_lock:
        if token in _warned:
            return
        _warned.add(token)
    log.warning(msg, *args)


class BuildCache:
    """Get and put bytes by (namespace, key) for one environment, on disk.

    Args:
      root: the cache's root directory (see :func:`cache_dir`).
      fingerprint: the environment (see :func:`environment_fingerprint`); entries written
        under another one are never returned.
    """

    def __init__(self, root: str, fingerprint: Dict[str, str]):
        self.root = root
        self.fingerprint = {str(k): str(v) for k, v in fingerprint.items()}
        fp_json = json.dumps(self.fingerprint, sort_keys=True)
        digest = hashlib.sha256(fp_json.encode()).hexdigest()[:20]
        backend = re.sub(r"[^a-z0-9_]", "_", self.fingerprint.get("backend", "any").lower())
        self.directory = os.path.join(root, LAYOUT, f"{backend}-{digest}")
        self.stats = {"hits": 0, "misses": 0, "rejected": 0, "writes": 0}
        self._writable = True
        self._lock = threading.Lock()
        self._pruning = False  # a prune thread runs

    def __repr__(self) -> str:
        return f"<BuildCache {self.directory}>"

    # --- public -----------------------------------------------------------------------------
    def path(self, namespace: str, key: str) -> str:
        """The file an entry lives in."""
        _check_namespace(namespace)
        h = hashlib.sha256(key.encode()).hexdigest()
        return os.path.join(self.directory, namespace, h[:2], h + ".entry")

    def get(self, namespace: str, key: str) -> Optional[bytes]:
        """The payload stored for ``key``, or None (missing, corrupt or foreign: the caller
        rebuilds; a corrupt or foreign entry is reported once, with its path)."""
        path = self.path(namespace, key)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._count("misses")
            return None
        except OSError as err:
            # Once per directory and kind of error, not per entry: a cache root that is a
            # file or unreadable fails every layer's lookup the same way.
            _warn_once(("read", self.directory, type(err).__name__),
                       "tftrt build cache: cannot read %s (%s); building without it (set "
                       "TFTRT_CACHE_DIR to a readable directory, or TFTRT_BUILD_CACHE=0 to "
                       "turn the cache off)", path, err)
            self._count("misses")
            return None
        payload, why = self._decode(data, namespace, key)
        if payload is None:
            _warn_once(("bad", path, why), "tftrt build cache: ignoring %s: %s; it is rebuilt "
                       "and replaced", path, why)
            self._count("rejected")
            return None
        self._count("hits")
        try:
            os.utime(path)  # recently used: the size limit removes the others first
        except OSError:
            pass
        return payload

    def put(self, namespace: str, key: str, payload: bytes) -> bool:
        """Stores ``payload`` for ``key`` (atomically replacing any entry); False when the
        cache cannot be written (reported once, then the cache stays read-only)."""
        if not self._writable:
            return False
        path = self.path(namespace, key)
        header = json.dumps({"environment": self.fingerprint, "namespace": namespace,
                             "key": key, "size": len(payload),
                             "sha256": hashlib.sha256(payload).hexdigest()},
                            sort_keys=True).encode()
        blob = MAGIC + _HEADER_LEN.pack(len(header)) + header + bytes(payload)
        tmp = os.path.join(os.path.dirname(path),
                           f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(blob)
        except OSError as err:
            _unlink_quietly(tmp)
            self._writable = False
            _warn_once(("write", self.directory), "tftrt build cache: cannot write under %s "
                       "(%s); builds will not be cached (set TFTRT_CACHE_DIR to a writable "
                       "directory, or TFTRT_BUILD_CACHE=0 to turn the cache off)",
                       self.directory, err)
            return False
        try:
            os.replace(tmp, path)
        except OSError as err:  # this entry's path alone (a directory there, say): the
            _unlink_quietly(tmp)  # cache stays writable for every other key
            _warn_once(("replace", path), "tftrt build cache: cannot replace the entry %s "
                       "(%s); remove it: that build is not cached meanwhile", path, err)
            return False
        self._count("writes")
        with self._lock:
            check = (self.stats["writes"] % PRUNE_EVERY == 1 or PRUNE_EVERY == 1) and \
                not self._pruning
            self._pruning = self._pruning or check
        if check:  # beside the build: a walk over a large cache takes a fraction of a second
            _spawn(self._prune_once)
        return True

    def _prune_once(self) -> None:
        try:
            self.prune()
        finally:
            with self._lock:
                self._pruning = False

    def prune(self, limit: Optional[int] = None) -> int:
        """Removes the least recently used entries under ``<root>/v1`` (every environment)
        while they hold more than ``limit`` bytes (default :func:`max_bytes`; 0: none), down
        to 80% of it, and hidden ``.tmp`` files older than an hour. Returns the bytes
        removed; never raises."""
        import time
        limit = max_bytes() if limit is None else limit
        files = []
        now = time.time()
        removed = 0
        try:
            for dirpath, _, names in os.walk(os.path.join(self.root, LAYOUT)):
                for name in names:
                    path = os.path.join(dirpath, name)
                    try:
                        st = os.stat(path)
                    except OSError:
                        continue
                    if name.endswith(".tmp"):
                        if now - st.st_mtime > 3600:  # a writer killed mid-write
                            _unlink_quietly(path)
                        continue
                    if name.endswith(".entry"):
                        files.append((st.st_mtime, st.st_size, path))
        except OSError:
            return 0
        total = sum(f[1] for f in files)
        if not limit or total <= limit:
            return 0
        files.sort()
        target = int(limit * _PRUNE_TO)
        for _, size, path in files:
            if total <= target:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total -= size
            removed += size
        log.info("tftrt build cache: over its limit (TFTRT_CACHE_MAX_MB, %d bytes) under %s; "
                 "removed %d bytes of the least recently used entries", limit, self.root,
                 removed)
        return removed

    def get_json(self, namespace: str, key: str):
        """:meth:`get` for JSON payloads; None when missing or not valid JSON (reported)."""
        raw = self.get(namespace, key)
        if raw is None:
            return None
        try:
            return json.loads(raw.decode())
        except ValueError as err:
            _warn_once(("json", namespace, key), "tftrt build cache: an entry of %s is not "
                       "valid JSON (%s); ignored", namespace, err)
            return None

    def put_json(self, namespace: str, key: str, value) -> bool:
        return self.put(namespace, key, json.dumps(value, sort_keys=True).encode())

    # --- internals --------------------------------------------------------------------------
    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _decode(self, data: bytes, namespace: str, key: str):
        """(payload, None) for a valid entry of ours, else (None, why)."""
        if len(data) < len(MAGIC) + _HEADER_LEN.size or not data.startswith(MAGIC):
            return None, "not a tftrt build-cache entry (bad magic or truncated)"
        (hlen,) = _HEADER_LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _HEADER_LEN.size
        if hlen > _MAX_HEADER or start + hlen > len(data):
            return None, "truncated or corrupt header"
        try:
            header = json.loads(data[start:start + hlen].decode())
        except ValueError:
            return None, "corrupt header (not JSON)"
        if not isinstance(header, dict):
            return None, "corrupt header (not a JSON object)"
        if header.get("environment") != self.fingerprint:
            return None, ("written for another environment (backend, device, driver or "
                          "library versions differ)")
        if header.get("namespace") != namespace or header.get("key") != key:
            return None, "written for another key"
        payload = data[start + hlen:]
        if header.get("size") != len(payload) or \
                header.get("sha256") != hashlib.sha256(payload).hexdigest():
            return None, "payload truncated or corrupt (size or sha256 mismatch)"
        return payload, None


def _spawn(target) -> None:
    """Runs ``target`` on a daemon thread (tests run it inline)."""
    threading.Thread(target=target, name="tftrt-cache-prune", daemon=True).start()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _check_namespace(namespace: str) -> None:
    if not isinstance(namespace, str) or not _NAMESPACE.match(namespace):
        raise ValueError(f"build-cache namespace {namespace!r} must be lower-case letters, "
                         f"digits, '_', '-' or '.' (up to 64)")


_INSTANCES: Dict[tuple, BuildCache] = {}
_INSTANCES_LOCK = threading.Lock()


def build_cache_for(backend) -> Optional[BuildCache]:
    """The process's cache for ``backend`` (a backend object), or None when turned off.

    Follows the environment variables as they are at each call (a test or a program may move
    the cache); the fingerprint is computed once per backend and directory.
    """
    root = cache_dir()
    if root is None:
        return None
    token = (root, backend.name, id(backend))
    with _INSTANCES_LOCK:
        cache = _INSTANCES.get(token)
        if cache is None:
            cache = _INSTANCES[token] = BuildCache(root, environment_fingerprint(backend))
        return cache

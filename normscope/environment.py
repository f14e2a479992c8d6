"""What a bug report needs to know about an install: versions, devices, the CPU kernel, extras.

`describe()` is what `normscope --version` prints. It imports torch (to ask about CUDA), so the
CLI calls it only for `--version`, never on `--help`'s path.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
import re
import sys

import normscope
from normscope import __version__
from normscope.engine.fused import kernel_status
from normscope.sources._speedups import status as reader_status

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


@dataclasses.dataclass(frozen=True)
class Extra:
    """One of normscope's optional extras (`pip install 'normscope[NAME]'`)."""

    name: str
    requirements: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def installed(self) -> bool:
        return not self.missing


def extras() -> list[Extra]:
    """normscope's extras from its installed metadata, each with the packages it still lacks."""
    try:
        requires = importlib.metadata.requires("normscope") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    by_extra: dict[str, list[str]] = {}
    for requirement in requires:
        extra, name = _EXTRA.search(requirement), _NAME.match(requirement)
        if extra and name:
            by_extra.setdefault(extra.group(1), []).append(name.group(1).split("[")[0])
    result = []
    for extra_name, names in by_extra.items():
        missing = tuple(n for n in names if not _installed(n))
        result.append(Extra(extra_name, tuple(names), missing))
    return result


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def describe() -> list[tuple[str, str]]:
    """(label, value) lines: normscope, Python, platform, torch, CUDA, the fused kernel, extras."""
    lines = [
        ("normscope", f"{__version__} ({_package_dir()})"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("platform", f"{platform.system()} {platform.machine()}"),
    ]
    try:
        import torch  # lazy: torch takes seconds to import; only this function asks it
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        lines.append(("torch", f"not importable ({exc})"))
    else:
        lines.append(("torch", torch.__version__))
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            lines.append(("cuda", f"available, CUDA {torch.version.cuda}: {', '.join(names)}"))
        else:
            built = f"torch built with CUDA {torch.version.cuda}" if torch.version.cuda \
                else "CPU-only torch build"
            lines.append(("cuda", f"not available ({built})"))
    lines.append(("fused CPU kernel", kernel_status().detail))
    lines.append(("torch zip reader loops", reader_status.detail))
    found = extras()
    if found:
        installed = [e.name for e in found if e.installed]
        missing = [e.name for e in found if not e.installed]
        lines.append(("extras installed", ", ".join(installed) or "none"))
        lines.append(("extras not installed", ", ".join(missing) or "none"))
    else:
        lines.append(("extras", "unknown (normscope's package metadata is not installed)"))
    return lines


def _package_dir() -> str:
    return str(normscope.__path__[0])
